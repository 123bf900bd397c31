"""Bulk SQL writes with as little per-row work as the driver allows.

``bulk_upsert`` writes a DataFrame with one ``INSERT ... ON CONFLICT DO UPDATE`` handed to the driver's
``executemany`` as plain tuples (SQLite, where rows that differ only in their key, one column or several
integer ones, go as one ``INSERT ... SELECT FROM json_each(?)`` instead; psycopg 3 pipelines them), or,
on PostgreSQL with psycopg 3, as ONE statement ``INSERT ... SELECT * FROM unnest(%s::type[], ...) ON
CONFLICT`` with one array parameter per column (one round trip per chunk); a column with one value in
every row (a batch's timestamps, flags, NULLs) goes as one plain parameter instead. SQLAlchemy's per-row
parameter processing (dicts, type processors) is skipped for columns whose type needs none; columns that
need one (JSON, DateTime on SQLite, ...) are processed like SQLAlchemy would.

Rows the caller believes new (``new=True``: their keys were never recorded) are written on
PostgreSQL with a plain ``INSERT`` inside a savepoint, which costs the server about a third less
than the speculative insertion of ``ON CONFLICT``; if a key exists after all (a unique violation),
the savepoint is rolled back and the rows are upserted, so the belief is an optimisation only.
``insert_new_values`` is the strict form: it reports whether every key was new and, when one was
not, leaves nothing written, for callers that skipped reading what is stored (``TableWrite.fresh``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import (
    ARRAY,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Numeric,
    String,
    Table,
    TypeDecorator,
    bindparam,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement

from datapipe.errors import StoreError
from datapipe.sql.sqla_private import bind_processor, traverse

# Frames at least this long are sent as arrays on PostgreSQL (psycopg 3); smaller ones use executemany.
UNNEST_MIN_ROWS = 20

_SQL_CACHE: Dict[Tuple[Any, ...], str] = {}


def _values(series: pd.Series) -> List[Any]:
    """Plain Python values, NaN/NaT/NA as None (same rules as ``database.python_values``)."""
    if series.dtype.kind in "iubf" and not series.hasnans:
        return series.tolist()
    if series.dtype.kind in "OU" or isinstance(series.dtype, pd.StringDtype):
        return series.to_numpy(dtype=object, na_value=None).tolist()  # type: ignore[call-overload,no-any-return]
    return series.astype(object).where(series.notna(), None).tolist()


def _processor(con: Connection, table: Table, column: str, kind: str) -> Optional[Callable[[Any], Any]]:
    col_type = table.c[column].type
    if isinstance(col_type, Float) and kind in "fiu":
        return None  # already Python floats/ints; SQLite's to_float would be a no-op
    if isinstance(col_type, Boolean) and kind == "b":
        return None  # Python bools bind as booleans (PostgreSQL) or 1/0 (SQLite) as they are
    return bind_processor(col_type, con.dialect)


def _processed(con: Connection, table: Table, column: str, kind: str, values: List[Any]) -> List[Any]:
    proc = _processor(con, table, column, kind)
    if proc is None:
        return values
    return [None if v is None else proc(v) for v in values]


def _quote(con: Connection, name: str) -> str:
    return con.dialect.identifier_preparer.quote(name)  # type: ignore[no-any-return]


def _conflict_clause(con: Connection, columns: Sequence[str], keys: Sequence[str]) -> str:
    key_sql = ", ".join(_quote(con, k) for k in keys)
    update = [c for c in columns if c not in keys]
    if not update:
        return f" ON CONFLICT ({key_sql}) DO NOTHING"
    sets = ", ".join(f"{_quote(con, c)} = excluded.{_quote(con, c)}" for c in update)
    return f" ON CONFLICT ({key_sql}) DO UPDATE SET {sets}"


def upsert_sql(
    con: Connection,
    table: Table,
    columns: Sequence[str],
    keys: Sequence[str],
    extra: Optional[Dict[str, str]] = None,
    on_conflict: str = "update",
) -> str:
    """Positional ``INSERT ... ON CONFLICT`` text for the driver's paramstyle (cached).

    ``extra`` maps further columns to SQL expressions written into the statement (the same for every
    row; Datapipe's own expressions only, never values from data). ``on_conflict``: what a row whose
    key exists does: ``"update"`` the stored row, ``"nothing"`` (skipped), ``"error"`` (a plain
    ``INSERT``: a unique violation).
    """
    extra = extra or {}
    cache_key = ("upsert", con.dialect.name, con.dialect.paramstyle, table, tuple(columns), tuple(keys), on_conflict,
                 *extra.items())
    sql = _SQL_CACHE.get(cache_key)
    if sql is None:
        mark = "?" if con.dialect.paramstyle == "qmark" else "%s"
        target = con.dialect.identifier_preparer.format_table(table)
        cols = ", ".join(_quote(con, c) for c in [*columns, *extra])
        marks = ", ".join([mark] * len(columns) + list(extra.values()))
        conflict = "" if on_conflict == "error" else _conflict_clause(
            con, [*columns, *extra] if on_conflict == "update" else [], keys
        )
        sql = f"INSERT INTO {target} ({cols}) VALUES ({marks})" + conflict
        _SQL_CACHE[cache_key] = sql
    return sql


def _is_psycopg3(con: Connection) -> bool:
    return con.dialect.name == "postgresql" and con.dialect.driver == "psycopg"


# Column types whose PostgreSQL arrays unnest element by element into the same type.
_UNNEST_TYPES = (Integer, Float, Numeric, String, Boolean, DateTime, Date)


def _unnest_types(con: Connection, table: Table, columns: Sequence[str]) -> Optional[List[str]]:
    """SQL type names for ``unnest(%s::type[], ...)``, or None when a column type does not allow it."""
    names = []
    for c in columns:
        col_type = table.c[c].type
        if not isinstance(col_type, _UNNEST_TYPES) or isinstance(col_type, (Enum, ARRAY)):
            return None
        names.append(col_type.compile(dialect=con.dialect))
    return names


def _quote_text(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text_array_literal(values: List[str]) -> str:
    """``{"a","b"}`` for non-null strings, escaped on the joined text (no per-element Python).

    NUL never occurs in PostgreSQL text, so it can stand for the separator while escaping; a value
    holding one could not be stored anyway and raises ``ValueError`` here.
    """
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1:
        raise ValueError("PostgreSQL text cannot contain NUL (0x00) characters; got a value with one")
    joined = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + joined.replace("\x00", '","') + '"}'


def key_array_literal(values: List[Any]) -> str:
    """PostgreSQL array text for a key list that is all ints or all strs (see ``key_in``)."""
    if values and type(values[0]) is str:
        return _text_array_literal(values)
    return "{" + ",".join(map(str, values)) + "}"


def _constant(values: List[Any]) -> bool:
    """Whether a non-empty column holds one value in every row."""
    return values.count(values[0]) == len(values)


@dataclass(frozen=True)
class IntCodes:
    """Several integer key columns folded into one non-negative integer per row, for SQLite: one flat
    JSON array of codes binds and parses faster than an array of key rows (1 000 keys of two columns:
    ``json_each`` lookup 1.3 ms against 2.0, ``json.dumps`` 0.17 ms against 0.35), and SQL gets column
    ``j`` back as ``code / weights[j] % spans[j] + lows[j]``."""

    lows: Tuple[int, ...]
    spans: Tuple[int, ...]
    weights: Tuple[int, ...]  # the last column's is 1, each earlier one's the product of the later spans

    @classmethod
    def plan(cls, values: Sequence[List[Any]]) -> Optional[IntCodes]:
        """Codes for per-column value lists that are all ints (not bools) and whose ranges multiply to
        under 2**63; None otherwise."""
        if not values or not len(values[0]) or not all(set(map(type, v)) == {int} for v in values):
            return None
        lows = tuple(min(v) for v in values)
        spans = tuple(max(v) - low + 1 for v, low in zip(values, lows))
        weights, capacity = [], 1
        for span in reversed(spans):
            weights.append(capacity)
            capacity *= span
        if capacity >= 2**63 or min(lows) < -(2**63) or max(low + span for low, span in zip(lows, spans)) > 2**63:
            return None
        return cls(lows, spans, tuple(reversed(weights)))

    def encode(self, values: Sequence[List[Any]]) -> List[int]:
        codes = np.zeros(len(values[0]), dtype=np.int64)
        for v, low, weight in zip(values, self.lows, self.weights):
            codes += (np.asarray(v, dtype=np.int64) - low) * weight
        return codes.tolist()  # type: ignore[no-any-return]

    def decoders(self) -> List[int]:
        """``weight, span, low`` of each column, for the ``?`` of ``decode_sql``."""
        return [n for triple in zip(self.weights, self.spans, self.lows) for n in triple]

    @staticmethod
    def decode_sql(width: int, value: str = "value", params: Optional[Sequence[str]] = None) -> List[str]:
        """SQL for each of ``width`` columns of code ``value``; ``params``: the placeholders of
        ``decoders()`` in order (default ``?``)."""
        p = list(params) if params is not None else ["?"] * (3 * width)
        return [f"{value} / {p[3 * j]} % {p[3 * j + 1]} + {p[3 * j + 2]}" for j in range(width)]


def _array_literal(values: List[Any], kind: str) -> Any:
    """A PostgreSQL array literal (text) for ``values`` when that is cheaper than the driver's dumper.

    ``kind`` is the pandas dtype kind of the source column. Returns ``values`` unchanged otherwise.
    """
    nulls = values.count(None)
    if nulls == len(values):
        return "{" + ",".join(["NULL"] * nulls) + "}"
    if kind in "iufb" and not nulls and _constant(values):
        # a constant column (timestamps, flags of a batch): format the value once
        item = ("t" if values[0] else "f") if kind == "b" else repr(values[0])
        return "{" + ",".join([item] * len(values)) + "}"
    if kind in "iuf" and not nulls:
        return "{" + ",".join(map(repr, values)) + "}"
    if kind in "iuf":
        return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"
    if kind == "b":
        return "{" + ",".join("NULL" if v is None else ("t" if v else "f") for v in values) + "}"
    if not nulls and all(type(v) is str for v in values):
        return _text_array_literal(values)
    if all(type(v) is str or v is None for v in values):
        return "{" + ",".join("NULL" if v is None else _quote_text(v) for v in values) + "}"
    return values


@dataclass(frozen=True)
class _UnnestRows:
    """A batch of rows for ``INSERT ... SELECT FROM unnest(...)``: the columns whose values vary go as
    one array parameter each, those holding one value in every row (a batch's timestamps, flags,
    NULLs) as one plain parameter, so neither side builds or parses an array of copies."""

    columns: Tuple[str, ...]  # the varying columns, then the constant ones
    types: Tuple[str, ...]
    varying: int  # how many of ``columns`` vary
    params: Tuple[Any, ...]  # the constants' values, then the arrays

    @classmethod
    def of(cls, columns: Sequence[str], values: List[List[Any]], kinds: Sequence[str], types: List[str]
           ) -> _UnnestRows:
        # the first column is a key: it varies, and unnest needs one array at least
        constant = [i > 0 and _constant(values[i]) for i in range(len(values))]
        order = [i for i, c in enumerate(constant) if not c] + [i for i, c in enumerate(constant) if c]
        varying = constant.count(False)
        # in the statement's text order: the constants (in the select list), then the arrays
        params = [values[i][0] for i in order[varying:]]
        params += [_array_literal(values[i], kinds[i]) for i in order[:varying]]
        return cls(tuple(columns[i] for i in order), tuple(types[i] for i in order), varying, tuple(params))


def _unnest_upsert(
    con: Connection,
    table: Table,
    rows: _UnnestRows,
    keys: Sequence[str],
    extra: Dict[str, str],
    upsert: bool = True,
) -> None:
    """One ``INSERT ... SELECT * FROM unnest(arrays) [ON CONFLICT]``: one round trip, one statement."""
    cache_key = ("unnest", table, rows.columns, rows.varying, tuple(keys), upsert, *extra.items())
    sql = _SQL_CACHE.get(cache_key)
    if sql is None:
        target = con.dialect.identifier_preparer.format_table(table)
        cols = ", ".join(_quote(con, c) for c in [*rows.columns, *extra])
        arrays = ", ".join(f"%s::{t}[]" for t in rows.types[: rows.varying])
        constants = [f"%s::{t}" for t in rows.types[rows.varying :]]
        selected = ", ".join(["u.*", *constants, *extra.values()])
        sql = f"INSERT INTO {target} ({cols}) SELECT {selected} FROM unnest({arrays}) AS u"
        if upsert:
            sql += _conflict_clause(con, [*rows.columns, *extra], keys)
        _SQL_CACHE[cache_key] = sql
    con.exec_driver_sql(sql, rows.params)


UNIQUE_VIOLATION = "23505"
_SAVEPOINT = "datapipe_new_rows"


def _inserted(con: Connection, table: Table, rows: _UnnestRows, keys: Sequence[str], extra: Dict[str, str]) -> bool:
    """Plain ``INSERT`` of rows believed new, in a savepoint; False (nothing written) when a key exists.

    The savepoint is plain SQL, not ``Connection.begin_nested()``: it lives for one statement, and
    SQLAlchemy's nested-transaction bookkeeping cost more client time than the statement's own.
    """
    return _in_savepoint(con, lambda: _unnest_upsert(con, table, rows, keys, extra, upsert=False))


def _in_savepoint(con: Connection, insert: Callable[[], Any]) -> bool:
    """Run ``insert`` (a plain ``INSERT``) in a savepoint; False, with the savepoint rolled back, when
    it violates a unique constraint (PostgreSQL ``23505``); other errors are raised.

    In pipeline mode no savepoint is taken and True is returned: a statement's error surfaces only later
    (``DBConn.send_pipelined``), when the unit of work is rolled back whole and written again the
    ordinary way (``datatable.write_tables``), so a savepoint could not catch it; it would only cost
    two statements and a subtransaction.
    """
    if _pipelined(con):
        insert()
        return True
    con.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
    try:
        insert()
    except IntegrityError as e:
        con.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        con.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        if getattr(e.orig, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
        return False
    con.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return True


def _pipelined(con: Connection) -> bool:
    """Whether ``con`` is a psycopg 3 connection in pipeline mode (``DBConn.send_pipelined``)."""
    pgconn = getattr(con.connection.driver_connection, "pgconn", None)
    return pgconn is not None and bool(pgconn.pipeline_status)


def bulk_upsert(
    con: Connection, table: Table, df: pd.DataFrame, columns: Sequence[str], keys: Sequence[str], new: bool = False
) -> None:
    """Insert the rows of ``df[columns]`` into ``table``, updating rows whose ``keys`` already exist
    (``new``: see the module docstring)."""
    if len(df) == 0:
        return
    kinds = [df[c].dtype.kind for c in columns]
    bulk_upsert_values(con, table, columns, [_values(df[c]) for c in columns], kinds, keys, new=new)


def value_kind(value: Any) -> str:
    """The numpy dtype kind a constant column of ``value`` would have (``O`` for None, str, others)."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        return "i"
    if isinstance(value, float):
        return "f"
    return "O"


def _as_unnest(
    con: Connection, table: Table, columns: Sequence[str], values: List[List[Any]], kinds: Sequence[str]
) -> Optional[_UnnestRows]:
    """The rows for one ``INSERT ... SELECT FROM unnest`` (PostgreSQL through psycopg 3, at least
    ``UNNEST_MIN_ROWS`` rows, column types that unnest); None: write them row by row."""
    if not _is_psycopg3(con) or len(values[0]) < UNNEST_MIN_ROWS:
        return None
    types = _unnest_types(con, table, columns)
    return None if types is None else _UnnestRows.of(columns, values, kinds, types)


def bulk_upsert_values(
    con: Connection,
    table: Table,
    columns: Sequence[str],
    values: List[List[Any]],
    kinds: Sequence[str],
    keys: Sequence[str],
    extra: Optional[Dict[str, str]] = None,
    new: bool = False,
) -> None:
    """``bulk_upsert`` from plain per-column value lists (None for NULL); ``kinds`` are numpy dtype kinds.

    ``extra``: further columns given as SQL expressions (see ``upsert_sql``). ``new``: the rows' keys
    are believed absent (see the module docstring).
    """
    if not values or len(values[0]) == 0:
        return
    extra = extra or {}
    values = [_processed(con, table, c, k, v) for c, k, v in zip(columns, kinds, values)]
    unnest = _as_unnest(con, table, columns, values, kinds)
    if unnest is not None:
        if not (new and _inserted(con, table, unnest, keys, extra)):
            _unnest_upsert(con, table, unnest, keys, extra)
        return
    if con.dialect.name == "sqlite" and _json_each_upsert(con, table, columns, values, keys, extra):
        return
    sql = upsert_sql(con, table, columns, keys, extra)
    con.exec_driver_sql(sql, list(zip(*values)))  # type: ignore[arg-type]


def _json_each_upsert(
    con: Connection, table: Table, columns: Sequence[str], values: List[List[Any]], keys: Sequence[str],
    extra: Dict[str, str],
) -> bool:
    """SQLite, rows that differ only in their key columns (a step marking keys processed):
    ``INSERT ... SELECT value, ?, ... FROM json_each(?)``, the keys as one JSON parameter (several
    integer key columns as ``IntCodes``) and every other column as one plain parameter. About six
    times faster than ``executemany`` for 1 000 rows of one key column. False (nothing written) when
    the rows do not have that shape."""
    n_keys = len(keys)
    if list(columns[:n_keys]) != list(keys) or len(values[0]) < UNNEST_MIN_ROWS:
        return False
    if not all(map(_constant, values[n_keys:])):
        return False
    if n_keys == 1:
        if not (_one_key_type(values[0]) and _json_exact(values[0])):
            return False
        selected, params = ["value"], []
        keys_json = json.dumps(values[0])
    else:
        codes = IntCodes.plan(values[:n_keys])
        if codes is None:
            return False
        selected, params = IntCodes.decode_sql(n_keys), codes.decoders()
        keys_json = json.dumps(codes.encode(values[:n_keys]))
    cache_key = ("json_each", table, tuple(columns), tuple(keys), *extra.items())
    sql = _SQL_CACHE.get(cache_key)
    if sql is None:
        target = con.dialect.identifier_preparer.format_table(table)
        cols = ", ".join(_quote(con, c) for c in [*columns, *extra])
        picked = ", ".join([*selected, *["?"] * (len(columns) - n_keys), *extra.values()])
        # "WHERE true": without it SQLite would read ON CONFLICT as part of the join
        sql = f"INSERT INTO {target} ({cols}) SELECT {picked} FROM json_each(?) WHERE true"
        sql += _conflict_clause(con, [*columns, *extra], keys)
        _SQL_CACHE[cache_key] = sql
    con.exec_driver_sql(sql, (*params, *[vals[0] for vals in values[n_keys:]], keys_json))
    return True


def _json_exact(keys: List[Any]) -> bool:
    """Whether ``json_each`` gives back exactly these ints or strs (64-bit ints, text without NUL)."""
    if type(keys[0]) is int:
        return -(2**63) <= min(keys) and max(keys) < 2**63
    return "\x00" not in "".join(keys)


def insert_new_values(
    con: Connection,
    table: Table,
    columns: Sequence[str],
    values: List[List[Any]],
    kinds: Sequence[str],
    keys: Sequence[str],
    extra: Optional[Dict[str, str]] = None,
) -> bool:
    """Insert rows believed new (``bulk_upsert_values`` arguments); True when every key was new.

    False when some key exists; then nothing was written (the insert ran in a savepoint and was rolled
    back), and the caller writes the rows the exact way, reading what is stored first.
    """
    if not values or len(values[0]) == 0:
        return True
    extra = extra or {}
    values = [_processed(con, table, c, k, v) for c, k, v in zip(columns, kinds, values)]
    unnest = _as_unnest(con, table, columns, values, kinds)
    if unnest is not None:
        return _inserted(con, table, unnest, keys, extra)
    rows = list(zip(*values))
    if _is_psycopg3(con):  # a plain INSERT: the row count is unknown in pipeline mode, an error is not
        plain = upsert_sql(con, table, columns, keys, extra, "error")
        return _in_savepoint(con, lambda: con.exec_driver_sql(plain, rows))  # type: ignore[arg-type]
    con.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
    inserted = con.exec_driver_sql(upsert_sql(con, table, columns, keys, extra, "nothing"), rows).rowcount  # type: ignore[arg-type]
    if inserted != len(rows):  # ``DO NOTHING`` skipped a row whose key exists
        con.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
    con.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return bool(inserted == len(rows))


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
        # PostgreSQL gets a typed array parameter (not text cast in SQL): the planner then sees a
        # constant array and hashes it, and keeps using the primary-key index as the table grows.
        # The array travels as its text literal with an untyped (unknown) OID and the statement's
        # ``::type[]`` cast types the parameter itself, so the server sees the same typed array
        # while the client skips the driver's per-element array dumper.
        if dialect.name == "sqlite":
            return json.dumps(value)
        return key_array_literal(value)

    def bind_processor(self, dialect: Any) -> Any:
        # The ARRAY impl's own processor would turn the literal back into a list of characters.
        if dialect.name == "postgresql":
            return key_array_literal
        return super().bind_processor(dialect)


class _KeyArray(TypeDecorator):  # type: ignore[type-arg]
    """One column of a composite key list on PostgreSQL, bound as its array text literal."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: Any) -> None:
        super().__init__()
        self.item_type = item_type

    def load_dialect_impl(self, dialect: Any) -> Any:
        from sqlalchemy.dialects.postgresql import ARRAY

        return dialect.type_descriptor(ARRAY(self.item_type))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return key_array_literal(value)

    def bind_processor(self, dialect: Any) -> Any:
        return key_array_literal  # the literal goes to the driver as it is (see KeyList)


class KeyIn(ColumnElement[bool]):
    """``column IN (values)`` with the values in one parameter (see ``KeyList``).

    Compiles to ``col IN (SELECT value FROM json_each(?))`` on SQLite and ``col = ANY(%s)`` on
    PostgreSQL, so the statement text and its cached compilation do not depend on the number of keys.
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: no "= 1" appended on dialects without native booleans
    _traverse_internals = traverse(("column", "clauseelement"), ("values", "clauseelement"))

    def __init__(self, column: Any, values: List[Any]) -> None:
        self.column = column
        self.values = bindparam(None, values, type_=KeyList(column.type), unique=True)


def _unsupported(element: Any, compiler: Any, **kw: Any) -> str:
    # A cached compilation could not re-bind values created here, so there is no generic fallback.
    raise StoreError(f"datapipe key filters support SQLite and PostgreSQL, not {compiler.dialect.name}")


compiles(KeyIn)(_unsupported)


@compiles(KeyIn, "sqlite")
def _key_in_sqlite(element: KeyIn, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    return f"{col} IN (SELECT value FROM json_each({compiler.process(element.values, **kw)}))"


@compiles(KeyIn, "postgresql")
def _key_in_postgresql(element: KeyIn, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.values, **kw)})"


