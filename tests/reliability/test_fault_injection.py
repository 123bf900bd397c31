"""Deterministic crashes between the data write and the metadata write (``datapipe.datatable.fault_hook``).

The hook raises ``Crash`` (a ``BaseException``, so no ``except Exception`` in the engine catches
it): the metadata transaction rolls back exactly as it would after SIGKILL, while a store outside
that transaction keeps what was written — the worst case the engine has to recover from.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pandas as pd
import pytest
from conftest import redis_store_available
from sqlalchemy import Column, Integer, String

import datapipe.datatable as datatable
from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.testing import assert_datatable_equal, assert_df_equal


class Crash(BaseException):
    """Stands for the process dying at the hook's point."""


@pytest.fixture
def crash_at():
    """``crash_at(point, table)`` arms the hook to raise ``Crash`` the next time ``point`` is reached on ``table``."""

    def arm(point: str, table: str) -> None:
        def hook(p: str, dt: datatable.DataTable) -> None:
            if p == point and dt.name == table:
                datatable.fault_hook = None
                raise Crash(f"{point} on {table}")

        datatable.fault_hook = hook

    yield arm
    datatable.fault_hook = None


def schema():
    return [Column("id", Integer, primary_key=True), Column("a", String)]


@pytest.fixture(params=["separate_sql", "redis"])
def out_store_factory(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[list], object]]:
    """``make(columns)``: an output store outside the metadata transaction."""
    made: list = []
    if request.param == "separate_sql":
        con = DBConn(f"sqlite:///{tmp_path}/separate.sqlite")

        def make(columns: list) -> object:
            return TableStoreDB(con, "out", columns, create_table=True)

        yield make
        con.con.dispose()
        return
    if not redis_store_available():
        pytest.skip("datapipe-redis is not installed")
    from datapipe_redis import RedisStore

    url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/7"

    def make_redis(columns: list) -> object:
        made.append(RedisStore(url, f"out_{id(request)}", columns))
        return made[-1]

    yield make_redis
    for store in made:
        store.client.flushdb()


@pytest.fixture
def out_store(out_store_factory: Callable[[list], object]) -> object:
    return out_store_factory(schema())


def _pipeline(dbconn, out_store):
    ds = DataStore(dbconn, create_meta_table=True)
    inp = Table(TableStoreDB(dbconn, "inp", schema(), create_table=True))
    catalog = Catalog({"inp": inp, "out": Table(out_store)})
    step = BatchTransform(lambda df: df.assign(a=df["a"] + "!"), ["inp"], ["out"], name="excl", chunk_size=4)
    pipe = Pipeline([step])
    return ds, build_compute(ds, catalog, pipe)


def test_crash_after_data_write_then_key_vanishes_leaves_no_orphan(dbconn, out_store, crash_at):
    ds, steps = _pipeline(dbconn, out_store)
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(pd.DataFrame({"id": range(8), "a": [f"x{i}" for i in range(8)]}))
    crash_at("after_data_write", "out")
    with pytest.raises(Crash):
        run_steps(ds, steps)
    # the store got the first batch, the metadata did not (the transaction rolled back)
    assert len(out.get_data()) == 4
    assert len(out.get_metadata()) == 0
    # before the next run, two of the written-but-unrecorded keys disappear from the input
    inp.delete_by_idx(pd.DataFrame({"id": [1, 2]}))
    run_steps(ds, steps)
    expected = pd.DataFrame({"id": [0, 3, 4, 5, 6, 7], "a": [f"x{i}!" for i in [0, 3, 4, 5, 6, 7]]})
    assert_datatable_equal(out, expected)
    assert sorted(out.get_metadata()["id"]) == [0, 3, 4, 5, 6, 7]


