import time
from typing import List

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.datatable import DataStore
from datapipe.store.database import TableStoreDB
from datapipe.testing import assert_datatable_equal, assert_idx_equal


def schema():
    return [Column("id", Integer, primary_key=True), Column("a", String)]


@pytest.fixture
def dt(ds: DataStore, dbconn):
    return ds.create_table("t", TableStoreDB(dbconn, "t", schema(), create_table=True))


def df(ids, prefix="v"):
    return pd.DataFrame({"id": list(ids), "a": [f"{prefix}{i}" for i in ids]})


def test_store_chunk_writes_and_reports_changes(dt):
    changed = dt.store_chunk(df(range(5)), now=100.0)
    assert_idx_equal(changed, pd.DataFrame({"id": range(5)}))
    assert_datatable_equal(dt, df(range(5)))
    meta = dt.get_metadata().set_index("id")
    assert (meta["update_ts"] == 100.0).all() and (meta["create_ts"] == 100.0).all()
    assert meta["delete_ts"].isna().all()
    assert dt.get_size() == 5


def test_unchanged_rows_keep_update_ts(dt):
    dt.store_chunk(df(range(3)), now=100.0)
    new = df(range(3))
    new.loc[1, "a"] = "changed"
    changed = dt.store_chunk(new, now=200.0)
    assert_idx_equal(changed, pd.DataFrame({"id": [1]}))
    meta = dt.get_metadata().set_index("id")
    assert meta.loc[0, "update_ts"] == 100.0 and meta.loc[2, "update_ts"] == 100.0
    assert meta.loc[1, "update_ts"] == 200.0 and meta.loc[1, "create_ts"] == 100.0
    assert (meta["process_ts"] == 200.0).all()


def test_processed_idx_deletes_missing_rows(dt):
    dt.store_chunk(df(range(6)), now=100.0)
    dt.store_chunk(df([1, 2]), processed_idx=pd.DataFrame({"id": [0, 1, 2, 3]}), now=200.0)
    assert_datatable_equal(dt, df([1, 2, 4, 5]))
    meta = dt.meta.get_metadata(include_deleted=True).set_index("id")
    assert meta.loc[0, "delete_ts"] == 200.0 and meta.loc[0, "update_ts"] == 200.0
    assert pd.isna(meta.loc[4, "delete_ts"])


def test_a_write_of_only_deletions_tombstones_the_live_keys_of_its_scope(ds, dt, dbconn):
    """No rows, only a scope: the keys of the scope that are live or an unconfirmed write are deleted and
    reported; keys deleted before keep their tombstone (and version), keys outside the scope stay."""
    from datapipe.datatable import TableWrite, write_tables

    dt.store_chunk(df(range(8)), now=100.0)
    dt.delete_by_idx(pd.DataFrame({"id": [0, 1]}), now=150.0)
    dt.meta.record_write_intent(pd.DataFrame({"id": [9]}), now=160.0)  # a write that never landed
    before = _meta_of(dt)
    scope = pd.DataFrame({"id": [5, 0, 9, 3, 1, 2, 42]})
    [(changed, deleted)] = write_tables(dbconn, [TableWrite(dt, df([]), scope)], now=200.0)
    assert len(changed) == 0 and list(deleted["id"]) == [2, 3, 5, 9]
    assert_datatable_equal(dt, df([4, 6, 7]))
    after = _meta_of(dt)
    assert after.loc[[2, 3, 5, 9], "delete_ts"].eq(200.0).all() and after.loc[[2, 3, 5, 9], "hash"].eq(0).all()
    assert after.loc[2, "version"] > before.loc[7, "version"]  # a new version: downstream sees the deletion
    pd.testing.assert_frame_equal(after.loc[[0, 1, 4, 6, 7]], before.loc[[0, 1, 4, 6, 7]], check_dtype=False)
    assert 42 not in after.index


