"""Schema-driven conversion between DataFrame columns and JSON values.

The SQLAlchemy column types of ``data_sql_schema`` decide how a column is written and how
it is read back, so values round-trip with the dtypes ``TableStoreDB`` would return:
integers stay integers (``int64``; ``float64`` when the column has nulls, like the SQL store),
floats stay floats, strings, booleans and nulls round-trip, datetimes are stored as ISO 8601
text and come back as ``datetime64``, dates as ISO text and come back as ``datetime.date``,
binary columns are stored base64-encoded, JSON columns (lists, dicts, numpy arrays) as JSON.

Used by the stores that keep rows as JSON (Redis, Elasticsearch); pure functions, no client library.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated
from typing import Any, List, Mapping, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Column, types

INT, FLOAT, BOOL, STR, DATETIME, DATE, BYTES, ANY = "int", "float", "bool", "str", "datetime", "date", "bytes", "any"

_EMPTY_DTYPES = {INT: "int64", FLOAT: "float64", BOOL: "bool", DATETIME: "datetime64[ns]"}


def column_kind(column: Column) -> str:
    """How a column is encoded, from its SQLAlchemy type (``ANY``: plain JSON values)."""
    t = column.type
    if isinstance(t, types.Boolean):
        return BOOL
    if isinstance(t, types.Integer):
        return INT
    if isinstance(t, (types.Float, types.Numeric)):
        return FLOAT
    if isinstance(t, types.DateTime):
        return DATETIME
    if isinstance(t, types.Date):
        return DATE
    if isinstance(t, (types.String, types.Enum)):
        return STR
    if isinstance(t, types._Binary):
        return BYTES
    return ANY


def _is_tz(column: Column) -> bool:
    return bool(getattr(column.type, "timezone", False))


def _objects(series: pd.Series) -> List[Any]:
    """Values as Python objects, nulls (NaN/NaT/NA/None) as None."""
    return series.astype(object).where(series.notna(), None).tolist()


def _to_datetime(series: pd.Series, utc: bool) -> pd.Series:
    """Timestamps of ``series``: UTC for timezone-aware columns; naive columns get aware values as naive UTC."""
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        stamps = pd.to_datetime(series, utc=utc, format="mixed")
    else:
        stamps = pd.to_datetime(series, utc=utc)
    if not utc and getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return stamps


def encode_column(series: pd.Series, column: Column) -> List[Any]:
    """JSON-ready Python values of ``series`` for ``column``; raises ``ValueError`` on a bad type."""
    kind = column_kind(column)
    try:
        if kind == INT:
            if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
                return series.tolist()
            return _objects(series.astype("Int64"))
        if kind == FLOAT:
            return _objects(series.astype("float64"))
        if kind == BOOL:
            if isinstance(series.dtype, np.dtype) and series.dtype.kind == "b":
                return series.tolist()
            return _objects(series.astype("boolean"))
        if kind == STR:
            if series.dtype.kind not in "OSUT" and not isinstance(series.dtype, pd.StringDtype):
                return _objects(series.astype(str).where(series.notna(), None))
            values = _objects(series)
            if all(isinstance(v, str) or v is None for v in values):
                return values
            return [v if v is None else str(v) for v in values]
        if kind == DATETIME:
            stamps = _to_datetime(series, _is_tz(column))
            return [None if v is None else v.isoformat() for v in _objects(stamps)]
        if kind == DATE:
            stamps = _to_datetime(series, False)
            return [None if v is None else v.date().isoformat() for v in _objects(stamps)]
        if kind == BYTES:
            return [None if v is None else base64.b64encode(bytes(v)).decode("ascii") for v in _objects(series)]
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"column {column.name!r} ({column.type}): cannot store values of dtype {series.dtype}: {e}"
        ) from e
    return _objects(series)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)
dumps = _ENCODER.encode


_BOOL_TEXT = {True: "true", False: "false"}


def json_texts(values: List[Any], column: Column) -> List[str]:
    """The JSON text of each of ``values`` (from :func:`encode_column`), exactly as :data:`dumps` writes it.

    Columns without nulls take C-level fast paths by type; anything else goes through ``dumps``.
    """
    kind = column_kind(column)
    if kind != ANY and None not in values:
        if kind == INT:
            return list(map(int.__repr__, values))
        if kind == FLOAT and all(map(math.isfinite, values)):
            return list(map(float.__repr__, values))
        if kind == BOOL:
            return list(map(_BOOL_TEXT.__getitem__, values))
        if kind in (STR, DATETIME, DATE, BYTES):
            return list(map(encode_basestring, values))
    return list(map(dumps, values))


def json_arrays(columns: Sequence[List[str]]) -> List[str]:
    """Row-wise JSON arrays from per-column JSON texts: ``["1", "2"], ['"a"', '"b"']`` -> ``['[1,"a"]', ...]``."""
    template = "[" + ",".join(["{}"] * len(columns)) + "]"
    return list(map(template.format, *columns))


def json_objects(names: Sequence[str], columns: Sequence[List[str]], n: int) -> List[str]:
    """Row-wise JSON objects ``{"name":value,...}`` from per-column JSON texts (``n`` rows)."""
    if not names:
        return ["{}"] * n
    fields = [dumps(name).replace("{", "{{").replace("}", "}}") + ":{}" for name in names]
    return list(map(("{{" + ",".join(fields) + "}}").format, *columns))


def loads_many(texts: Sequence[str]) -> List[Any]:
    """Parse many JSON texts with one parser call (they are joined into one JSON array)."""
    if not texts:
        return []
    return json.loads("[" + ",".join(texts) + "]")  # type: ignore[no-any-return]


def decode_column(values: Sequence[Any], column: Column) -> pd.Series:
    """A Series of ``column``'s dtype from JSON values (``None`` for null)."""
    kind = column_kind(column)
    if len(values) == 0:
        return pd.Series([], dtype=_EMPTY_DTYPES.get(kind, object))
    if kind == DATETIME:
        return pd.Series(pd.to_datetime(list(values), utc=_is_tz(column), format="ISO8601"))
    if kind == DATE:
        return pd.Series([None if v is None else datetime.date.fromisoformat(v) for v in values], dtype=object)
    if kind == BYTES:
        return pd.Series([None if v is None else base64.b64decode(v) for v in values], dtype=object)
    if kind == FLOAT:
        return pd.Series(values, dtype="float64")
    if kind == ANY:
        return pd.Series(values, dtype=object)
    return pd.Series(values)


def decode_frame(columns: Mapping[str, Sequence[Any]], schema: Sequence[Column]) -> pd.DataFrame:
    """A DataFrame with every column of ``schema`` in schema order; absent columns are null."""
    n = len(next(iter(columns.values()))) if columns else 0
    data = {}
    for col in schema:
        name = str(col.name)
        values = columns.get(name)
        data[name] = decode_column(values if values is not None else [None] * n, col)
    return pd.DataFrame(data)


def empty_frame(schema: Sequence[Column]) -> pd.DataFrame:
    """No rows, every column of ``schema`` with its dtype."""
    return pd.DataFrame({str(c.name): decode_column([], c) for c in schema})
