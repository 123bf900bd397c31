"""Change versions (``datapipe.meta.versions``): the database orders changes, not a client clock.

Each test stages one interleaving deterministically inside one process, with a second ``DBConn``
standing for another process (its own connection pool). The concurrency suite in
``tests/reliability/test_concurrent_writers.py`` runs the same races with real processes.
"""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String, text

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.meta.versions import Snapshot, take_snapshot
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB


def schema(data: str = "a"):
    return [Column("id", Integer, primary_key=True), Column(data, String)]


def build(dbconn: DBConn, func, inputs=("inp",), chunk_size: int = 1000):
    ds = DataStore(dbconn, create_meta_table=True)
    tables = {name: Table(TableStoreDB(dbconn, name, schema(), create_table=True)) for name in inputs}
    tables["out"] = Table(TableStoreDB(dbconn, "out", schema(), create_table=True))
    pipe = Pipeline([BatchTransform(func, list(inputs), ["out"], name="step", chunk_size=chunk_size)])
    return ds, build_compute(ds, Catalog(tables), pipe)


def bang(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(a=df["a"] + "!")


def rows(ids, value: str = "v") -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "a": [f"{value}{i}" for i in ids]})


def output(ds: DataStore) -> dict:
    df = ds.get_table("out").get_data()
    return dict(zip(df["id"], df["a"]))


def pending(ds: DataStore, steps) -> int:
    return steps[0].get_status(ds).changed_idx_count


def other_process(dbconn: DBConn) -> DataStore:
    """Another writer: same database, its own connection pool and table declarations."""
    other = DBConn(dbconn.connstr)
    ds = DataStore(other, create_meta_table=False)
    for name in ("inp", "out"):
        ds.get_or_create_table(name, TableStoreDB(other, name, schema()))
    return ds


