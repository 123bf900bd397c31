"""Planner statistics (``datapipe.meta.planner_stats``): a step's change query runs on fresh statistics."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Pipeline, build_compute, run_steps
from datapipe.meta.planner_stats import STALE_MIN_ROWS, refresh_stale_statistics, stale_tables
from datapipe.step.batch_transform import BatchTransform


def test_tables_changed_since_their_last_analyze_are_analyzed_before_the_change_query(ds, dbconn, make_catalog):
    columns = [Column("id", Integer, primary_key=True), Column("a", String)]
    catalog = make_catalog(inp=columns, out=[Column("id", Integer, primary_key=True), Column("a", String)])
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda df: df, ["inp"], ["out"], name="copy")]))
    inp_meta = ds.get_table("inp").meta.sql_table
    step_meta = steps[0].meta.sql_table
    if not dbconn.is_sqlite:  # autovacuum must not analyze them behind the test's back
        with dbconn.begin() as con:
            for table in (inp_meta, step_meta):
                con.exec_driver_sql(f"ALTER TABLE {table.name} SET (autovacuum_enabled = false)")
    n = 3 * STALE_MIN_ROWS
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(n), "a": "x"}))
    if dbconn.is_sqlite:
        assert stale_tables(dbconn, [inp_meta, step_meta]) == []
        return
    _flush_statistics(dbconn)
    assert stale_tables(dbconn, [inp_meta, step_meta]) == [inp_meta]
    run_steps(ds, steps)  # analyzes the input's metadata first, then writes n step-metadata rows
    _flush_statistics(dbconn)
    assert stale_tables(dbconn, [inp_meta, step_meta]) == [step_meta]
    refresh_stale_statistics(dbconn, [inp_meta, step_meta])
    _flush_statistics(dbconn)
    assert stale_tables(dbconn, [inp_meta, step_meta]) == []
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(10), "a": "changed"}))  # 10 of 3000 rows
    _flush_statistics(dbconn)
    assert stale_tables(dbconn, [inp_meta, step_meta]) == []


def _flush_statistics(dbconn) -> None:
    """Make the pending table statistics of this process's connections visible: PostgreSQL 15 flushes a
    backend's statistics lazily (within seconds), and at once when the connection closes."""
    dbconn.con.dispose()


def test_the_data_table_a_step_reads_joined_to_its_metadata_is_analyzed_too(ds, dbconn, make_catalog):
    """``annotations(item_id, ann_id)`` read under transform key ``item_id`` is read joined to its live
    metadata (``DataTable.get_live_data``); the plan of that join depends on the data table's
    statistics, so a stale one is analyzed with the metadata. ``items`` is read by full key: left alone."""
    item = [Column("item_id", Integer, primary_key=True), Column("w", Integer)]
    ann = [Column("item_id", Integer, primary_key=True), Column("ann_id", Integer, primary_key=True),
           Column("score", Integer)]
    catalog = make_catalog(items=item, annotations=ann, stats=[Column("item_id", Integer, primary_key=True),
                                                               Column("n", Integer)])

    def count(items: pd.DataFrame, anns: pd.DataFrame) -> pd.DataFrame:
        return anns.groupby("item_id", as_index=False).size().rename(columns={"size": "n"})

    step = BatchTransform(count, ["items", "annotations"], ["stats"], transform_keys=["item_id"], name="count")
    steps = build_compute(ds, catalog, Pipeline([step]))
    items_data = ds.get_table("items").table_store.data_table
    anns_data = ds.get_table("annotations").table_store.data_table
    assert [t.name for t in steps[0].meta.joined_data] == ["annotations"]
    n = 3 * STALE_MIN_ROWS
    if not dbconn.is_sqlite:
        with dbconn.begin() as con:
            for table in (items_data, anns_data):
                con.exec_driver_sql(f"ALTER TABLE {table.name} SET (autovacuum_enabled = false)")
    ds.get_table("items").store_chunk(pd.DataFrame({"item_id": range(n), "w": 1}))
    ds.get_table("annotations").store_chunk(
        pd.DataFrame({"item_id": [i // 2 for i in range(2 * n)], "ann_id": [i % 2 for i in range(2 * n)], "score": 1})
    )
    if not dbconn.is_sqlite:
        _flush_statistics(dbconn)
        assert stale_tables(dbconn, [items_data, anns_data]) == [items_data, anns_data]
    run_steps(ds, steps)
    out = ds.get_table("stats").get_data()
    assert len(out) == n and out["n"].eq(2).all()
    if not dbconn.is_sqlite:
        _flush_statistics(dbconn)
        assert stale_tables(dbconn, [items_data, anns_data]) == [items_data]


def test_a_table_held_by_a_concurrent_analyze_or_vacuum_is_skipped(ds, dbconn, make_catalog, caplog):
    """ANALYZE waits ``LOCK_TIMEOUT`` for the table's lock (autovacuum holds it while it analyzes a
    freshly loaded table), then leaves the table to whoever holds it: the run goes on."""
    if dbconn.is_sqlite:
        pytest.skip("SQLite has no planner statistics to refresh (checked by the test above)")
    columns = [Column("id", Integer, primary_key=True), Column("a", String)]
    catalog = make_catalog(inp=columns, out=[Column("id", Integer, primary_key=True), Column("a", String)])
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda df: df, ["inp"], ["out"], name="copy")]))
    inp_meta = ds.get_table("inp").meta.sql_table
    with dbconn.begin() as con:
        con.exec_driver_sql(f"ALTER TABLE {inp_meta.name} SET (autovacuum_enabled = false)")
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(3 * STALE_MIN_ROWS), "a": "x"}))
    _flush_statistics(dbconn)
    assert stale_tables(dbconn, [inp_meta]) == [inp_meta]
    holder = dbconn.con.connect()
    try:
        holder.exec_driver_sql(f"LOCK TABLE {inp_meta.name} IN SHARE UPDATE EXCLUSIVE MODE")  # as ANALYZE does
        with caplog.at_level(logging.INFO, logger="datapipe.meta.planner_stats"):
            run_steps(ds, steps)
    finally:
        holder.rollback()
        holder.close()
    assert "skipped ANALYZE of inp_meta" in caplog.text and "lock timeout" in caplog.text
    assert ds.get_table("out").get_size() == 3 * STALE_MIN_ROWS
