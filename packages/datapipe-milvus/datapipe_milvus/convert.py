"""Conversions between DataFrame columns and Milvus field values.

Every column is converted according to its SQLAlchemy type, so what is written reads back
with the same meaning: integers (INT64), floats (DOUBLE), booleans (BOOL) and strings (VARCHAR)
as they are, datetimes as ISO-8601 strings (VARCHAR), bytes as base64 (VARCHAR), JSON/array
columns as JSON.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import JSON, Boolean, Column, Date, DateTime, Float, Integer, LargeBinary, Numeric, String

# Hidden primary key of non-integer keys: uuid5(KEY_NAMESPACE, compact JSON of the key tuple).
KEY_NAMESPACE = uuid.UUID("7d0c3f52-8a4e-5b1f-9c6d-2e8f4a1b3c5d")


def key_strings(key_values: Sequence[List[Any]]) -> List[str]:
    """The hidden VARCHAR primary key for each row: ``uuid5`` of the compact JSON key tuple.

    A uuid (hex and dashes only) rather than the key text, because pymilvus builds filter
    expressions from primary-key values without escaping quotes and backslashes.
    """
    return [
        str(uuid.uuid5(KEY_NAMESPACE, json.dumps(list(row), separators=(",", ":"), ensure_ascii=False)))
        for row in zip(*key_values)
    ]


def column_kind(col: Column) -> str:
    """One of ``int``, ``float``, ``bool``, ``str``, ``datetime``, ``bytes``, ``json`` for a column."""
    t = col.type
    if isinstance(t, Boolean):
        return "bool"
    if isinstance(t, Integer):
        return "int"
    if isinstance(t, (Float, Numeric)):
        return "float"
    if isinstance(t, (DateTime, Date)):
        return "datetime"
    if isinstance(t, LargeBinary):
        return "bytes"
    if isinstance(t, String):
        return "str"
    if isinstance(t, JSON):
        return "json"
    return "json"


def _objects(series: pd.Series) -> List[Any]:
    """Values as Python objects, NaN/NaT/NA as None."""
    obj = series.astype(object)
    return obj.where(series.notna(), None).tolist()


def _plain(value: Any) -> Any:
    """JSON-compatible value for a JSON/array column cell (numpy arrays and scalars unwrapped)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_field_values(series: pd.Series, kind: str) -> List[Any]:
    """JSON-compatible field values of ``series`` (a column of type ``kind``), None for NULL."""
    if kind == "int":
        if series.dtype.kind in "iu":
            return series.tolist()
        return [None if v is None else int(v) for v in _objects(series)]
    if kind == "float":
        values = pd.to_numeric(series, errors="raise").astype("float64")
        return _objects(values)
    if kind == "bool":
        if series.dtype.kind == "b":
            return series.tolist()
        return [None if v is None else bool(v) for v in _objects(series)]
    if kind == "datetime":
        ts = pd.to_datetime(series)
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        return _objects(ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    if kind == "bytes":
        return [None if v is None else base64.b64encode(bytes(v)).decode("ascii") for v in _objects(series)]
    if kind == "str":
        return [None if v is None else str(v) for v in _objects(series)]
    return [None if v is None else _plain(v) for v in series.astype(object).tolist()]


def from_field_values(values: Sequence[Any], kind: str) -> pd.Series:
    """A Series of the column's natural dtype from field values (inverse of ``to_field_values``)."""
    has_null = any(v is None for v in values)
    if kind == "int":
        return pd.Series(values, dtype="Int64" if has_null else "int64")
    if kind == "float":
        return pd.Series([np.nan if v is None else v for v in values], dtype="float64")
    if kind == "bool":
        return pd.Series(values, dtype="boolean" if has_null else "bool")
    if kind == "datetime":
        return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601"), dtype="datetime64[ns]")
    if kind == "bytes":
        return pd.Series([None if v is None else base64.b64decode(v) for v in values], dtype=object)
    return pd.Series(list(values), dtype=object)


def empty_series(kind: str) -> pd.Series:
    dtypes = {"int": "int64", "float": "float64", "bool": "bool", "datetime": "datetime64[ns]"}
    return pd.Series([], dtype=dtypes.get(kind, object))


def vectors_to_lists(series: pd.Series, what: str, size: Optional[int]) -> List[List[float]]:
    """Vectors of ``series`` (lists or numpy arrays of floats) as lists, checking nulls and dimension."""
    values = series.tolist()
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise ValueError(f"{what}: embedding column {series.name!r} contains null vectors")
    try:
        matrix = np.stack([np.asarray(v, dtype="float64") for v in values])
    except ValueError as e:
        raise ValueError(f"{what}: embedding column {series.name!r} has vectors of different lengths ({e})") from e
    if matrix.ndim != 2:
        raise ValueError(f"{what}: embedding column {series.name!r} must hold 1-d vectors, got shape {matrix.shape}")
    if size is not None and matrix.shape[1] != size:
        raise ValueError(
            f"{what}: embedding column {series.name!r} has vectors of dimension {matrix.shape[1]}, "
            f"the collection expects {size}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what}: embedding column {series.name!r} contains NaN or infinite values")
    result: List[List[float]] = matrix.tolist()
    return result


def records_frame(
    rows: Sequence[Dict[str, Any]],
    vectors: Optional[Sequence[Any]],
    kinds: Dict[str, str],
    embedding_field: Optional[str],
) -> pd.DataFrame:
    """A DataFrame with every column of ``kinds`` (schema order) from Milvus rows and vectors."""
    data: Dict[str, pd.Series] = {}
    for name, kind in kinds.items():
        if name == embedding_field:
            data[name] = pd.Series(list(vectors or []), dtype=object)
        elif not rows:
            data[name] = empty_series(kind)
        else:
            data[name] = from_field_values([r.get(name) for r in rows], kind)
    return pd.DataFrame(data)
