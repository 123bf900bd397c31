"""Bulk SQL writes with as little per-row work as the driver allows.

``bulk_upsert`` writes a DataFrame with one ``INSERT ... ON CONFLICT DO UPDATE`` handed to the
driver's ``executemany`` as plain tuples (SQLite, psycopg 3 which pipelines the statements), or,
on PostgreSQL with psycopg 3 and large frames, with ``COPY`` into a temporary table followed by one
``INSERT ... SELECT ... ON CONFLICT``. SQLAlchemy's per-row parameter processing (dicts, type
processors) is skipped for columns whose type needs none; columns that need one (JSON, DateTime on
SQLite, ...) are processed like SQLAlchemy would.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
from sqlalchemy import Boolean, Float, String, Table, TypeDecorator, bindparam
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

# Frames at least this long go through COPY on PostgreSQL (psycopg 3); smaller ones use executemany.
COPY_MIN_ROWS = 200

_SQL_CACHE: Dict[Tuple[Any, ...], str] = {}


def _values(series: pd.Series) -> List[Any]:
    """Plain Python values, NaN/NaT/NA as None (same rules as ``database.python_values``)."""
    if series.dtype.kind in "iub":
        return series.tolist()
    if series.dtype.kind == "f" and not series.hasnans:
        return series.tolist()
    if series.dtype.kind in "OU" or isinstance(series.dtype, pd.StringDtype):
        return series.to_numpy(dtype=object, na_value=None).tolist()  # type: ignore[no-any-return]
    return series.astype(object).where(series.notna(), None).tolist()


def _processor(con: Connection, table: Table, column: str, series: pd.Series) -> Optional[Callable[[Any], Any]]:
    col_type = table.c[column].type
    if isinstance(col_type, Float) and series.dtype.kind in "fiu":
        return None  # already Python floats/ints; SQLite's to_float would be a no-op
    return col_type._cached_bind_processor(con.dialect)  # type: ignore[no-any-return]


def df_to_tuples(con: Connection, table: Table, df: pd.DataFrame, columns: Sequence[str]) -> List[Tuple[Any, ...]]:
    """Rows of ``df[columns]`` as driver-ready tuples (bind processors applied where the type has one)."""
    col_values = []
    for c in columns:
        values = _values(df[c])
        proc = _processor(con, table, c, df[c])
        if proc is not None:
            values = [None if v is None else proc(v) for v in values]
        col_values.append(values)
    return list(zip(*col_values))


def _quote(con: Connection, name: str) -> str:
    return con.dialect.identifier_preparer.quote(name)  # type: ignore[no-any-return]


def _conflict_clause(con: Connection, columns: Sequence[str], keys: Sequence[str]) -> str:
    key_sql = ", ".join(_quote(con, k) for k in keys)
    update = [c for c in columns if c not in keys]
    if not update:
        return f" ON CONFLICT ({key_sql}) DO NOTHING"
    sets = ", ".join(f"{_quote(con, c)} = excluded.{_quote(con, c)}" for c in update)
    return f" ON CONFLICT ({key_sql}) DO UPDATE SET {sets}"


def upsert_sql(con: Connection, table: Table, columns: Sequence[str], keys: Sequence[str]) -> str:
    """Positional ``INSERT ... ON CONFLICT`` text for the driver's paramstyle (cached)."""
    cache_key = ("upsert", con.dialect.name, con.dialect.paramstyle, table, tuple(columns), tuple(keys))
    sql = _SQL_CACHE.get(cache_key)
    if sql is None:
        mark = "?" if con.dialect.paramstyle == "qmark" else "%s"
        target = con.dialect.identifier_preparer.format_table(table)
        cols = ", ".join(_quote(con, c) for c in columns)
        marks = ", ".join([mark] * len(columns))
        sql = f"INSERT INTO {target} ({cols}) VALUES ({marks})" + _conflict_clause(con, columns, keys)
        _SQL_CACHE[cache_key] = sql
    return sql


def _is_psycopg3(con: Connection) -> bool:
    return con.dialect.name == "postgresql" and con.dialect.driver == "psycopg"


def _copy_upsert(con: Connection, table: Table, columns: Sequence[str], keys: Sequence[str], rows: List[Any]) -> None:
    """COPY ``rows`` into a per-transaction temp table, then one INSERT ... SELECT ... ON CONFLICT."""
    target = con.dialect.identifier_preparer.format_table(table)
    tmp = _quote(con, f"_dp_tmp_{table.schema or ''}_{table.name}"[:63])
    cols = ", ".join(_quote(con, c) for c in columns)
    raw = con.connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {tmp} AS SELECT {cols} FROM {target} WITH NO DATA"
        )
        cur.execute(f"TRUNCATE {tmp}")
        with cur.copy(f"COPY {tmp} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(
            f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {tmp}" + _conflict_clause(con, columns, keys)
        )


def bulk_upsert(con: Connection, table: Table, df: pd.DataFrame, columns: Sequence[str], keys: Sequence[str]) -> None:
    """Insert the rows of ``df[columns]`` into ``table``, updating rows whose ``keys`` already exist."""
    if len(df) == 0:
        return
    rows = df_to_tuples(con, table, df, columns)
    if _is_psycopg3(con) and len(rows) >= COPY_MIN_ROWS:
        _copy_upsert(con, table, columns, keys, rows)
        return
    con.exec_driver_sql(upsert_sql(con, table, columns, keys), rows)  # type: ignore[arg-type]


# ---------------------------------------------------------------- key lists as one bound parameter


class KeyList(TypeDecorator):  # type: ignore[type-arg]
    """A list of key values bound as ONE parameter: JSON text on SQLite, an array on PostgreSQL."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: Any) -> None:
        super().__init__()
        self.item_type = item_type

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            return dialect.type_descriptor(ARRAY(self.item_type))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return json.dumps(value)
        return value


class KeyIn(ColumnElement[bool]):
    """``column IN (values)`` with the values in one parameter (see ``KeyList``).

    Compiles to ``col IN (SELECT value FROM json_each(?))`` on SQLite and ``col = ANY(%s)`` on
    PostgreSQL, so the statement text and its cached compilation do not depend on the number of keys.
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: no "= 1" appended on dialects without native booleans
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: Any, values: List[Any]) -> None:
        self.column = column
        self.values = bindparam(None, values, type_=KeyList(column.type), unique=True)


@compiles(KeyIn)
def _key_in_default(element: KeyIn, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.in_(element.values.value), **kw)  # type: ignore[no-any-return]


@compiles(KeyIn, "sqlite")
def _key_in_sqlite(element: KeyIn, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    return f"{col} IN (SELECT value FROM json_each({compiler.process(element.values, **kw)}))"


@compiles(KeyIn, "postgresql")
def _key_in_postgresql(element: KeyIn, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.values, **kw)})"


def key_in(column: Any, values: List[Any]) -> ColumnElement[bool]:
    """``column IN values`` as one bound parameter when the values are all ints or all strs, else a plain IN."""
    if values and (all(type(v) is int for v in values) or all(type(v) is str for v in values)):
        return KeyIn(column, values)
    return column.in_(values)  # type: ignore[no-any-return]