def _one_key_type(values: Sequence[Any]) -> bool:
    """True when ``values`` is non-empty and all ints or all strs (exact types; bools are not ints here)."""
    types = set(map(type, values))
    return types == {int} or types == {str}


def key_in(column: Any, values: List[Any]) -> ColumnElement[bool]:
    """``column IN values`` as one bound parameter when the values are all ints or all strs, else a plain IN."""
    if _one_key_type(values):
        return KeyIn(column, values)
    return column.in_(values)  # type: ignore[no-any-return]


class KeyTupleIn(ColumnElement[bool]):
    """``(c1, c2, ...) IN (rows)`` with the rows bound as one JSON parameter (SQLite) or one typed array
    per column (PostgreSQL, ``unnest``), so the statement does not grow with the number of keys."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True
    _traverse_internals = traverse(
        ("columns", "clauseelement_list"), ("json_rows", "clauseelement"), ("arrays", "clauseelement_list")
    )

    def __init__(self, columns: Sequence[Any], values: Sequence[List[Any]]) -> None:
        self.columns = list(columns)
        self.json_rows = bindparam(None, [list(v) for v in values], type_=_JsonRows(), unique=True)
        self.arrays = [bindparam(None, list(v), type_=_KeyArray(c.type), unique=True) for c, v in zip(columns, values)]


class _JsonRows(TypeDecorator):  # type: ignore[type-arg]
    """Per-column value lists bound as a JSON array of rows."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return json.dumps(list(zip(*value)))  # JSON writes the row tuples as arrays


