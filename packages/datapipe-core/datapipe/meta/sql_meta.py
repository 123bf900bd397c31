"""The SQL metadata store.

Schema (one metadata table per data table, one per transform step, two shared tables):

``<table>_meta``
    primary-key columns of the table, ``MetaKey`` columns, and
    ``hash`` (int64 of the row content), ``version`` (the database's version of the write that
    last changed the row, see ``datapipe.meta.versions``; indexed), and the informative
    wall-clock columns ``create_ts``, ``update_ts`` (last content change), ``process_ts`` (last
    time a producer wrote or confirmed the row), ``delete_ts`` (tombstone, NULL while the row
    exists). Deleting a row sets ``delete_ts`` and gives it a new ``version``, so a deletion is a
    change like any other. A tombstone with ``hash`` NULL marks an *unconfirmed write* to a store
    outside the metadata database (``TableMeta.record_write_intent``): not live, but deletions
    still reach its store row; it has no ``version`` until a write confirms it.

``<step>_meta``
    transform-key columns, ``process_ts`` (informative: when the key was processed),
    ``seen_below``/``seen_pending`` (the version snapshot taken before the key's inputs were
    read), ``is_success``, ``priority`` and ``error`` (text of the last failure). Partial index
    on failed keys.

``datapipe_watermarks``
    ``(step, input) -> seen_below, seen_pending``: the snapshot taken before the step's last
    complete, unfiltered run started. Every input row visible in it has been handed to the step
    (processed, or recorded as failed in ``<step>_meta``).

``datapipe_version`` (SQLite only)
    the commit-ordered version counter; see ``datapipe.meta.versions``.

Change detection
    A step's candidates are the input rows whose ``version`` is not visible in the watermark
    snapshot (an index range scan, so a no-op run touches no rows), expanded to transform keys,
    minus keys whose own snapshot already saw that version, plus keys whose last attempt failed.
    The watermark advances only after a complete unfiltered run; a crash leaves it where it was,
    and the next run re-reads the window and skips keys that were already processed. No clock is
    read to decide any of this, and no safety window is needed: a write that commits late is
    still pending in every snapshot taken before it committed.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    func,
    or_,
    select,
    update,
)

from datapipe import keyset
from datapipe.errors import ConfigError, DatapipeError, mask_url
from datapipe.meta.versions import Snapshot, declare_counter, stamp_upsert, unseen_rows, version_value
from datapipe.sql.bulk import bulk_upsert_values, insert_new_values, value_kind
from datapipe.sql.connection import DBConn
from datapipe.sql.rows import (
    fetch_rows,
    insert_statement,
    key_chunks,
    locked_key_filter,
    python_values,
    read_by_keys,
    rows_to_df,
    upsert_statement,
)
from datapipe.types import DataSchema, IndexDF, MetadataDF, MetaSchema

TABLE_META_COLUMNS = ["hash", "create_ts", "update_ts", "process_ts", "delete_ts"]
WATERMARKS_TABLE = "datapipe_watermarks"

#: Columns added by the change-version design; a metadata database without them is upgraded by
#: ``datapipe.meta.upgrade`` (``datapipe db upgrade``), which keeps every key's processed state.
VERSION_COLUMNS = {"version", "seen_below", "seen_pending"}


class MetadataUpgradeRequired(DatapipeError, RuntimeError):
    """The metadata database was written by an earlier Datapipe and lacks the change-version columns."""


def _declare(
    dbconn: DBConn,
    table_name: str,
    columns: List[Column],
    create: bool,
    indexes: Sequence[Any] = (),
    owner: Optional[str] = None,
) -> Tuple[Table, List[str]]:
    """``dbconn.get_table`` that tolerates an existing table lacking ``VERSION_COLUMNS``; returns the table
    and those missing columns (the table then needs ``datapipe db upgrade`` before it is used).

    ``owner``: the name of the table or step whose metadata this is; a metadata table of the other
    kind under the same name is refused with ``ConfigError`` (see ``_refuse_shared_name``)."""
    missing = dbconn.missing_columns(table_name, [str(c.name) for c in columns if c.name in VERSION_COLUMNS])
    if missing and owner is not None:
        _refuse_shared_name(dbconn, table_name, columns, owner)
    return dbconn.get_table(table_name, columns, create, indexes, optional=missing, clustered=True), missing


def _refuse_shared_name(dbconn: DBConn, table_name: str, columns: List[Column], owner: str) -> None:
    """A table ``x`` and a step ``x`` would both keep their metadata in ``x_meta``: refuse the second
    with a message that says so (else it would look like metadata that needs an upgrade). Checked
    only when the existing table lacks columns, so it costs nothing in the usual case."""
    declared = {str(c.name) for c in columns}
    if "is_success" in declared:
        marker, mine, other = "hash", "step", "table"
    elif "hash" in declared:
        marker, mine, other = "is_success", "table", "step"
    else:
        return
    if not dbconn.missing_columns(table_name, [marker]):
        raise ConfigError(
            f"{mine} {owner!r}: its metadata table {table_name!r} holds the metadata of a {other} named "
            f"{owner!r}; a step and a table cannot share a name (give the step another name=)"
        )


def require_upgraded(table_name: str, missing: List[str], dbconn: DBConn) -> None:
    if missing:
        raise MetadataUpgradeRequired(
            f"metadata table {table_name!r} in {mask_url(dbconn.connstr)} was created by an earlier Datapipe and "
            f"lacks column(s) {missing}; run `datapipe db upgrade` (or datapipe.meta.upgrade.upgrade_metadata) "
            "once: it adds them and keeps what every step has processed"
        )


def _key_columns(schema: DataSchema) -> List[Column]:
    return [Column(c.name, c.type, primary_key=True) for c in schema]


class TableMeta:
    """Metadata of one data table: which keys exist, their content hash and timestamps."""

    def __init__(
        self,
        dbconn: DBConn,
        name: str,
        primary_schema: DataSchema,
        meta_schema: Optional[MetaSchema] = None,
        create_table: bool = False,
    ) -> None:
        self.dbconn = dbconn
        self.name = name
        self.primary_schema = primary_schema
        self.primary_keys = [str(c.name) for c in primary_schema]
        self.meta_schema = meta_schema or []
        self.meta_keys = [str(c.name) for c in self.meta_schema]
        table_name = f"{name}_meta"
        columns = [
            *_key_columns(primary_schema),
            *[Column(c.name, c.type) for c in self.meta_schema],
            Column("hash", BigInteger),
            Column("version", BigInteger),
            Column("create_ts", Float),
            Column("update_ts", Float),
            Column("process_ts", Float),
            Column("delete_ts", Float),
        ]
        indexes = [Index(f"ix_{table_name}_version", "version")]
        self.sql_table, self.missing = _declare(dbconn, table_name, columns, create_table, indexes, owner=name)
        declare_counter(dbconn, create_table)

    def require_upgraded(self) -> None:
        """Raise ``MetadataUpgradeRequired`` when the table predates change versions."""
        require_upgraded(str(self.sql_table.name), self.missing, self.dbconn)

    @property
    def sql_schema(self) -> List[Column]:
        return list(self.sql_table.columns)

    def _select(self, columns: Sequence[str]) -> Any:
        return select(*[self.sql_table.c[c] for c in columns])

    def get_metadata(self, idx: Optional[IndexDF] = None, include_deleted: bool = False) -> MetadataDF:
        """Metadata rows for the keys in ``idx`` (all rows when None); deleted rows only on request."""
        columns = [*self.primary_keys, *self.meta_keys, *TABLE_META_COLUMNS]
        sql = self._select(columns)
        if not include_deleted:
            sql = sql.where(self.sql_table.c.delete_ts.is_(None))
        return MetadataDF(self._read(sql, columns, idx))

    def _read(self, sql: Any, columns: Sequence[str], idx: Optional[pd.DataFrame]) -> pd.DataFrame:
        with self.dbconn.read() as con:
            if idx is None:
                return rows_to_df(fetch_rows(con, sql), columns)
            keys = keyset.select(idx, [c for c in idx.columns if c in self.primary_keys or c in self.meta_keys])
            return read_by_keys(con, self.sql_table, sql, columns, keys)

    def lookup(self, idx: IndexDF) -> pd.DataFrame:
        """Keys, ``hash``, ``create_ts`` and ``delete_ts`` of existing (or deleted) rows in ``idx``."""
        columns = [*self.primary_keys, "hash", "create_ts", "delete_ts"]
        return self._read(self._select(columns), columns, idx)

    def get_existing_idx(self, idx: Optional[pd.DataFrame] = None, unconfirmed: bool = False) -> IndexDF:
        """Live keys matching ``idx``, which may hold only some of the key columns.

        With ``unconfirmed``, also keys with an unconfirmed write (see ``record_write_intent``):
        their rows may be in the store, so deletions must reach them.
        """
        t = self.sql_table
        where = or_(t.c.delete_ts.is_(None), t.c.hash.is_(None)) if unconfirmed else t.c.delete_ts.is_(None)
        return IndexDF(self._read(self._select(self.primary_keys).where(where), self.primary_keys, idx))

    def record_write_intent(self, keys: pd.DataFrame, now: float) -> None:
        """Before writing rows to a store outside the metadata database: note keys the metadata
        does not hold as live, in a transaction of its own, committed at once.

        New keys get a tombstone row with ``hash`` NULL (an *unconfirmed write*); deleted keys get
        ``hash`` NULL. The metadata write that follows a successful store write sets the hash. If
        the process dies in between, the mark stays, and deleting that key later (a vanished output
        row, a stale generated row) also deletes its row from the store, which would otherwise be
        left there unknown to Datapipe. Marked rows are not live: readers never see them.
        """
        if len(keys) == 0:
            return
        t = self.sql_table
        key_cols = self.primary_keys
        n = len(keys)
        columns = [*key_cols, "hash", "create_ts", "update_ts", "process_ts", "delete_ts"]
        lists = [python_values(keys[c]) for c in key_cols] + [[None] * n, [now] * n, [None] * n, [now] * n, [now] * n]
        records = [dict(zip(columns, row)) for row in zip(*lists)]
        with self.dbconn.con.begin() as con:  # deliberately not the shared transaction: it must commit first
            stmt = insert_statement(con, t).on_conflict_do_update(
                index_elements=key_cols, set_={"hash": None}, where=t.c.delete_ts.is_not(None)
            )
            con.execute(stmt, records)

    def upsert_changed(
        self, keys: pd.DataFrame, hashes: np.ndarray, create_ts: np.ndarray, now: float, new: bool = False
    ) -> None:
        """Record new or changed rows: ``keys`` holds their key (and ``MetaKey``) columns.

        They get the write's ``version``; ``update_ts`` and ``process_ts`` become ``now`` and
        ``delete_ts`` NULL. ``new``: no key was recorded before (a cheaper insert, see ``sql.bulk``).
        """
        if len(keys) == 0:
            return
        self.require_upgraded()
        columns, lists, kinds = self._changed_rows(keys, hashes, create_ts.tolist(), now)
        with self.dbconn.begin() as con:
            version = stamp_upsert(con, columns, lists, kinds)
            bulk_upsert_values(con, self.sql_table, columns, lists, kinds, self.primary_keys, extra=version, new=new)

    def insert_new(self, keys: pd.DataFrame, hashes: np.ndarray, now: float) -> bool:
        """``upsert_changed`` of rows believed never recorded (``create_ts`` ``now``): True when none was.

        False when some key has a row already; then nothing was written (``sql.bulk.insert_new_values``),
        and the caller writes the rows with ``upsert_changed`` after reading what is stored.
        """
        if len(keys) == 0:
            return True
        self.require_upgraded()
        columns, lists, kinds = self._changed_rows(keys, hashes, [now] * len(keys), now)
        with self.dbconn.begin() as con:
            version = stamp_upsert(con, columns, lists, kinds)
            return insert_new_values(con, self.sql_table, columns, lists, kinds, self.primary_keys, extra=version)

    def _changed_rows(
        self, keys: pd.DataFrame, hashes: np.ndarray, create_ts: List[float], now: float
    ) -> Tuple[List[str], List[List[Any]], List[str]]:
        """Columns, value lists and dtype kinds of metadata rows for new or changed rows."""
        n = len(keys)
        cols = [c for c in self.sql_table.columns.keys() if c in keys.columns]
        columns = [*cols, "hash", "create_ts", "update_ts", "process_ts", "delete_ts"]
        lists = [python_values(keys[c]) for c in cols]
        lists += [hashes.tolist(), create_ts, [now] * n, [now] * n, [None] * n]
        kinds: List[str] = [str(keys[c].dtype.kind) for c in cols] + ["i", "f", "f", "f", "O"]
        return columns, lists, kinds

    def is_empty(self) -> bool:
        """True when no row was ever recorded (live or deleted)."""
        with self.dbconn.read() as con:
            return con.execute(select(self.sql_table.c[self.primary_keys[0]]).limit(1)).first() is None

    def _update_where_keys(
        self, idx: pd.DataFrame, values: Dict[str, Any], versioned: bool = False, where: Any = None,
        returning: bool = False,
    ) -> List[Any]:
        """``UPDATE`` the rows of the keys of ``idx`` (and matching ``where``); with ``returning``, the
        keys of the rows updated (as driver rows), else []."""
        if len(idx) == 0:
            return []
        t, keys = self.sql_table, self.primary_keys
        updated: List[Any] = []
        with self.dbconn.begin() as con:
            if versioned:
                values = {**values, "version": version_value(con)}
            for chunk in key_chunks(keyset.select(idx, keys)):
                matched = locked_key_filter(con, t, chunk)
                sql = update(t).where(matched if where is None else and_(matched, where)).values(**values)
                if returning:
                    updated.extend(fetch_rows(con, sql.returning(*[t.c[k] for k in keys])))
                else:
                    con.execute(sql)
        return updated

    def touch(self, idx: IndexDF, process_ts: float) -> None:
        """Record that a producer confirmed unchanged rows at ``process_ts``."""
        self._update_where_keys(idx, {"process_ts": process_ts})

    def mark_deleted(self, idx: IndexDF, now: float) -> None:
        """Tombstone rows with a new ``version``; ``delete_ts`` and ``update_ts`` become ``now``
        (unconfirmed-write marks are cleared)."""
        self._tombstone(idx, now)

    def mark_deleted_live(self, idx: IndexDF, now: float) -> IndexDF:
        """``mark_deleted`` for those keys of ``idx`` that are live or an unconfirmed write, found by the
        ``UPDATE`` itself (``RETURNING``) instead of a read first; returns them, sorted."""
        t, keys = self.sql_table, self.primary_keys
        rows = self._tombstone(idx, now, where=or_(t.c.delete_ts.is_(None), t.c.hash.is_(None)), returning=True)
        return IndexDF(keyset.sort(rows_to_df(rows, keys), keys).reset_index(drop=True))

    def _tombstone(self, idx: IndexDF, now: float, where: Any = None, returning: bool = False) -> List[Any]:
        if len(idx):
            self.require_upgraded()
        values = {"delete_ts": now, "update_ts": now, "process_ts": now, "hash": 0}
        return self._update_where_keys(idx, values, versioned=True, where=where, returning=returning)

    def iter_stale_idx(self, process_ts: float, chunksize: int = 10_000) -> Iterator[IndexDF]:
        """Live keys (and unconfirmed writes) last confirmed before ``process_ts``, in chunks."""
        t = self.sql_table
        sql = (
            self._select(self.primary_keys)
            .where(or_(t.c.delete_ts.is_(None), t.c.hash.is_(None)))
            .where(t.c.process_ts < process_ts)
        )
        with self.dbconn.begin() as con:
            rows = con.execute(sql).fetchall()
        df = rows_to_df(rows, self.primary_keys)
        for start in range(0, len(df), chunksize):
            yield IndexDF(df.iloc[start : start + chunksize])

    def get_size(self) -> int:
        sql = select(func.count()).select_from(self.sql_table).where(self.sql_table.c.delete_ts.is_(None))
        with self.dbconn.begin() as con:
            return int(con.execute(sql).scalar_one())

    def has_unseen(self, snapshot: Optional[Snapshot]) -> bool:
        """Whether a row changed (or was deleted) that is not visible in ``snapshot`` (any row when None)."""
        self.require_upgraded()
        t = self.sql_table
        sql = select(t.c.version).where(unseen_rows(t.c.version, snapshot)).limit(1)
        with self.dbconn.read() as con:
            return con.execute(sql).first() is not None

    def reset_process_ts(self) -> None:
        with self.dbconn.begin() as con:
            con.execute(update(self.sql_table).values(process_ts=0))


class TransformMeta:
    """Per-step processing state of each transform key, plus the step's change watermarks."""

    def __init__(
        self,
        dbconn: DBConn,
        name: str,
        primary_schema: DataSchema,
        create_table: bool = False,
    ) -> None:
        self.dbconn = dbconn
        self.name = name
        self.primary_schema = primary_schema
        self.primary_keys = [str(c.name) for c in primary_schema]
        table_name = f"{name}_meta"
        columns = [
            *_key_columns(primary_schema),
            Column("process_ts", Float),
            Column("seen_below", BigInteger),
            Column("seen_pending", String),
            Column("is_success", Boolean),
            Column("priority", Integer),
            Column("error", String),
        ]
        failed = Column("is_success", Boolean)
        indexes = [
            Index(
                f"ix_{table_name}_failed",
                "is_success",
                sqlite_where=failed.is_(False),
                postgresql_where=failed.is_(False),
            )
        ]
        self.sql_table, self.missing = _declare(dbconn, table_name, columns, create_table, indexes, owner=name)
        self.watermarks = Watermarks(dbconn, name, create_table)

    def require_upgraded(self) -> None:
        """Raise ``MetadataUpgradeRequired`` when the step's tables predate change versions."""
        require_upgraded(str(self.sql_table.name), self.missing, self.dbconn)
        require_upgraded(WATERMARKS_TABLE, self.watermarks.missing, self.dbconn)

    def _mark(self, idx: IndexDF, values: Dict[str, Any], new: bool = False) -> None:
        if len(idx) == 0:
            return
        self.require_upgraded()
        keys = keyset.unique(keyset.select(idx, self.primary_keys))
        n = len(keys)
        columns = [*self.primary_keys, *values]
        lists = [python_values(keys[k]) for k in self.primary_keys] + [[v] * n for v in values.values()]
        kinds = [keys[k].dtype.kind for k in self.primary_keys] + [value_kind(v) for v in values.values()]
        with self.dbconn.begin() as con:
            bulk_upsert_values(con, self.sql_table, columns, lists, kinds, self.primary_keys, new=new)

    def mark_success(self, idx: IndexDF, snapshot: Snapshot, now: float, new: bool = False) -> None:
        """Record ``idx`` as processed from inputs read after ``snapshot`` was taken.

        ``new``: the keys are believed never recorded (a cheaper insert; see ``sql.bulk``).
        """
        seen = {"seen_below": snapshot.below, "seen_pending": snapshot.encoded_pending()}
        self._mark(idx, {"process_ts": now, **seen, "is_success": True, "priority": 0, "error": None}, new)

    def is_empty(self) -> bool:
        """True when no key has ever been processed (or failed) by the step."""
        with self.dbconn.read() as con:
            return con.execute(select(self.sql_table.c[self.primary_keys[0]]).limit(1)).first() is None

    def mark_failed(self, idx: IndexDF, now: float, error: str) -> None:
        """Record a failed attempt; failed keys are retried whatever their snapshot says."""
        seen = {"seen_below": None, "seen_pending": None}
        self._mark(idx, {"process_ts": now, **seen, "is_success": False, "priority": 0, "error": error[:4000]})

    def get_metadata(self) -> pd.DataFrame:
        columns = [*self.primary_keys, "process_ts", "is_success", "priority", "error"]
        with self.dbconn.begin() as con:
            rows = con.execute(select(*[self.sql_table.c[c] for c in columns])).fetchall()
        return rows_to_df(rows, columns)

    def get_counts(self) -> Dict[str, int]:
        t = self.sql_table
        with self.dbconn.begin() as con:
            total = con.execute(select(func.count()).select_from(t)).scalar_one()
            failed = con.execute(select(func.count()).select_from(t).where(t.c.is_success.is_(False))).scalar_one()
        return {"processed": int(total), "failed": int(failed)}

    def get_failed_errors(self, limit: int = 5) -> List[str]:
        t = self.sql_table
        sql = select(t.c.error).where(t.c.is_success.is_(False)).group_by(t.c.error).limit(limit)
        with self.dbconn.begin() as con:
            return [str(r[0]) for r in con.execute(sql).fetchall()]

    def get_failed(self, limit: Optional[int] = None) -> pd.DataFrame:
        """Keys whose last attempt failed, with ``process_ts`` and ``error``, latest first
        (at most ``limit``); reads the partial index on failed keys only."""
        t = self.sql_table
        columns = [*self.primary_keys, "process_ts", "error"]
        sql = self._failed_sql(columns).order_by(t.c.process_ts.desc())
        if limit is not None:
            sql = sql.limit(limit)
        with self.dbconn.read() as con:
            return rows_to_df(con.execute(sql).fetchall(), columns)

    def _failed_sql(self, columns: Sequence[str]) -> Any:
        t = self.sql_table
        return select(*[t.c[c] for c in columns]).where(t.c.is_success.is_(False))

    def get_failed_idx(self) -> IndexDF:
        """Every key whose last attempt failed."""
        with self.dbconn.read() as con:
            rows = con.execute(self._failed_sql(self.primary_keys)).fetchall()
        return IndexDF(rows_to_df(rows, self.primary_keys))

    def get_watermarks(self) -> Dict[str, Snapshot]:
        return self.watermarks.get()

    def set_watermarks(self, marks: Dict[str, Snapshot]) -> None:
        self.watermarks.set(marks)

    def reset(self) -> None:
        """Forget every processed key and watermark: the next run processes everything."""
        with self.dbconn.begin() as con:
            con.execute(self.sql_table.delete())
        self.watermarks.reset()