def test_deleted_row_comes_back(dt):
    dt.store_chunk(df([1]), now=100.0)
    dt.delete_by_idx(pd.DataFrame({"id": [1]}), now=150.0)
    assert dt.get_size() == 0
    changed = dt.store_chunk(df([1]), now=200.0)
    assert list(changed["id"]) == [1]
    meta = dt.get_metadata().set_index("id")
    assert meta.loc[1, "update_ts"] == 200.0 and pd.isna(meta.loc[1, "delete_ts"])
    assert_datatable_equal(dt, df([1]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (pd.DataFrame({"id": [1, 1], "a": ["x", "y"]}), "duplicate primary keys"),
        (pd.DataFrame({"id": [1, None], "a": ["x", "y"]}), "null values in primary key"),
        (pd.DataFrame({"a": ["x"]}), "missing primary key column"),
    ],
)
def test_bad_chunks_are_rejected_and_nothing_changes(dt, bad, message):
    dt.store_chunk(df(range(3)), now=100.0)
    before = dt.meta.get_metadata(include_deleted=True)
    with pytest.raises(ValueError, match=message):
        dt.store_chunk(bad)
    assert_datatable_equal(dt, df(range(3)))
    pd.testing.assert_frame_equal(dt.meta.get_metadata(include_deleted=True), before)


def test_empty_chunk_is_a_no_op(dt):
    assert len(dt.store_chunk(pd.DataFrame(columns=["id", "a"]))) == 0
    assert len(dt.store_chunk(pd.DataFrame())) == 0
    assert dt.get_size() == 0


def test_delete_stale_by_process_ts(dt):
    dt.store_chunk(df(range(4)), now=100.0)
    dt.store_chunk(df([0, 1]), now=200.0)
    deleted = dt.delete_stale_by_process_ts(150.0, now=300.0)
    assert_idx_equal(deleted, pd.DataFrame({"id": [2, 3]}))
    assert_datatable_equal(dt, df([0, 1]))


def test_key_type_mismatch_is_a_clear_error(dt):
    dt.store_chunk(df(range(2)))
    with pytest.raises(ValueError, match="table 't'"):
        dt.store_chunk(pd.DataFrame({"id": ["x"], "a": ["y"]}))


def test_timestamps_default_to_now(dt):
    before = time.time()
    dt.store_chunk(df([1]))
    assert dt.get_metadata()["update_ts"].iloc[0] >= before


def test_meta_key_columns_are_copied_into_metadata(ds, dbconn):
    from datapipe.store.database import MetaKey

    store = TableStoreDB(
        dbconn,
        "with_meta",
        [Column("id", Integer, primary_key=True), Column("owner", Integer, MetaKey()), Column("a", String)],
        create_table=True,
    )
    assert [c.name for c in store.get_meta_schema()] == ["owner"]
    table = ds.create_table("with_meta", store)
    table.store_chunk(pd.DataFrame({"id": [1, 2], "owner": [10, 20], "a": ["x", "y"]}))
    meta = table.get_metadata().set_index("id")
    assert meta.loc[1, "owner"] == 10 and meta.loc[2, "owner"] == 20


def test_keys_new_to_the_metadata_but_present_in_the_store_are_replaced(dt):
    """A first write of keys (a plain insert on PostgreSQL) still replaces store rows the metadata
    never recorded, e.g. rows written to the table directly."""
    dt.table_store.insert_rows(df(range(30), prefix="stray"))
    changed = dt.store_chunk(df(range(40)))
    assert_idx_equal(changed, pd.DataFrame({"id": range(40)}))
    assert_datatable_equal(dt, df(range(40)))
    assert dt.get_size() == 40


def _meta_of(table):
    """Every metadata row of ``table`` with its ``version``, by id."""
    from sqlalchemy import select

    with table.meta.dbconn.read() as con:
        rows = con.execute(select(table.meta.sql_table)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows]).set_index("id").sort_index()


