"""Adopt a metadata database written by datapipe 0.15, in place, so nothing is processed again.

What datapipe 0.15 leaves in a database (observed by running it, not by reading it):

``<table>_meta``
    the table's key (and ``MetaKey``) columns, ``hash`` (INTEGER; a 32-bit hash of its own),
    ``create_ts``, ``update_ts``, ``process_ts``, ``delete_ts``.
``<step>_meta`` (batch transforms only)
    the transform keys, ``process_ts``, ``is_success``, ``priority``, ``error``.

That is our metadata without change versions (``datapipe.meta.versions``), so adoption is the
upgrade of ``datapipe.meta.upgrade`` plus two things 0.15 needs on top:

* **hashes**: 0.15 hashed rows differently, so every live row gets our hash
  (``TableStore.hash_rows`` over the row read back from its store); otherwise the first write of
  an unchanged row would look like a change and reprocess everything downstream. ``update_ts``
  and ``process_ts`` are not touched. On PostgreSQL ``hash`` is widened to BIGINT first.
* **watermarks**: a step with no pending key gets a watermark that has seen every adopted row,
  so its first run does not even scan its inputs. A step with pending keys gets none, and its
  first run finds them (and only them).

Phases, in order:

1. **inspect** (read-only): every metadata table of the pipeline must be absent, in 0.15's shape,
   or already adopted. Anything else, or a database holding none of the pipeline's metadata tables,
   raises ``AdoptRefused`` before anything is written.
2. **hashes**: widen ``hash``, then recompute hashes chunk by chunk, each chunk committed. The
   result depends only on the data, so an interrupted pass is simply redone by the next attempt.
3. **upgrade**: one transaction adds the version columns and indexes, keeps each step's pending
   keys pending (0.15's rule: an input row with ``update_ts > process_ts``, a never-processed key,
   or a failed one), creates ``datapipe_watermarks`` with the watermarks above, and on SQLite the
   version counter. Once it has committed the database is adopted and a re-run changes nothing.

``datapipe db adopt [--dry-run]`` runs it for a pipeline; the 0.15 deployment must be stopped.
Hashes are computed from what the stores hold at adoption, so a change made to a store behind
Datapipe's back (a folder tracked by ``UpdateExternalTable``) after 0.15's last scan counts as
seen: let 0.15 finish a complete run first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Set, Tuple

import numpy as np
from sqlalchemy import inspect, select

from datapipe.errors import DatapipeError, mask_url
from datapipe.meta.changes import ChangeQuery
from datapipe.meta.sql_meta import TABLE_META_COLUMNS, WATERMARKS_TABLE, TableMeta, TransformMeta
from datapipe.meta.upgrade import OLD_VERSION, UpgradeReport, upgrade_metadata
from datapipe.meta.versions import VERSION_TABLE
from datapipe.sql.bulk import bulk_upsert_values
from datapipe.sql.connection import DBConn
from datapipe.sql.rows import fetch_rows, python_values, rows_to_df
from datapipe.types import IndexDF

logger = logging.getLogger("datapipe.meta.adopt")

STEP_META_COLUMNS = ["process_ts", "is_success", "priority", "error"]
TABLE_VERSION_COLUMNS = ["version"]
STEP_VERSION_COLUMNS = ["seen_below", "seen_pending"]
HASH_CHUNK = 20_000

#: Test-only fault injection: when set, called as ``fault_hook("hash_chunk")`` after each committed
#: chunk of recomputed hashes (the interruption tests SIGKILL the process there).
fault_hook: Optional[Callable[[str], None]] = None


class DataTable(Protocol):
    """What adopt needs of a table (``datapipe.datatable.DataTable`` is one)."""

    name: str
    meta: TableMeta
    meta_dbconn: DBConn
    table_store: Any  # a ``TableStore``: ``read_rows`` and ``hash_rows``


class AdoptRefused(DatapipeError):
    """The database is not one ``adopt`` recognises; nothing was changed."""


@dataclass
class TableState:
    """What ``inspect`` found for one metadata table: ``absent``, ``0.15`` or ``adopted``."""

    name: str
    state: str
    narrow_hash: bool = False  # PostgreSQL ``hash`` is INTEGER and must become BIGINT


@dataclass
class AdoptPlan:
    """What ``adopt`` will do (``--dry-run`` prints it)."""

    url: str
    tables: List[TableState] = field(default_factory=list)
    steps: List[TableState] = field(default_factory=list)
    pending: Dict[str, int] = field(default_factory=dict)  # step -> keys 0.15 considers pending
    live_rows: Dict[str, int] = field(default_factory=dict)  # table -> rows whose hash is recomputed

    @property
    def to_adopt(self) -> List[TableState]:
        return [t for t in [*self.tables, *self.steps] if t.state == "0.15"]

    def describe(self) -> List[str]:
        """The plan as lines of text."""
        if not self.to_adopt:
            return [f"{self.url}: already adopted, nothing to change"]
        lines = [f"{self.url}: metadata written by datapipe 0.15"]
        for t in self.tables:
            if t.state == "0.15":
                widen = "; widen hash to BIGINT" if t.narrow_hash else ""
                lines.append(
                    f"  table {t.name}: add column version (+ index){widen}; "
                    f"recompute the hash of {self.live_rows.get(t.name, 0)} live row(s), update_ts kept"
                )
        for s in self.steps:
            if s.state == "0.15":
                n = self.pending.get(s.name, 0)
                mark = "watermark set (next run scans nothing)" if n == 0 else "no watermark (next run finds them)"
                lines.append(f"  step table {s.name}: add seen_below/seen_pending; {n} key(s) stay pending; {mark}")
        absent = [t.name for t in [*self.tables, *self.steps] if t.state == "absent"]
        if absent:
            lines.append(f"  not in the database (created by the first run, which processes them fully): {absent}")
        lines.append(f"  create {WATERMARKS_TABLE}" + (f" and {VERSION_TABLE}" if "sqlite" in self.url else ""))
        return lines


@dataclass
class AdoptReport:
    plan: AdoptPlan
    hashes_changed: int = 0
    seconds: float = 0.0
    upgrade: Optional[UpgradeReport] = None

    def summary(self) -> str:
        if self.upgrade is None:
            return f"{self.plan.url}: already adopted, nothing changed"
        pending = sum(self.plan.pending.values())
        return (
            f"{self.plan.url}: adopted {len(self.plan.tables)} table(s) and {len(self.plan.steps)} step(s) in "
            f"{self.seconds:.1f}s; {self.hashes_changed} hash(es) recomputed; "
            f"{pending} key(s) pending for the next run"
        )


# ---------------------------------------------------------------- 1. inspect


def _columns(dbconn: DBConn, name: str) -> Optional[Tuple[Dict[str, Any], List[str]]]:
    """Columns (name -> type) and primary key of table ``name``, or None when it does not exist."""
    with dbconn.read() as con:
        insp = inspect(con)
        if not insp.has_table(name, schema=dbconn.schema):
            return None
        cols = {str(c["name"]): c["type"] for c in insp.get_columns(name, schema=dbconn.schema)}
        pk = [str(c) for c in insp.get_pk_constraint(name, schema=dbconn.schema).get("constrained_columns") or []]
    return cols, pk


def _classify(dbconn: DBConn, name: str, keys: Sequence[str], base: Sequence[str], added: Sequence[str]) -> TableState:
    found = _columns(dbconn, name)
    if found is None:
        return TableState(name, "absent")
    cols, pk = found
    have = set(cols)
    old: Set[str] = {*keys, *base}
    if sorted(pk) != sorted(keys):
        raise AdoptRefused(f"table {name!r}: primary key is {pk}, the pipeline declares {list(keys)}")
    if have == old:
        narrow = "hash" in cols and not dbconn.is_sqlite and str(cols["hash"]).upper() == "INTEGER"
        return TableState(name, "0.15", narrow)
    if have == old | set(added):
        return TableState(name, "adopted")
    missing, extra = sorted(old - have), sorted(have - old - set(added))
    raise AdoptRefused(
        f"table {name!r} is neither datapipe 0.15 metadata nor ours: missing column(s) {missing}, "
        f"unexpected column(s) {extra}"
    )


def _check_shared_tables(dbconn: DBConn) -> None:
    for name, expected in ((WATERMARKS_TABLE, {"step", "input", "seen_below", "seen_pending"}),
                           (VERSION_TABLE, {"id", "version"})):
        found = _columns(dbconn, name)
        if found is not None and set(found[0]) != expected:
            raise AdoptRefused(f"table {name!r} exists but is not Datapipe's (columns {sorted(found[0])})")


def inspect_database(
    dbconn: DBConn, tables: Sequence[DataTable], steps: Sequence[Tuple[TransformMeta, ChangeQuery]]
) -> AdoptPlan:
    """Phase 1 (read-only): classify every metadata table; raise ``AdoptRefused`` when unrecognised."""
    plan = AdoptPlan(mask_url(dbconn.connstr))
    for dt in tables:
        meta = dt.meta
        keys = [*meta.primary_keys]
        base = [*meta.meta_keys, *TABLE_META_COLUMNS]
        plan.tables.append(_classify(dbconn, f"{dt.name}_meta", keys, base, TABLE_VERSION_COLUMNS))
    for tr, _ in steps:
        name = f"{tr.name}_meta"
        plan.steps.append(_classify(dbconn, name, tr.primary_keys, STEP_META_COLUMNS, STEP_VERSION_COLUMNS))
    if all(t.state == "absent" for t in [*plan.tables, *plan.steps]):
        raise AdoptRefused(
            f"{plan.url} holds none of the pipeline's metadata tables "
            f"({[t.name for t in plan.tables][:5]}...): not a datapipe 0.15 database of this pipeline"
        )
    _check_shared_tables(dbconn)
    to_adopt = {t.name for t in plan.steps if t.state == "0.15"}
    for tr, changes in steps:
        if f"{tr.name}_meta" in to_adopt:
            plan.pending[f"{tr.name}_meta"] = len(_legacy_pending(changes))
    for dt, state in zip(tables, plan.tables):
        if state.state == "0.15":
            plan.live_rows[state.name] = dt.meta.get_size()
    return plan


def _legacy_pending(changes: ChangeQuery) -> Any:
    legacy = ChangeQuery(changes.tr, changes.keys, changes.inputs, legacy=True)
    return legacy.fetch(legacy.build(legacy.window_wheres({})))


# ---------------------------------------------------------------- 2. hashes


def _widen_hash(dt: DataTable) -> None:
    with dt.meta_dbconn.begin() as con:
        target = con.dialect.identifier_preparer.format_table(dt.meta.sql_table)
        con.exec_driver_sql(f"ALTER TABLE {target} ALTER COLUMN hash TYPE BIGINT")


def recompute_hashes(dt: DataTable, chunk_size: Optional[int] = None) -> int:
    """Give every live row of ``dt`` our content hash; return how many hashes changed.

    Reads the keys and stored hashes from the metadata, the rows from the store, in chunks;
    writes only the ``hash`` column, each chunk in its own transaction.
    """
    meta = dt.meta
    t = meta.sql_table
    keys = meta.primary_keys
    sql = select(*[t.c[k] for k in keys], t.c.hash).where(t.c.delete_ts.is_(None)).order_by(*[t.c[k] for k in keys])
    with dt.meta_dbconn.read() as con:
        stored = rows_to_df(fetch_rows(con, sql), [*keys, "hash"])
    changed = 0
    chunk_size = chunk_size or HASH_CHUNK
    for start in range(0, len(stored), chunk_size):
        part = stored.iloc[start : start + chunk_size]
        data = dt.table_store.read_rows(IndexDF(part[keys]))
        if len(data) == 0:
            continue
        hashes = dt.table_store.hash_rows(data).to_numpy()
        old = part.set_index(keys)["hash"].reindex(data.set_index(keys).index).to_numpy()
        differ = ~(old == hashes)
        if not differ.any():
            continue
        rows = data.loc[differ, keys]
        lists = [python_values(rows[k]) for k in keys] + [hashes[differ].tolist()]
        kinds = [rows[k].dtype.kind for k in keys] + ["i"]
        with dt.meta_dbconn.begin() as con:
            bulk_upsert_values(con, t, [*keys, "hash"], lists, kinds, keys)
        changed += int(np.count_nonzero(differ))
        if fault_hook is not None:
            fault_hook("hash_chunk")
    return changed


# ---------------------------------------------------------------- all of it


def adopt_metadata(
    dbconn: DBConn,
    tables: Sequence[DataTable],
    steps: Sequence[Tuple[TransformMeta, ChangeQuery]],
    dry_run: bool = False,
) -> AdoptReport:
    """Adopt the 0.15 metadata of ``tables`` and batch ``steps`` in ``dbconn`` (see the module docstring)."""
    started = time.monotonic()
    plan = inspect_database(dbconn, tables, steps)
    report = AdoptReport(plan)
    if dry_run or not plan.to_adopt:
        return report
    for dt, state in zip(tables, plan.tables):
        if state.state != "0.15":
            continue
        if state.narrow_hash:
            _widen_hash(dt)
        report.hashes_changed += recompute_hashes(dt)
    ready = {s.name for s in plan.steps if s.state == "0.15" and plan.pending.get(s.name, 0) == 0}
    report.upgrade = upgrade_metadata(
        dbconn,
        [dt.meta for dt in tables],
        steps,
        watermark_steps={tr.name for tr, _ in steps if f"{tr.name}_meta" in ready},
    )
    report.seconds = time.monotonic() - started
    logger.info("%s", report.summary())
    return report


__all__ = ["AdoptPlan", "AdoptRefused", "AdoptReport", "OLD_VERSION", "adopt_metadata", "inspect_database"]
