"""Planner statistics of metadata tables (and of data tables joined to them) on PostgreSQL.

The change query (``datapipe.meta.changes``) joins the few changed input rows to the step's
metadata by key. PostgreSQL plans that well (a nested loop over the key index) only when its
statistics say "few rows changed"; right after a large write (a bulk load, a step's first run)
the statistics still describe the table before it, the planner expects a third of the table to
match, and it hashes the whole step metadata instead: at a million keys, a rerun after 1 % of the
inputs changed then spends most of its time in a sequential scan. Autovacuum re-analyzes such a
table eventually (after up to a minute by default), which is too late for the run that follows.

The same holds for an input the step's batches read joined to its metadata (``annotations(item_id,
ann_id)`` under transform key ``item_id``, ``DataTable.get_live_data``): unanalyzed, the planner
looks its rows up one by one; analyzed only by autovacuum in the middle of a run, the join it
chose could turn into a scan of the whole data table per batch.

So before a step's change query, ``refresh_stale_statistics`` asks ``pg_stat_user_tables`` (one
small query) which of the tables it will read (its metadata tables and those joined data tables,
``StepMeta.joined_data``) changed by at least ``STALE_FRACTION`` of their rows since they were
last analyzed, and analyzes those. ANALYZE samples a bounded number of rows, so it
costs tens of milliseconds whatever the table size; it waits at most ``LOCK_TIMEOUT`` for a
concurrent ANALYZE or VACUUM and is skipped otherwise. Nothing happens on SQLite, whose planner
does not rely on statistics for these queries. (PostgreSQL counts a backend's changes when it
flushes its statistics: at once when the connection closes, else within seconds; a bulk load still
connected may be seen a little later.)
"""

from __future__ import annotations

import logging
from typing import List, Sequence

from sqlalchemy import Table, bindparam, text
from sqlalchemy.exc import DBAPIError

from datapipe.errors import StoreError
from datapipe.sql.connection import DBConn

logger = logging.getLogger("datapipe.meta.planner_stats")

STALE_FRACTION = 0.2
STALE_MIN_ROWS = 1000
LOCK_TIMEOUT = "200ms"

_STALE = text(
    "SELECT relname FROM pg_stat_user_tables WHERE relname IN :names "
    "AND schemaname = coalesce(:schema, current_schema()) "
    "AND n_mod_since_analyze >= greatest(:min_rows, :fraction * n_live_tup)"
).bindparams(bindparam("names", expanding=True))


def stale_tables(dbconn: DBConn, tables: Sequence[Table]) -> List[Table]:
    """Those of ``tables`` whose statistics are stale (see the module docstring); [] on SQLite."""
    if dbconn.is_sqlite or not tables:
        return []
    by_name = {str(t.name): t for t in tables}
    params = {"names": list(by_name), "schema": dbconn.schema, "min_rows": STALE_MIN_ROWS, "fraction": STALE_FRACTION}
    with dbconn.read() as con:
        names = [r[0] for r in con.execute(_STALE, params)]
    return [by_name[n] for n in names]


def refresh_stale_statistics(dbconn: DBConn, tables: Sequence[Table]) -> None:
    """ANALYZE those of ``tables`` (tables of ``dbconn``) whose statistics are stale."""
    for table in stale_tables(dbconn, tables):
        try:
            with dbconn.begin() as con:
                con.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                con.exec_driver_sql("ANALYZE " + con.dialect.identifier_preparer.format_table(table))
        except (DBAPIError, StoreError) as e:  # a concurrent ANALYZE/VACUUM holds the table: it refreshes them
            # itself (``DBConn.begin`` reports the lock timeout, an ``OperationalError``, as a ``StoreError``)
            logger.info("skipped ANALYZE of %s: %s", table.name, e)