compiles(KeyTupleIn)(_unsupported)


@compiles(KeyTupleIn, "sqlite")
def _key_tuple_in_sqlite(element: KeyTupleIn, compiler: Any, **kw: Any) -> str:
    cols = ", ".join(compiler.process(c, **kw) for c in element.columns)
    parts = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(element.columns)))
    return f"({cols}) IN (SELECT {parts} FROM json_each({compiler.process(element.json_rows, **kw)}))"


@compiles(KeyTupleIn, "postgresql")
def _key_tuple_in_postgresql(element: KeyTupleIn, compiler: Any, **kw: Any) -> str:
    cols = ", ".join(compiler.process(c, **kw) for c in element.columns)
    arrays = ", ".join(compiler.process(a, **kw) for a in element.arrays)
    return f"({cols}) IN (SELECT * FROM unnest({arrays}))"


class KeyCodesIn(KeyTupleIn):
    """``KeyTupleIn`` of integer columns: on SQLite the rows go as one JSON array of ``IntCodes``,
    decoded in SQL with three bound integers per column (so the statement text stays the same)."""

    inherit_cache = True
    _traverse_internals = traverse(
        ("columns", "clauseelement_list"), ("codes", "clauseelement"), ("decoders", "clauseelement_list"),
        ("arrays", "clauseelement_list"),
    )

    def __init__(self, columns: Sequence[Any], values: Sequence[List[Any]], codes: IntCodes) -> None:
        self.columns = list(columns)
        self.codes = bindparam(None, (codes, values), type_=_JsonCodes(), unique=True)
        self.decoders = [bindparam(None, n, type_=Integer(), unique=True) for n in codes.decoders()]
        self.arrays = [bindparam(None, list(v), type_=_KeyArray(c.type), unique=True) for c, v in zip(columns, values)]