@pytest.mark.parametrize("n", [6, 40])  # arrays on PostgreSQL from 20 rows, row by row below
def test_a_fresh_write_of_recorded_keys_ends_like_the_exact_write(ds, dbconn, n):
    """``TableWrite(fresh=True)`` inserts without reading the stored metadata. When keys were recorded
    after all (live and unchanged, live and changed, deleted), it ends exactly like the ordinary write:
    same rows, same metadata (create_ts kept, unchanged rows not given a new version), same changes."""
    from datapipe.datatable import TableWrite, write_tables

    tables = {name: ds.create_table(name, TableStoreDB(dbconn, name, schema(), create_table=True))
              for name in ("exact", "fresh")}
    for t in tables.values():
        t.store_chunk(df(range(0, n, 2)), now=100.0)  # the even keys are recorded
        t.delete_by_idx(pd.DataFrame({"id": [0]}), now=150.0)
    before = {name: _meta_of(t) for name, t in tables.items()}
    new = df(range(n))
    new.loc[new["id"] == 2, "a"] = "changed"
    results = {
        name: write_tables(dbconn, [TableWrite(t, new, new[["id"]], fresh=name == "fresh")], now=200.0)[0]
        for name, t in tables.items()
    }
    changed = sorted(results["exact"][0]["id"])
    assert changed == [0, 1, 2, *range(3, n, 2)]
    assert sorted(results["fresh"][0]["id"]) == changed and len(results["fresh"][1]) == 0
    after = {name: _meta_of(t) for name, t in tables.items()}
    columns = ["hash", "create_ts", "update_ts", "process_ts", "delete_ts"]
    pd.testing.assert_frame_equal(after["fresh"][columns], after["exact"][columns])
    for name, t in tables.items():
        assert_datatable_equal(t, new)
        old = before[name]["version"].reindex(after[name].index)
        assert sorted(after[name].index[after[name]["version"] != old]) == changed  # new version: changed only

    # a key of the scope without a row is deleted: the fresh write does not skip that
    fewer = new[new["id"] != 1]
    changed, deleted = write_tables(dbconn, [TableWrite(tables["fresh"], fewer, new[["id"]], fresh=True)], now=300.0)[0]
    assert deleted["id"].tolist() == [1] and len(changed) == 0
    assert_datatable_equal(tables["fresh"], fewer)


def test_a_fresh_write_of_new_keys_reports_them_all(ds, dbconn):
    from datapipe.datatable import TableWrite, write_tables

    t = ds.create_table("t", TableStoreDB(dbconn, "t", schema(), create_table=True))
    rows = df(range(50))
    changed, deleted = write_tables(dbconn, [TableWrite(t, rows, rows[["id"]], fresh=True)], now=100.0)[0]
    assert sorted(changed["id"]) == list(range(50)) and len(deleted) == 0
    assert_datatable_equal(t, rows)
    meta = _meta_of(t)
    assert (meta["create_ts"] == 100.0).all() and meta["delete_ts"].isna().all() and meta["version"].notna().all()


def test_a_step_first_run_writes_in_pipeline_mode_on_postgres(ds, dbconn, make_catalog):
    """PostgreSQL: a first run's units of work go out in pipeline mode (the statements do not wait for
    each other), without savepoints (a failure rolls the whole unit back); later runs, which read what
    is stored, do not."""
    from sqlalchemy import event

    from datapipe.compute import Pipeline, build_compute, run_steps
    from datapipe.step.batch_transform import BatchTransform

    if not dbconn.can_pipeline:
        pytest.skip("pipeline mode is PostgreSQL through psycopg 3; SQLite writes in turn")
    from psycopg import pq

    catalog = make_catalog(inp=schema(), out=schema())
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda d: d, ["inp"], ["out"], chunk_size=30)]))
    ds.get_table("inp").store_chunk(df(range(100)))
    modes: List[bool] = []
    savepoints: List[str] = []

    def inserts(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO out"):
            modes.append(conn.connection.driver_connection.pgconn.pipeline_status != pq.PipelineStatus.OFF)
        if "SAVEPOINT" in statement:
            savepoints.append(statement)

    event.listen(dbconn.con, "before_cursor_execute", inserts)
    try:
        run_steps(ds, steps)
        assert len(modes) == 8 and all(modes)  # 4 batches: data and metadata rows each
        assert savepoints == []
        modes.clear()
        ds.get_table("inp").store_chunk(df(range(50), prefix="w"))
        run_steps(ds, steps)
        assert modes and not any(modes)
    finally:
        event.remove(dbconn.con, "before_cursor_execute", inserts)
    assert_datatable_equal(ds.get_table("out"), pd.concat([df(range(50), prefix="w"), df(range(50, 100))]))


@pytest.mark.parametrize("fresh", [False, True])
def test_a_failing_fresh_write_reports_the_same_error(ds, dbconn, fresh):
    """A statement failing in a pipelined unit of work is written again the ordinary way, so the error
    raised is the one the ordinary write raises, and nothing is left written."""
    from sqlalchemy.exc import IntegrityError

    from datapipe.datatable import TableWrite, write_tables

    cols = [Column("id", Integer, primary_key=True), Column("a", String, nullable=False)]
    t = ds.create_table("strict", TableStoreDB(dbconn, "strict", cols, create_table=True))
    rows = df(range(40))
    rows.loc[30, "a"] = None
    with pytest.raises(IntegrityError, match="null value|NOT NULL"):
        write_tables(dbconn, [TableWrite(t, rows, rows[["id"]], fresh=fresh)], now=100.0)
    assert t.get_size() == 0 and len(t.table_store.read_rows()) == 0


def test_a_first_run_that_drops_keys_writes_the_ordinary_way(ds, dbconn, make_catalog):
    """A batch whose function returns no row for some of its keys may have rows to delete, so it reads
    what is stored first (no fresh insert, no pipeline) and its result is exact."""
    from sqlalchemy import event

    from datapipe.compute import Pipeline, build_compute, run_steps
    from datapipe.step.batch_transform import BatchTransform

    catalog = make_catalog(inp=schema(), out=schema())

    def evens(d: pd.DataFrame) -> pd.DataFrame:
        return d[d["id"] % 2 == 0]

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(evens, ["inp"], ["out"], chunk_size=30)]))
    ds.get_table("inp").store_chunk(df(range(100)))
    lookups: List[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT out_meta.id, out_meta.hash"):
            lookups.append(statement)

    event.listen(dbconn.con, "before_cursor_execute", count)
    try:
        run_steps(ds, steps)
    finally:
        event.remove(dbconn.con, "before_cursor_execute", count)
    assert len(lookups) == 4  # one metadata read per batch, each done once
    assert_datatable_equal(ds.get_table("out"), df(range(0, 100, 2)))


def _ddl(dbconn, table: str) -> str:
    with dbconn.begin() as con:
        return con.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).scalar_one()


