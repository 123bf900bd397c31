"""Bulk SQL writes with as little per-row work as the driver allows.

``bulk_upsert`` writes a DataFrame with one ``INSERT ... ON CONFLICT DO UPDATE`` handed to the
driver's ``executemany`` as plain tuples (SQLite, psycopg 3 which pipelines the statements), or,
on PostgreSQL with psycopg 3 and large frames, with ``COPY`` into a temporary table followed by one
``INSERT ... SELECT ... ON CONFLICT``. SQLAlchemy's per-row parameter processing (dicts, type
processors) is skipped for columns whose type needs none; columns that need one (JSON, DateTime on
SQLite, ...) are processed like SQLAlchemy would.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
from sqlalchemy import Float, Table
from sqlalchemy.engine import Connection

# Frames at least this long go through COPY on PostgreSQL (psycopg 3); smaller ones use executemany.
COPY_MIN_ROWS = 200

_SQL_CACHE: Dict[Tuple[Any, ...], str] = {}


def _values(series: pd.Series) -> List[Any]:
    """Plain Python values, NaN/NaT/NA as None (same rules as ``database.python_values``)."""
    if series.dtype.kind in "iub":
        return series.tolist()
    if series.dtype.kind == "f" and not series.hasnans:
        return series.tolist()
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