class Watermarks:
    """Rows of ``datapipe_watermarks`` for one step: input name -> snapshot of its last complete run."""

    def __init__(self, dbconn: DBConn, step: str, create_table: bool = False) -> None:
        self.dbconn = dbconn
        self.step = step
        columns: List[Column] = [
            Column("step", String(255), primary_key=True),
            Column("input", String(255), primary_key=True),
            Column("seen_below", BigInteger),
            Column("seen_pending", String),
        ]
        self.table, self.missing = _declare(dbconn, WATERMARKS_TABLE, columns, create_table)

    def get(self) -> Dict[str, Snapshot]:
        require_upgraded(WATERMARKS_TABLE, self.missing, self.dbconn)
        w = self.table
        sql = select(w.c.input, w.c.seen_below, w.c.seen_pending).where(w.c.step == self.step)
        with self.dbconn.read() as con:
            rows = con.execute(sql).fetchall()
        return {str(r[0]): Snapshot.decode(r[1], r[2]) for r in rows if r[1] is not None}

    def set(self, marks: Dict[str, Snapshot]) -> None:
        values = [
            {"step": self.step, "input": k, "seen_below": v.below, "seen_pending": v.encoded_pending()}
            for k, v in marks.items()
        ]
        if not values:
            return
        require_upgraded(WATERMARKS_TABLE, self.missing, self.dbconn)
        with self.dbconn.begin() as con:
            stmt = upsert_statement(con, self.table, ["step", "input", "seen_below", "seen_pending"], ["step", "input"])
            con.execute(stmt, values)

    def reset(self) -> None:
        with self.dbconn.begin() as con:
            con.execute(self.table.delete().where(self.table.c.step == self.step))


def filter_clause(columns: Dict[str, Any], filters: Sequence[Dict[str, Any]]) -> Any:
    """``(a = :v1 AND b = :v2) OR ...`` for a list of ``{column: value}`` filters; values are bound.

    A list value means "any of". Filter columns that are not among ``columns`` are ignored,
    so one ``RunConfig.filters`` can serve steps with different keys. Returns None when no
    filter applies.
    """
    clauses = []
    for flt in filters:
        parts = []
        for key, value in flt.items():
            if key not in columns:
                continue
            if isinstance(value, (list, tuple, set, pd.Series)):
                parts.append(columns[key].in_(python_values(pd.Series(list(value)))))
            else:
                parts.append(columns[key] == python_values(pd.Series([value]))[0])
        if not parts:
            return None
        clauses.append(and_(*parts))
    return or_(*clauses) if clauses else None
