"""Concurrent writers of the same rows on PostgreSQL: locks in key order, deadlock victims run again.

PostgreSQL only: SQLite lets one writer at a time hold the whole database, so there are no row locks
to order and no deadlocks (the concurrent-writer scenarios of ``tests/reliability`` run on both).

Each test holds row locks from a raw connection in a background thread and waits, by polling the
server's view of who waits for a lock (``pg_stat_activity``), until Datapipe's transaction is blocked,
so the interleaving is the same on every run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator, List

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String, text

from datapipe.datatable import DataStore, DataTable
from datapipe.sql.connection import is_transient_conflict
from datapipe.store.database import DBConn, TableStoreDB

WAIT = 30.0


@pytest.fixture
def pg(postgres_url: str) -> Iterator[DBConn]:
    dbconn = DBConn(postgres_url)
    yield dbconn
    dbconn.con.dispose()


def make_table(dbconn: DBConn, ids: List[int]) -> DataTable:
    """Table ``t`` (``id``, ``a``) holding ``ids`` in this physical order."""
    ds = DataStore(dbconn, create_meta_table=True)
    schema = [Column("id", Integer, primary_key=True), Column("a", String)]
    dt = ds.create_table("t", TableStoreDB(dbconn, "t", schema, create_table=True))
    for i in ids:  # one write per row: the heap holds them in this order
        dt.store_chunk(pd.DataFrame({"id": [i], "a": [f"old{i}"]}))
    return dt


def blocked_backends(dbconn: DBConn) -> int:
    """Backends of this database waiting for a lock held by another transaction."""
    with dbconn.con.connect() as con:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return int(con.execute(text(sql)).scalar_one())


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)  # polling the server's state, not a guess at how long something takes


def can_lock_now(dbconn: DBConn, table: str, key: int) -> bool:
    """Whether another transaction could lock row ``key`` of ``table`` right now (``FOR UPDATE NOWAIT``)."""
    with dbconn.con.connect() as con, con.begin():
        try:
            con.execute(text(f"SELECT 1 FROM {table} WHERE id = :k FOR UPDATE NOWAIT"), {"k": key})
            return True
        except Exception as e:  # noqa: BLE001 - "could not obtain lock" is the answer, not a failure
            if "could not obtain lock" in str(e):
                return False
            raise


def in_background(work: Callable[[], None]) -> Callable[[], None]:
    """Start ``work`` in a thread; returns ``join``, which re-raises what ``work`` raised."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - handed to the test by join()
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> None:
        thread.join(WAIT)
        assert not thread.is_alive(), "background work did not finish"
        if errors:
            raise errors[0]

    return join


@pytest.mark.parametrize("table", ["t", "t_meta"])
def test_deletion_locks_rows_in_key_order(pg, table):
    """``delete_by_idx`` of keys stored in descending physical order waits for the lowest key before it
    locks any other: a writer holding the lowest key cannot be in a cycle with it."""
    dt = make_table(pg, [3, 2, 1])
    holder = pg.con.connect()
    tx = holder.begin()
    holder.execute(text(f"SELECT 1 FROM {table} WHERE id = 1 FOR UPDATE"))
    join = in_background(lambda: dt.delete_by_idx(pd.DataFrame({"id": [3, 1, 2]})))
    try:
        wait_until(lambda: blocked_backends(pg) == 1, "the deletion waits for row 1")
        assert can_lock_now(pg, table, 3) and can_lock_now(pg, table, 2), "rows were locked out of key order"
    finally:
        tx.rollback()
        holder.close()
    join()
    assert len(dt.get_data()) == 0 and dt.meta.get_existing_idx().empty


