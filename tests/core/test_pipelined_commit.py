"""``DBConn.send_pipelined``: a write-only transaction sent through its COMMIT in psycopg's pipeline
mode, its outcome read later by ``PendingCommit.wait`` (PostgreSQL; SQLite cannot pipeline)."""

from __future__ import annotations

from typing import Any, List, Tuple

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String, insert, select
from sqlalchemy.exc import IntegrityError

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.sql.connection import DBConn, PendingCommit, PipelineFailed
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import TableStoreDB
from datapipe.testing import assert_datatable_equal

ROWS = pd.DataFrame({"id": range(100), "a": [f"v{i}" for i in range(100)]})


def table(dbconn: DBConn) -> Any:
    """The test table, created by the ``pg`` fixture (declaring it again would read the catalog)."""
    return dbconn.sqla_metadata.tables["pc"]


def stored(dbconn: DBConn) -> List[Tuple[int, str]]:
    with dbconn.read() as con:
        return [tuple(r) for r in con.execute(select(table(dbconn)).order_by("id"))]


def insert_rows(dbconn: DBConn, rows: List[dict]) -> None:
    with dbconn.begin() as con:  # the transaction of send_pipelined
        con.execute(insert(table(dbconn)), rows)


def copy_step(dbconn: DBConn, func: Any) -> Tuple[DataStore, Any]:
    """``inp`` (``ROWS`` stored) -> ``func`` -> ``out``, in batches of 30: a first run of 4 batches."""
    ds = DataStore(dbconn, create_meta_table=True)
    cols = [Column("id", Integer, primary_key=True), Column("a", String)]
    catalog = Catalog({n: Table(TableStoreDB(dbconn, n, cols, create_table=True)) for n in ("inp", "out")})
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"], chunk_size=30)]))
    ds.get_table("inp").store_chunk(ROWS)
    return ds, steps


@pytest.fixture
def pg(dbconn: DBConn) -> DBConn:
    if not dbconn.can_pipeline:
        with pytest.raises(RuntimeError, match="cannot pipeline"):
            dbconn.send_pipelined(lambda: None)
        pytest.skip("pipeline mode is PostgreSQL through psycopg 3 (checked above: SQLite refuses)")
    dbconn.get_table("pc", [Column("id", Integer, primary_key=True), Column("a", String, nullable=False)], create=True)
    return dbconn


def test_the_transaction_lands_and_its_connection_returns_to_the_pool(pg):
    result, pending = pg.send_pipelined(lambda: insert_rows(pg, [{"id": 1, "a": "x"}, {"id": 2, "a": "y"}]) or 7)
    assert result == 7 and pg.con.pool.checkedout() == 1  # held until the outcome is read
    pending.wait()
    assert stored(pg) == [(1, "x"), (2, "y")] and pg.con.pool.checkedout() == 0


def test_a_failing_statement_surfaces_from_wait_and_nothing_lands(pg):
    def work() -> None:
        insert_rows(pg, [{"id": 1, "a": "x"}])
        insert_rows(pg, [{"id": 2, "a": None}])  # refused by the server, not where it is sent
        insert_rows(pg, [{"id": 3, "a": "z"}])

    try:  # the refusal reaches the client while later statements are sent, or after the COMMIT
        _, pending = pg.send_pipelined(work)
    except IntegrityError as e:
        error: BaseException = e.orig
    else:
        with pytest.raises(PipelineFailed, match="null value") as raised:
            pending.wait()
        error = raised.value.__cause__
    assert type(error).__name__ == "NotNullViolation"
    assert stored(pg) == [] and pg.con.pool.checkedout() == 0
    insert_rows(pg, [{"id": 4, "a": "w"}])  # the pooled connection is usable again
    assert stored(pg) == [(4, "w")]


def test_an_error_raised_by_the_work_rolls_back_and_is_raised_at_once(pg):
    def work() -> None:
        insert_rows(pg, [{"id": 1, "a": "x"}])
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        pg.send_pipelined(work)
    assert stored(pg) == [] and pg.con.pool.checkedout() == 0


def test_other_connections_work_while_a_commit_is_pending(pg):
    _, pending = pg.send_pipelined(lambda: insert_rows(pg, [{"id": 1, "a": "x"}]))
    insert_rows(pg, [{"id": 2, "a": "y"}])  # not joined to the pending transaction
    pending.wait()
    assert stored(pg) == [(1, "x"), (2, "y")]


def test_a_first_run_prepares_the_next_batch_before_reading_the_outcome_of_this_one(pg, monkeypatch):
    """The executor reads and computes batch k+1 while the server writes batch k; every batch lands."""
    events: List[Any] = []

    def func(d: pd.DataFrame) -> pd.DataFrame:
        events.append(("computed", int(d["id"].min())))
        return d

    wait = PendingCommit.wait

    def confirmed(self: PendingCommit) -> None:
        wait(self)
        events.append("confirmed")

    monkeypatch.setattr(PendingCommit, "wait", confirmed)
    ds, steps = copy_step(pg, func)
    run_steps(ds, steps)
    assert events == [("computed", 0), ("computed", 30), "confirmed", ("computed", 60), "confirmed",
                      ("computed", 90), "confirmed", "confirmed"]
    assert_datatable_equal(ds.get_table("out"), ROWS)
    assert steps[0].meta.get_metadata()["is_success"].eq(True).sum() == 100
    assert pg.con.pool.checkedout() == 0


def test_with_no_connection_to_spare_nothing_is_left_in_flight(pg):
    """A pool of two: the step's run lock holds one, a batch's write the other. Each batch's outcome is
    then read at once, so that the next batch can still read (else the run would wait for the pool
    until it times out)."""
    small = DBConn(pg.connstr, create_engine_kwargs={"pool_size": 2, "max_overflow": 0, "pool_timeout": 2})
    try:
        ds, steps = copy_step(small, lambda d: d)
        result = run_steps(ds, steps)
        assert result.ok and result.processed == 100
        assert_datatable_equal(ds.get_table("out"), ROWS)
        assert small.con.pool.checkedout() == 0
    finally:
        small.con.dispose()
