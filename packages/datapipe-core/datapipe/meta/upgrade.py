"""Upgrade a metadata database written before change versions, keeping every step's processed state.

Before ``datapipe.meta.versions``, change detection compared wall-clock ``update_ts`` of input rows
with each step's ``process_ts``. The upgrade, in one transaction:

1. for every batch step, finds the keys that the old rule still considers pending
   (``process_ts < update_ts`` of an input row, or never processed), *before* anything changes;
2. adds ``version`` to every table's metadata (with its index) and gives every existing change
   version 1, a version older than anything the database assigns from now on;
3. adds ``seen_below``/``seen_pending`` to every step's metadata: processed keys get a snapshot
   that saw version 1, the pending keys of step 1 none, so they are processed on the next run
   and nothing else is;
4. recreates ``datapipe_watermarks`` in its new shape (the first run after the upgrade scans each
   input once to rebuild it; ``DatatableTransform`` steps run once), or creates it; steps the caller
   names in ``watermark_steps`` get a watermark at once (``datapipe.meta.adopt`` does that);
5. on SQLite, creates the version counter at ``OLD_VERSION``, so every later write is newer.

Tables and steps already in the new shape are left alone, so running it twice is harmless.
``datapipe db upgrade`` runs it for a pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Collection, List, Sequence, Tuple

import pandas as pd
from sqlalchemy import update
from sqlalchemy.engine import Connection

from datapipe.meta.changes import ChangeQuery
from datapipe.meta.sql_meta import WATERMARKS_TABLE, TableMeta, TransformMeta, Watermarks
from datapipe.meta.versions import VERSION_TABLE, declare_counter
from datapipe.sql.connection import DBConn
from datapipe.sql.rows import key_chunks, key_filter, upsert_statement

logger = logging.getLogger("datapipe.meta.upgrade")

#: Version given to every change recorded before the upgrade; processed keys have seen it.
OLD_VERSION = 1


@dataclass
class UpgradeReport:
    tables: List[str] = field(default_factory=list)  # metadata tables that got ``version``
    steps: List[Tuple[str, int]] = field(default_factory=list)  # (step, keys left pending)
    watermarks_recreated: bool = False

    def summary(self) -> str:
        if not self.tables and not self.steps and not self.watermarks_recreated:
            return "metadata is already up to date"
        pending = sum(n for _, n in self.steps)
        return (
            f"upgraded {len(self.tables)} table(s) and {len(self.steps)} step(s); "
            f"{pending} key(s) were pending and will be processed on the next run"
        )


def _add_column(con: Connection, table: Any, name: str, sql_type: str) -> None:
    target = con.dialect.identifier_preparer.format_table(table)
    column = con.dialect.identifier_preparer.quote(name)
    con.exec_driver_sql(f"ALTER TABLE {target} ADD COLUMN {column} {sql_type}")


def _legacy_pending(tr: TransformMeta, changes: ChangeQuery) -> pd.DataFrame:
    legacy = ChangeQuery(tr, changes.keys, changes.inputs, legacy=True)
    query = legacy.build(legacy.window_wheres({}), include_failed=False)
    return legacy.fetch(query)


def upgrade_metadata(
    dbconn: DBConn,
    tables: Sequence[TableMeta],
    steps: Sequence[Tuple[TransformMeta, ChangeQuery]],
    watermark_steps: Collection[str] = (),
) -> UpgradeReport:
    """Upgrade ``tables`` and ``steps`` (each a step's metadata and change query) in ``dbconn``.

    Steps named in ``watermark_steps`` (the caller knows nothing is pending for them) get, for each
    input, a watermark that has seen every upgraded row, so their first run scans nothing.
    """
    report = UpgradeReport()
    old_steps = [(tr, changes) for tr, changes in steps if tr.missing]
    pending = [(tr, _legacy_pending(tr, changes)) for tr, changes in old_steps]  # before any change
    watermarks = Watermarks(dbconn, "", create_table=False)
    with dbconn.transaction() as con:
        for meta in tables:
            if meta.missing:
                _upgrade_table(con, meta)
                report.tables.append(str(meta.sql_table.name))
        for tr, keys in pending:
            _upgrade_step(con, tr, keys)
            report.steps.append((tr.name, len(keys)))
        if watermarks.missing:
            con.exec_driver_sql(f"DROP TABLE {con.dialect.identifier_preparer.format_table(watermarks.table)}")
            report.watermarks_recreated = True
        watermarks.table.create(con, checkfirst=True)
        marks = [
            {"step": tr.name, "input": inp.name, "seen_below": OLD_VERSION + 1, "seen_pending": None}
            for tr, changes in old_steps
            if tr.name in watermark_steps
            for inp in changes.inputs
        ]
        if marks:
            columns = ["step", "input", "seen_below", "seen_pending"]
            con.execute(upsert_statement(con, watermarks.table, columns, ["step", "input"]), marks)
        if dbconn.is_sqlite:  # in the same transaction: no later write can get a version seen as old
            declare_counter(dbconn, create=False)
            dbconn.sqla_metadata.tables[VERSION_TABLE].create(con, checkfirst=True)
            con.exec_driver_sql(f"INSERT OR IGNORE INTO {VERSION_TABLE} (id, version) VALUES (1, {OLD_VERSION})")
            con.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version = {OLD_VERSION} WHERE version < {OLD_VERSION}")
    for meta in tables:
        meta.missing = []
    for tr, _ in steps:
        tr.missing = []
        tr.watermarks.missing = []
    logger.info("%s", report.summary())
    return report


def _upgrade_table(con: Connection, meta: TableMeta) -> None:
    t = meta.sql_table
    _add_column(con, t, "version", "BIGINT")
    con.execute(update(t).where(t.c.update_ts.is_not(None), t.c.hash.is_not(None)).values(version=OLD_VERSION))
    for index in t.indexes:
        index.create(con, checkfirst=True)


def _upgrade_step(con: Connection, tr: TransformMeta, pending: pd.DataFrame) -> None:
    t = tr.sql_table
    _add_column(con, t, "seen_below", "BIGINT")
    _add_column(con, t, "seen_pending", "TEXT")
    con.execute(update(t).where(t.c.is_success.is_(True)).values(seen_below=OLD_VERSION + 1))
    for chunk in key_chunks(pending[tr.primary_keys]):
        con.execute(update(t).where(key_filter(t, chunk)).values(seen_below=None))
    for index in t.indexes:  # the partial index on failed keys
        index.create(con, checkfirst=True)


__all__ = ["UpgradeReport", "upgrade_metadata", "WATERMARKS_TABLE"]