def test_unsorted_frame_is_written_in_key_order(pg):
    """``store_chunk`` of keys 3, 1, 2 (all stored before) waits for row 1 before touching 2 and 3."""
    dt = make_table(pg, [1, 2, 3])
    holder = pg.con.connect()
    tx = holder.begin()
    holder.execute(text("SELECT 1 FROM t WHERE id = 1 FOR UPDATE"))
    join = in_background(lambda: dt.store_chunk(pd.DataFrame({"id": [3, 1, 2], "a": ["n3", "n1", "n2"]})))
    try:
        wait_until(lambda: blocked_backends(pg) == 1, "the write waits for row 1")
        assert can_lock_now(pg, "t", 2) and can_lock_now(pg, "t", 3), "rows were locked out of key order"
    finally:
        tx.rollback()
        holder.close()
    join()
    assert dict(zip(dt.get_data()["id"], dt.get_data()["a"])) == {1: "n1", 2: "n2", 3: "n3"}


def test_deadlock_victim_runs_again(pg, caplog):
    """A transaction that locks row 2, then (once Datapipe's write holds row 1 and waits for row 2) row 1:
    a deadlock. The server aborts Datapipe's write (the holder waits longer before checking for
    deadlocks); Datapipe runs it again once the other transaction is gone, and it lands whole."""
    dt = make_table(pg, [1, 2])
    holder = pg.con.connect()
    tx = holder.begin()
    holder.execute(text("SET LOCAL deadlock_timeout = '60s'"))  # the server picks Datapipe's write as victim
    holder.execute(text("UPDATE t SET a = 'holder' WHERE id = 2"))
    caplog.set_level(logging.INFO, logger="datapipe.sql")
    join = in_background(lambda: dt.store_chunk(pd.DataFrame({"id": [1, 2], "a": ["n1", "n2"]})))
    try:
        wait_until(lambda: blocked_backends(pg) == 1, "the write holds row 1 and waits for row 2")
        holder.execute(text("UPDATE t SET a = 'holder' WHERE id = 1"))  # waits until the victim is aborted
    finally:
        tx.rollback()
        holder.close()
    join()
    assert dict(zip(dt.get_data()["id"], dt.get_data()["a"])) == {1: "n1", 2: "n2"}
    assert len(dt.get_metadata()) == 2 and dt.get_metadata()["delete_ts"].isna().all()
    retried = [r.getMessage() for r in caplog.records if "aborted by the database" in r.getMessage()]
    assert len(retried) == 1 and "DeadlockDetected" in retried[0] and "table 't'" in retried[0], retried


def test_no_retry_inside_an_enclosing_transaction(pg):
    """Inside the caller's own ``transaction()`` a deadlock is raised: the enclosing transaction is
    aborted, and only its owner can run it again."""
    dt = make_table(pg, [1, 2])
    holder = pg.con.connect()
    tx = holder.begin()
    holder.execute(text("SET LOCAL deadlock_timeout = '60s'"))
    holder.execute(text("UPDATE t SET a = 'holder' WHERE id = 2"))
    raised: List[BaseException] = []

    def write() -> None:
        try:
            with pg.transaction():
                dt.store_chunk(pd.DataFrame({"id": [1, 2], "a": ["n1", "n2"]}))
        except Exception as e:  # noqa: BLE001 - checked below
            raised.append(e)

    join = in_background(write)
    try:
        wait_until(lambda: blocked_backends(pg) == 1, "the write holds row 1 and waits for row 2")
        holder.execute(text("UPDATE t SET a = 'holder' WHERE id = 1"))
        tx.commit()
    finally:
        holder.close()
    join()
    assert len(raised) == 1 and is_transient_conflict(raised[0]), raised
    assert dict(zip(dt.get_data()["id"], dt.get_data()["a"])) == {1: "holder", 2: "holder"}


def test_is_transient_conflict_reads_the_sqlstate(pg):
    with pytest.raises(Exception) as info, pg.con.connect() as con:
        con.execute(text("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$"))
    assert is_transient_conflict(info.value)
    with pytest.raises(Exception) as other, pg.con.connect() as con:
        con.execute(text("SELECT 1/0"))
    assert not is_transient_conflict(other.value)