def test_crash_after_data_delete_is_redone(dbconn, out_store, crash_at):
    ds, steps = _pipeline(dbconn, out_store)
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(pd.DataFrame({"id": range(8), "a": [f"x{i}" for i in range(8)]}))
    run_steps(ds, steps)
    inp.delete_by_idx(pd.DataFrame({"id": [1, 6]}))
    crash_at("after_data_delete", "out")
    with pytest.raises(Crash):
        run_steps(ds, steps)
    run_steps(ds, steps)
    keep = [0, 2, 3, 4, 5, 7]
    assert_datatable_equal(out, pd.DataFrame({"id": keep, "a": [f"x{i}!" for i in keep]}))
    assert sorted(out.get_metadata()["id"]) == keep
    assert steps[0].meta.get_counts()["failed"] == 0


def test_crash_inside_shared_transaction_leaves_nothing(dbconn, crash_at):
    """Output in the metadata database: data and metadata commit together, so a crash keeps neither."""
    ds, steps = _pipeline(dbconn, TableStoreDB(dbconn, "out", schema(), create_table=True))
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(pd.DataFrame({"id": range(8), "a": [f"x{i}" for i in range(8)]}))
    crash_at("after_data_write", "out")
    with pytest.raises(Crash):
        run_steps(ds, steps)
    assert len(out.get_data()) == 0 and len(out.get_metadata()) == 0
    assert len(steps[0].meta.get_metadata()) == 0
    run_steps(ds, steps)
    assert_datatable_equal(out, pd.DataFrame({"id": range(8), "a": [f"x{i}!" for i in range(8)]}))


def test_crash_with_partially_keyed_output_then_rows_vanish(dbconn, out_store_factory, crash_at):
    """Step keyed by ``id``, output keyed by ``(id, n)`` in a store outside the metadata database.

    A crash after the store write leaves rows the metadata never confirmed; when the next run
    produces fewer rows for that ``id``, the extra ones must still go (unconfirmed-write marks).
    """
    out_store = out_store_factory(
        [Column("id", Integer, primary_key=True), Column("n", Integer, primary_key=True), Column("a", String)]
    )
    ds = DataStore(dbconn, create_meta_table=True)
    inp = Table(TableStoreDB(dbconn, "inp", [Column("id", Integer, primary_key=True), Column("k", Integer)], True))
    catalog = Catalog({"inp": inp, "out": Table(out_store)})

    def fan(df):
        rows = [(r.id, n, f"{r.id}-{n}") for r in df.itertuples() for n in range(r.k)]
        return pd.DataFrame(rows, columns=["id", "n", "a"])

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(fan, ["inp"], ["out"], name="fan", chunk_size=2)]))
    src, out = ds.get_table("inp"), ds.get_table("out")
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3], "k": [3, 3, 3]}))
    crash_at("after_data_write", "out")
    with pytest.raises(Crash):
        run_steps(ds, steps)
    assert len(out.table_store.read_rows()) == 6 and out.get_size() == 0  # written, not confirmed

    src.store_chunk(pd.DataFrame({"id": [1, 2], "k": [1, 0]}))  # id 1 shrinks, id 2 yields nothing
    run_steps(ds, steps)
    expected = pd.DataFrame({"id": [1, 3, 3, 3], "n": [0, 0, 1, 2], "a": ["1-0", "3-0", "3-1", "3-2"]})
    assert_df_equal(out.table_store.read_rows(), expected, index_cols=["id", "n"])
    assert out.get_size() == 4


def test_crash_during_generate_then_rows_are_not_generated_again(dbconn, out_store_factory, crash_at):
    """A generator's rows written to an outside store before a crash are removed as stale later."""
    out_store = out_store_factory(schema())
    ds = DataStore(dbconn, create_meta_table=True)
    ids = {"v": list(range(6))}

    def gen():
        yield pd.DataFrame({"id": ids["v"], "a": [f"g{i}" for i in ids["v"]]})

    steps = build_compute(ds, Catalog({"out": Table(out_store)}), Pipeline([BatchGenerate(gen, outputs=["out"])]))
    crash_at("after_data_write", "out")
    with pytest.raises(Crash):
        run_steps(ds, steps)
    ids["v"] = [0, 1]
    run_steps(ds, steps)
    assert_df_equal(out_store.read_rows(), pd.DataFrame({"id": [0, 1], "a": ["g0", "g1"]}))
