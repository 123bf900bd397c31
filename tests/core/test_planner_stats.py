"""Planner statistics (``datapipe.meta.planner_stats``): a step's change query runs on fresh statistics."""

from __future__ import annotations

import pandas as pd
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
