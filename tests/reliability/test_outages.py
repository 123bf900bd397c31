"""Outages in the middle of a run: Redis stopped, PostgreSQL stopped or restarted.

The step function itself takes the server down when it is called for the third batch, so the
outage lands at the same point every time (no timing luck): two batches are done, the third is
computed and must now be written.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Iterator

import pandas as pd
import pytest
from conftest import redis_store_available
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.store.table_store import StoreError
from datapipe.testing import assert_datatable_equal
from datapipe.testing.services import PostgresServer, ServiceUnavailable, _wait_port, create_database, free_port, in_ci

KEYS, CHUNK, OUTAGE_AT_BATCH = 50, 10, 3


def schema():
    return [Column("id", Integer, primary_key=True), Column("a", String)]


def expected(ids) -> pd.DataFrame:
    ids = list(ids)
    return pd.DataFrame({"id": ids, "a": [f"x{i}!" for i in ids]})


def _pipeline(meta: DBConn, out_store, on_batch):
    ds = DataStore(meta, create_meta_table=True)
    calls = {"n": 0}

    def func(df: pd.DataFrame) -> pd.DataFrame:
        calls["n"] += 1
        on_batch(calls["n"])
        return df.assign(a=df["a"] + "!")

    catalog = Catalog({"inp": Table(TableStoreDB(meta, "inp", schema(), create_table=True)), "out": Table(out_store)})
    pipe = Pipeline([BatchTransform(func, ["inp"], ["out"], name="copy", chunk_size=CHUNK)])
    steps = build_compute(ds, catalog, pipe)
    catalog.get_datatable(ds, "inp").store_chunk(pd.DataFrame({"id": range(KEYS), "a": [f"x{i}" for i in range(KEYS)]}))
    return ds, steps


def _unavailable(what: str) -> None:
    if in_ci():
        pytest.fail(f"{what} is not available (CI=true)")
    pytest.skip(f"{what} is not available")


# ---------------------------------------------------------------- Redis


class RestartableRedis:
    """``redis-server`` whose data survives a stop (RDB saved on shutdown, loaded on start)."""

    def __init__(self, directory) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.dir = str(directory)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, 10, self.proc)

    def shutdown(self) -> None:
        import redis

        try:
            redis.Redis.from_url(self.url).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it exits
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RestartableRedis]:
    if not redis_store_available():
        pytest.skip("datapipe-redis is not installed")
    server = RestartableRedis(tmp_path)
    if not server.binary:
        _unavailable("redis-server")
    server.start()
    yield server
    server.stop()


def test_redis_stopped_mid_run(dbconn, redis_server):
    from datapipe_redis import RedisStore

    store = RedisStore(redis_server.url, "out", schema())

    def on_batch(n: int) -> None:
        if n == OUTAGE_AT_BATCH:
            redis_server.shutdown()

    ds, steps = _pipeline(dbconn, store, on_batch)
    run_steps(ds, steps)  # a store outage fails the affected batches; the run goes on and records them
    done = (OUTAGE_AT_BATCH - 1) * CHUNK
    meta = steps[0].meta.get_metadata().sort_values("id")
    assert list(meta.loc[meta["is_success"].astype(bool), "id"]) == list(range(done))
    failed = meta.loc[~meta["is_success"].astype(bool)]
    assert list(failed["id"]) == list(range(done, KEYS))
    for error in failed["error"]:
        assert "StoreError" in error and "step 'copy', result for table 'out'" in error
        assert f"127.0.0.1:{redis_server.port}" in error
    out = ds.get_table("out")
    assert sorted(out.get_metadata()["id"]) == list(range(done))  # nothing recorded that was not written

    redis_server.start()
    assert_datatable_equal(out, expected(range(done)))  # what was written before the outage is there
    run_steps(ds, steps)
    assert_datatable_equal(out, expected(range(KEYS)))
    assert steps[0].meta.get_counts() == {"processed": KEYS, "failed": 0}


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone (it gets stopped and restarted)."""
    server = PostgresServer()
    try:
        server.start()
    except ServiceUnavailable as e:
        server.stop()
        _unavailable(f"PostgreSQL ({e})")
    yield server
    server.stop()


def _pg_stop(server: PostgresServer) -> None:
    server._run([server.pg_ctl, "-D", server.data, "-m", "fast", "-w", "stop"])


def test_postgres_stopped_mid_run(own_postgres, tmp_path):
    url = create_database(own_postgres.url).replace("postgres@", "postgres:Pg-s3cret@")
    meta = DBConn(url)
    ds, steps = _pipeline(
        meta,
        TableStoreDB(meta, "out", schema(), create_table=True),
        lambda n: _pg_stop(own_postgres) if n == OUTAGE_AT_BATCH else None,
    )
    with pytest.raises(StoreError) as info:
        run_steps(ds, steps)
    message = str(info.value)
    assert "database postgresql" in message and f"127.0.0.1:{own_postgres.port}" in message
    assert "Pg-s3cret" not in message and "***" in message

    own_postgres._start()
    done = (OUTAGE_AT_BATCH - 1) * CHUNK
    meta_df = steps[0].meta.get_metadata()
    assert sorted(meta_df["id"]) == list(range(done)) and meta_df["is_success"].astype(bool).all()
    out = ds.get_table("out")
    assert_datatable_equal(out, expected(range(done)))
    assert sorted(out.get_metadata()["id"]) == list(range(done))
    run_steps(ds, steps)
    assert_datatable_equal(out, expected(range(KEYS)))
    assert steps[0].meta.get_counts() == {"processed": KEYS, "failed": 0}


def test_postgres_restarted_mid_run(own_postgres):
    """The server restarts while a batch is being computed: the pool reconnects and the run completes."""
    meta = DBConn(create_database(own_postgres.url))
    ds, steps = _pipeline(
        meta,
        TableStoreDB(meta, "out", schema(), create_table=True),
        lambda n: own_postgres.restart("fast") if n == OUTAGE_AT_BATCH else None,
    )
    run_steps(ds, steps)
    out = ds.get_table("out")
    assert_datatable_equal(out, expected(range(KEYS)))
    assert steps[0].meta.get_counts() == {"processed": KEYS, "failed": 0}
    assert steps[0].meta.get_changed_idx_count(ds) == 0
