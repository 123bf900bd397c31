"""Conversions between DataFrame columns and Qdrant payloads / point ids.

Column values go through the core's schema-driven JSON codec (``datapipe.store.json_codec``),
so they read back with the dtypes the SQL store would return: integers, floats, booleans and
strings as JSON values, datetimes as ISO-8601 text, bytes as base64, JSON columns as JSON.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Column

from datapipe.store.json_codec import ANY, column_kind, decode_column, dumps, encode_column, loads_many

# Point ids of non-integer keys: uuid5(KEY_NAMESPACE, compact JSON of the key tuple).
KEY_NAMESPACE = uuid.UUID("2f5bd8c4-6c1e-5d6c-9e0a-6b1f3a9d7c21")
_MAX_UINT64 = 2**64 - 1


def encode_values(series: pd.Series, column: Column) -> List[Any]:
    """JSON-compatible values of ``series`` for ``column`` (None for NULL); raises ``ValueError`` on bad types."""
    values = encode_column(series, column)
    if column_kind(column) == ANY:
        # numpy arrays/scalars or datetimes nested in JSON values become plain JSON
        values = loads_many([dumps(v) for v in values])
    return values


def point_ids(key_values: Sequence[List[Any]], int_passthrough: bool) -> List[Any]:
    """Deterministic Qdrant point ids for rows whose encoded key values are ``key_values`` (one list per key).

    With a single integer key (``int_passthrough``), values in ``[0, 2**64)`` are used as they are;
    every other key (strings, composite keys, negative integers, floats, datetimes) maps to
    ``uuid5(KEY_NAMESPACE, json.dumps([v1, v2, ...], separators=(",", ":"), ensure_ascii=False))``
    where the values are the encoded payload values (datetimes as ISO strings).
    """
    if int_passthrough and len(key_values) == 1:
        return [v if 0 <= v <= _MAX_UINT64 else _key_uuid([v]) for v in key_values[0]]
    return [_key_uuid(list(row)) for row in zip(*key_values)]


def _key_uuid(values: List[Any]) -> str:
    return str(uuid.uuid5(KEY_NAMESPACE, json.dumps(values, separators=(",", ":"), ensure_ascii=False)))


def vectors_to_lists(series: pd.Series, what: str, size: Optional[int]) -> List[List[float]]:
    """Vectors of ``series`` (lists or numpy arrays of floats) as lists, checking nulls and dimension."""
    values = series.tolist()
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise ValueError(f"{what}: embedding column {series.name!r} contains null vectors")
    try:
        matrix = np.stack([np.asarray(v, dtype="float64") for v in values])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: embedding column {series.name!r} must hold equal-length float vectors ({e})") from e
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
    payloads: Sequence[Dict[str, Any]],
    vectors: Optional[Sequence[Any]],
    columns: Sequence[Column],
    embedding_field: Optional[str],
) -> pd.DataFrame:
    """A DataFrame with every column of ``columns`` (in order) from point payloads and vectors."""
    data: Dict[str, pd.Series] = {}
    for col in columns:
        name = str(col.name)
        if name == embedding_field:
            data[name] = pd.Series(list(vectors or []), dtype=object)
        else:
            data[name] = decode_column([p.get(name) for p in payloads], col)
    return pd.DataFrame(data)
