"""The SQL metadata store.

Schema (one metadata table per data table, one per transform step, one shared table):

``<table>_meta``
    primary-key columns of the table, ``MetaKey`` columns, and
    ``hash`` (int64 of the row content), ``create_ts``, ``update_ts`` (last content change),
    ``process_ts`` (last time a producer wrote or confirmed the row), ``delete_ts`` (tombstone,
    NULL while the row exists). Deleting a row sets ``delete_ts`` *and* ``update_ts``, so a
    deletion is a change like any other. Indexed on ``update_ts``. A tombstone with ``hash``
    NULL marks an *unconfirmed write* to a store outside the metadata database
    (``TableMeta.record_write_intent``): not live, but deletions still reach its store row.

``<step>_meta``
    transform-key columns, ``process_ts`` (last time the key was processed), ``is_success``,
    ``priority`` and ``error`` (text of the last failure). Partial index on failed keys.

``datapipe_watermarks``
    ``(step, input) -> watermark``: every row of ``input`` with ``update_ts <= watermark``
    has been handed to ``step`` (or recorded as failed in ``<step>_meta``).

Change detection
    A step's candidates are the rows of each input with ``update_ts`` in
    ``(watermark, max_update_ts_at_start]`` (an index range scan, so a no-op run touches no
    rows), expanded to transform keys, minus keys whose ``process_ts`` is already newer, plus
    keys whose last attempt failed. The watermark advances only after a complete unfiltered
    run. A crash leaves it where it was; the next run re-reads the window and skips keys that
    were already processed. Writers are assumed to commit a chunk shortly after taking its
    timestamp; when several processes write the same input concurrently, set
    ``DATAPIPE_WATERMARK_LAG`` (seconds) to re-read that much history on every run.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence

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

from datapipe.meta import keyset
from datapipe.store.database import (
    MAX_PARAMS,
    DBConn,
    fetch_rows,
    insert_statement,
    key_chunks,
    key_filter,
    python_values,
    rows_to_df,
    upsert_statement,
)
from datapipe.store.sql_bulk import bulk_upsert, bulk_upsert_values, value_kind
from datapipe.types import DataSchema, IndexDF, MetadataDF, MetaSchema

TABLE_META_COLUMNS = ["hash", "create_ts", "update_ts", "process_ts", "delete_ts"]
WATERMARKS_TABLE = "datapipe_watermarks"


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
            Column("create_ts", Float),
            Column("update_ts", Float),
            Column("process_ts", Float),
            Column("delete_ts", Float),
        ]
        indexes = [Index(f"ix_{table_name}_update_ts", "update_ts")]
        self.sql_table: Table = dbconn.get_table(table_name, columns, create_table, indexes)

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
            rows: List[Any] = []
            keys = keyset.select(idx, [c for c in idx.columns if c in self.primary_keys or c in self.meta_keys])
            keys = keyset.unique_if_chunked(keys, MAX_PARAMS // max(1, len(keys.columns)))
            for chunk in key_chunks(keys):
                rows.extend(fetch_rows(con, sql.where(key_filter(self.sql_table, chunk))))
        return rows_to_df(rows, columns)

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

    def upsert(self, meta_df: pd.DataFrame) -> None:
        if len(meta_df) == 0:
            return
        columns = [c for c in self.sql_table.columns.keys() if c in meta_df.columns]
        with self.dbconn.begin() as con:
            bulk_upsert(con, self.sql_table, meta_df, columns, self.primary_keys)

    def upsert_changed(self, keys: pd.DataFrame, hashes: np.ndarray, create_ts: np.ndarray, now: float) -> None:
        """Record new or changed rows: ``keys`` holds their key (and ``MetaKey``) columns.

        ``update_ts`` and ``process_ts`` become ``now`` and ``delete_ts`` NULL. Same effect as
        ``upsert`` of the equivalent frame, without building one.
        """
        n = len(keys)
        if n == 0:
            return
        cols = [c for c in self.sql_table.columns.keys() if c in keys.columns]
        columns = [*cols, "hash", "create_ts", "update_ts", "process_ts", "delete_ts"]
        lists = [python_values(keys[c]) for c in cols]
        lists += [hashes.tolist(), create_ts.tolist(), [now] * n, [now] * n, [None] * n]
        kinds = [keys[c].dtype.kind for c in cols] + ["i", "f", "f", "f", "O"]
        with self.dbconn.begin() as con:
            bulk_upsert_values(con, self.sql_table, columns, lists, kinds, self.primary_keys)

    def _update_where_keys(self, idx: pd.DataFrame, values: Dict[str, Any]) -> None:
        if len(idx) == 0:
            return
        with self.dbconn.begin() as con:
            for chunk in key_chunks(idx[self.primary_keys]):
                con.execute(update(self.sql_table).where(key_filter(self.sql_table, chunk)).values(**values))

    def touch(self, idx: IndexDF, process_ts: float) -> None:
        """Record that a producer confirmed unchanged rows at ``process_ts``."""
        self._update_where_keys(idx, {"process_ts": process_ts})

    def mark_deleted(self, idx: IndexDF, now: float) -> None:
        """Tombstone rows: ``delete_ts`` and ``update_ts`` become ``now`` (unconfirmed-write marks are cleared)."""
        self._update_where_keys(idx, {"delete_ts": now, "update_ts": now, "process_ts": now, "hash": 0})

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

    def max_update_ts(self) -> Optional[float]:
        with self.dbconn.read() as con:
            value = con.execute(select(func.max(self.sql_table.c.update_ts))).scalar_one()
        return None if value is None else float(value)

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
        self.sql_table: Table = dbconn.get_table(table_name, columns, create_table, indexes)
        self.watermarks = Watermarks(dbconn, name, create_table)

    def _mark(self, idx: IndexDF, values: Dict[str, Any]) -> None:
        if len(idx) == 0:
            return
        keys = keyset.unique(keyset.select(idx, self.primary_keys))
        n = len(keys)
        columns = [*self.primary_keys, *values]
        lists = [python_values(keys[k]) for k in self.primary_keys] + [[v] * n for v in values.values()]
        kinds = [keys[k].dtype.kind for k in self.primary_keys] + [value_kind(v) for v in values.values()]
        with self.dbconn.begin() as con:
            bulk_upsert_values(con, self.sql_table, columns, lists, kinds, self.primary_keys)

    def mark_success(self, idx: IndexDF, now: float) -> None:
        self._mark(idx, {"process_ts": now, "is_success": True, "priority": 0, "error": None})

    def mark_failed(self, idx: IndexDF, now: float, error: str) -> None:
        self._mark(idx, {"process_ts": now, "is_success": False, "priority": 0, "error": error[:4000]})

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

    def get_watermarks(self) -> Dict[str, float]:
        return self.watermarks.get()

    def set_watermarks(self, marks: Dict[str, Optional[float]]) -> None:
        self.watermarks.set(marks)

    def reset(self) -> None:
        """Forget every processed key and watermark: the next run processes everything."""
        with self.dbconn.begin() as con:
            con.execute(self.sql_table.delete())
        self.watermarks.reset()


class Watermarks:
    """Rows of ``datapipe_watermarks`` for one step: input name -> highest ``update_ts`` handled."""

    def __init__(self, dbconn: DBConn, step: str, create_table: bool = False) -> None:
        self.dbconn = dbconn
        self.step = step
        self.table = dbconn.get_table(
            WATERMARKS_TABLE,
            [
                Column("step", String(255), primary_key=True),
                Column("input", String(255), primary_key=True),
                Column("watermark", Float),
            ],
            create_table,
        )

    def get(self) -> Dict[str, float]:
        w = self.table
        with self.dbconn.read() as con:
            rows = con.execute(select(w.c.input, w.c.watermark).where(w.c.step == self.step)).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    def set(self, marks: Dict[str, Optional[float]]) -> None:
        values = [{"step": self.step, "input": k, "watermark": v} for k, v in marks.items() if v is not None]
        if not values:
            return
        with self.dbconn.begin() as con:
            stmt = upsert_statement(con, self.table, ["step", "input", "watermark"], ["step", "input"])
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