class _JsonCodes(TypeDecorator):  # type: ignore[type-arg]
    """``(IntCodes, per-column value lists)`` bound as the JSON array of the rows' codes."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        codes, values = value
        return json.dumps(codes.encode(values))


compiles(KeyCodesIn)(_unsupported)
compiles(KeyCodesIn, "postgresql")(_key_tuple_in_postgresql)


@compiles(KeyCodesIn, "sqlite")
def _key_codes_in_sqlite(element: KeyCodesIn, compiler: Any, **kw: Any) -> str:
    cols = ", ".join(compiler.process(c, **kw) for c in element.columns)
    parts = IntCodes.decode_sql(len(element.columns), params=[compiler.process(d, **kw) for d in element.decoders])
    return f"({cols}) IN (SELECT {', '.join(parts)} FROM json_each({compiler.process(element.codes, **kw)}))"


def key_tuple_in(columns: Sequence[Any], values: Sequence[List[Any]]) -> ColumnElement[bool]:
    """``(columns) IN rows`` for per-column value lists; one parameter per column when all are ints or strs."""
    if values and len(values[0]) and all(_one_key_type(vals) for vals in values):
        codes = IntCodes.plan(values)
        return KeyTupleIn(columns, values) if codes is None else KeyCodesIn(columns, values, codes)
    from sqlalchemy import tuple_

    return tuple_(*columns).in_(list(zip(*values)))  # type: ignore[no-any-return]