def test_metadata_tables_of_composite_keys_are_clustered_on_sqlite(ds: DataStore, dbconn):
    """On SQLite a metadata table keyed by more than one INTEGER column is WITHOUT ROWID (one B-tree per
    key lookup and write); on PostgreSQL the declaration is the same as always."""
    pair = [Column("a", Integer, primary_key=True), Column("b", String, primary_key=True), Column("v", Integer)]
    dt2 = ds.create_table("pairs", TableStoreDB(dbconn, "pairs", pair, create_table=True))
    dt1 = ds.create_table("ones", TableStoreDB(dbconn, "ones", schema(), create_table=True))
    rows = pd.DataFrame({"a": [2, 1, 1], "b": ["x", "y", "x"], "v": [1, 2, 3]})
    dt2.store_chunk(rows, now=100.0)
    dt1.store_chunk(df(range(3)), now=100.0)
    changed = dt2.store_chunk(rows.assign(v=[1, 2, 4]), now=200.0)
    assert_idx_equal(changed, pd.DataFrame({"a": [1], "b": ["x"]}))
    assert_datatable_equal(dt2, rows.assign(v=[1, 2, 4]))
    if dbconn.is_sqlite:
        assert "WITHOUT ROWID" in _ddl(dbconn, "pairs_meta")
        assert "WITHOUT ROWID" not in _ddl(dbconn, "ones_meta")  # its INTEGER key is the rowid already
        assert "WITHOUT ROWID" not in _ddl(dbconn, "pairs")  # the user's table is left as declared


def test_a_metadata_table_created_with_rowids_is_used_as_it_is(dbconn):
    """A metadata database written before clustered tables (SQLite: rowid tables) keeps working unchanged."""
    from sqlalchemy import BigInteger, Float, MetaData, Table

    Table("pairs_meta", MetaData(), Column("a", Integer, primary_key=True), Column("b", String, primary_key=True),
          *[Column(c, BigInteger) for c in ("hash", "version")],
          *[Column(c, Float) for c in ("create_ts", "update_ts", "process_ts", "delete_ts")]).create(dbconn.con)
    ds = DataStore(dbconn, create_meta_table=True)
    pair = [Column("a", Integer, primary_key=True), Column("b", String, primary_key=True), Column("v", Integer)]
    dt2 = ds.create_table("pairs", TableStoreDB(dbconn, "pairs", pair, create_table=True))
    rows = pd.DataFrame({"a": [2, 1], "b": ["x", "y"], "v": [1, 2]})
    dt2.store_chunk(rows, now=100.0)
    dt2.store_chunk(rows.iloc[:1], processed_idx=rows[["a", "b"]], now=200.0)
    assert_datatable_equal(dt2, rows.iloc[:1])
    if dbconn.is_sqlite:
        assert "WITHOUT ROWID" not in _ddl(dbconn, "pairs_meta")