def test_write_committed_during_a_batch_is_processed_next_run(dbconn):
    """The batch read the old value; the change committed before the batch finished must not look processed."""
    writer = None
    calls = []

    def func(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(sorted(df["id"]))
        if len(calls) == 2:  # second run: another process commits an update after this batch read its input
            writer.get_table("inp").store_chunk(rows([1], "new"))
        return bang(df)

    ds, steps = build(dbconn, func)
    writer = other_process(dbconn)
    ds.get_table("inp").store_chunk(rows([1, 2]))
    run_steps(ds, steps)
    ds.get_table("inp").store_chunk(rows([1], "mid"))
    run_steps(ds, steps)
    assert output(ds)[1] == "mid1!"  # the batch saw "mid"
    assert pending(ds, steps) == 1
    run_steps(ds, steps)
    assert output(ds) == {1: "new1!", 2: "v2!"}
    assert pending(ds, steps) == 0
    writer.meta_dbconn.con.dispose()


@pytest.mark.parametrize("skew", [-5.0, +5.0])
def test_writer_clock_skew_does_not_hide_changes(dbconn, skew):
    """A writer whose clock is 5 s behind (or ahead of) the runner's: every change still arrives, once."""
    calls = []

    def func(df: pd.DataFrame) -> pd.DataFrame:
        calls.extend(df["id"])
        return bang(df)

    ds, steps = build(dbconn, func)
    writer = other_process(dbconn)
    ds.get_table("inp").store_chunk(rows(range(10)))
    run_steps(ds, steps)
    writer.get_table("inp").store_chunk(rows(range(5), "w"), now=time.time() + skew)
    run_steps(ds, steps)
    assert output(ds) == {**{i: f"w{i}!" for i in range(5)}, **{i: f"v{i}!" for i in range(5, 10)}}
    assert sorted(calls) == sorted([*range(10), *range(5)])
    run_steps(ds, steps)  # nothing is processed twice: a clock ahead does not make rows look new forever
    assert len(calls) == 15 and pending(ds, steps) == 0
    writer.meta_dbconn.con.dispose()


def test_same_timestamp_twice_with_a_run_between(dbconn):
    ds, steps = build(dbconn, bang)
    ds.get_table("inp").store_chunk(rows([1]), now=1000.0)
    run_steps(ds, steps)
    ds.get_table("inp").store_chunk(rows([2]), now=1000.0)
    run_steps(ds, steps)
    assert output(ds) == {1: "v1!", 2: "v2!"}


def test_restored_value_and_deletion_race(dbconn):
    """b -> a restores a hash processed long ago; a deletion lands after the batch read: both arrive."""
    writer = None
    state = {"armed": False}

    def func(df: pd.DataFrame) -> pd.DataFrame:
        if state["armed"]:
            state["armed"] = False
            writer.get_table("inp").store_chunk(rows([1], "a"))  # back to the first value
            writer.get_table("inp").delete_by_idx(pd.DataFrame({"id": [2]}))
        return bang(df)

    ds, steps = build(dbconn, func)
    writer = other_process(dbconn)
    ds.get_table("inp").store_chunk(rows([1, 2], "a"))
    run_steps(ds, steps)
    ds.get_table("inp").store_chunk(rows([1, 2], "b"))
    state["armed"] = True
    run_steps(ds, steps)
    assert output(ds) == {1: "b1!", 2: "b2!"}
    run_steps(ds, steps)
    assert output(ds) == {1: "a1!"}
    assert pending(ds, steps) == 0
    writer.meta_dbconn.con.dispose()


def test_join_input_written_while_the_other_is_processed(dbconn):
    writer = None
    state = {"armed": False}

    def func(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
        if state["armed"]:
            state["armed"] = False
            writer.get_table("right").store_chunk(rows([1], "r2_"))
        m = left.merge(right, on="id", how="outer", suffixes=("_l", "_r")).fillna("")
        return pd.DataFrame({"id": m["id"], "a": m["a_l"] + "|" + m["a_r"]})

    dbconn_tables = ("left", "right")
    ds, steps = build(dbconn, func, inputs=dbconn_tables)
    other = DBConn(dbconn.connstr)
    writer = DataStore(other)
    for name in dbconn_tables:
        writer.get_or_create_table(name, TableStoreDB(other, name, schema()))
    ds.get_table("left").store_chunk(rows([1], "l"))
    ds.get_table("right").store_chunk(rows([1], "r"))
    run_steps(ds, steps)
    ds.get_table("left").store_chunk(rows([1], "l2_"))
    state["armed"] = True
    run_steps(ds, steps)
    run_steps(ds, steps)
    assert output(ds) == {1: "l2_1|r2_1"}
    assert pending(ds, steps) == 0
    other.con.dispose()


def test_sqlite_snapshot_counts_commits(tmp_path):
    dbconn = DBConn(f"sqlite:///{tmp_path}/v.sqlite")
    ds = DataStore(dbconn, create_meta_table=True)
    dt = ds.get_or_create_table("inp", TableStoreDB(dbconn, "inp", schema(), create_table=True))
    before = take_snapshot(dbconn)
    dt.store_chunk(rows([1]))
    after = take_snapshot(dbconn)
    assert after.below > before.below and after.pending == ()
    version = _versions(dbconn, "inp_meta")[1]
    assert not before.sees(version) and after.sees(version)


def _versions(dbconn: DBConn, table: str) -> dict:
    with dbconn.con.connect() as con:
        return dict(con.execute(text(f"SELECT id, version FROM {table}")).fetchall())


def test_postgres_transaction_held_open_across_a_run(postgres_url):
    """PostgreSQL: a writer's transaction stays pending in every snapshot until it commits, then arrives.

    The writer is a thread (its own context, so it does not share the runner's transaction) that
    writes inside a transaction and waits, uncommitted, until the runner has done two full runs.
    """
    dbconn = DBConn(postgres_url)
    ds, steps = build(dbconn, bang)
    ds.get_table("inp").store_chunk(rows([1, 2]))
    writer = other_process(dbconn)
    written, release = threading.Event(), threading.Event()
    versions = {}

    def write() -> None:
        with writer.meta_dbconn.transaction() as con:
            writer.get_table("inp").store_chunk(rows([1], "late"))
            versions.update(con.execute(text("SELECT id, version FROM inp_meta")).fetchall())
            written.set()
            assert release.wait(60)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert written.wait(60)
        assert not take_snapshot(dbconn).sees(versions[1]), "an uncommitted write must not look seen"
        run_steps(ds, steps)  # a whole run while the write is uncommitted
        ds.get_table("inp").store_chunk(rows([3]))  # another writer commits meanwhile
        run_steps(ds, steps)
        assert output(ds) == {1: "v1!", 2: "v2!", 3: "v3!"}
    finally:
        release.set()
        thread.join()
    assert pending(ds, steps) == 1
    run_steps(ds, steps)
    assert output(ds) == {1: "late1!", 2: "v2!", 3: "v3!"}
    assert pending(ds, steps) == 0
    dbconn.con.dispose()
    writer.meta_dbconn.con.dispose()


def test_snapshot_visibility():
    s = Snapshot(100, (90, 95))
    assert s.sees(89) and not s.sees(90) and s.sees(94) and not s.sees(95) and not s.sees(100)
    assert Snapshot.decode(s.below, s.encoded_pending()) == s
    assert Snapshot.decode(7, None) == Snapshot(7) and Snapshot(7).encoded_pending() is None


# ---------------------------------------------------------------- upgrading an older metadata database


def _downgrade(dbconn: DBConn) -> None:
    """Put the metadata back in the shape Datapipe wrote before change versions."""
    with dbconn.con.begin() as con:
        for table in ("inp_meta", "out_meta"):
            con.execute(text(f"DROP INDEX ix_{table}_version"))
            con.execute(text(f"ALTER TABLE {table} DROP COLUMN version"))
            con.execute(text(f"CREATE INDEX ix_{table}_update_ts ON {table} (update_ts)"))
        for column in ("seen_below", "seen_pending"):
            con.execute(text(f"ALTER TABLE step_meta DROP COLUMN {column}"))
        con.execute(text("DROP TABLE datapipe_watermarks"))
        con.execute(
            text(
                "CREATE TABLE datapipe_watermarks (step VARCHAR(255) NOT NULL, input VARCHAR(255) NOT NULL, "
                "watermark FLOAT, PRIMARY KEY (step, input))"
            )
        )
        if dbconn.is_sqlite:
            con.execute(text("DROP TABLE datapipe_version"))


def test_upgrade_keeps_processed_and_pending_keys(dbconn):
    from datapipe.meta.sql_meta import MetadataUpgradeRequired
    from datapipe.meta.upgrade import upgrade_metadata

    ds, steps = build(dbconn, bang)
    ds.get_table("inp").store_chunk(rows(range(10)))
    run_steps(ds, steps)
    ds.get_table("inp").store_chunk(rows([1, 2], "pending"))  # changed after the last run
    _downgrade(dbconn)
    dbconn.con.dispose()

    calls = []

    def func(df: pd.DataFrame) -> pd.DataFrame:
        calls.extend(df["id"])
        return bang(df)

    fresh = DBConn(dbconn.connstr)
    ds, steps = build(fresh, func)
    with pytest.raises(MetadataUpgradeRequired, match="run `datapipe db upgrade`"):
        run_steps(ds, steps)
    with pytest.raises(MetadataUpgradeRequired):
        ds.get_table("inp").store_chunk(rows([3], "x"))
    assert ds.get_table("inp").get_data().set_index("id").loc[3, "a"] == "v3"  # nothing was written

    tables = [ds.get_table(name).meta for name in ds.tables]
    report = upgrade_metadata(fresh, tables, [(steps[0].meta, steps[0].changes)])
    assert report.steps == [("step", 2)] and sorted(report.tables) == ["inp_meta", "out_meta"]
    assert pending(ds, steps) == 2
    run_steps(ds, steps)
    assert sorted(calls) == [1, 2]
    assert output(ds) == {i: (f"pending{i}!" if i in (1, 2) else f"v{i}!") for i in range(10)}
    ds.get_table("inp").store_chunk(rows([5], "after"))
    run_steps(ds, steps)
    assert sorted(calls) == [1, 2, 5] and pending(ds, steps) == 0

    again = upgrade_metadata(fresh, tables, [(steps[0].meta, steps[0].changes)])
    assert again.summary() == "metadata is already up to date"
    fresh.con.dispose()


def test_full_runs_reuse_the_change_query_with_new_watermarks(dbconn, monkeypatch):
    """The change query is built once per watermark shape; each run binds its own watermarks, so every
    round's changes, and only those, are processed."""
    from datapipe.meta.changes import ChangeQuery

    built = []
    original = ChangeQuery.build
    monkeypatch.setattr(ChangeQuery, "build", lambda self, *a, **kw: built.append(1) or original(self, *a, **kw))
    processed = []

    def record(df: pd.DataFrame) -> pd.DataFrame:
        processed.append(sorted(df["id"]))
        return bang(df)

    ds, steps = build(dbconn, record)
    inp = ds.get_table("inp")
    inp.store_chunk(rows([1, 2, 3]))
    run_steps(ds, steps)  # no watermark yet: one shape
    for round_, ids in enumerate([[2], [3, 4], [1]]):
        inp.store_chunk(rows(ids, f"r{round_}"))
        run_steps(ds, steps)  # a watermark without pending ids: the second shape, then reused
    run_steps(ds, steps)
    assert processed == [[1, 2, 3], [2], [3, 4], [1]]
    assert output(ds) == {1: "r21!", 2: "r02!", 3: "r13!", 4: "r14!"}
    assert len(built) == 2
