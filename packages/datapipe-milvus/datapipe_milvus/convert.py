"""Conversions between DataFrame columns and Milvus field values.

Column values go through the core's schema-driven JSON codec (``datapipe.store.json_codec``),
so they read back with the dtypes the SQL store would return: integers (INT64), floats (DOUBLE),
booleans (BOOL) and strings (VARCHAR) as they are, datetimes and dates as ISO-8601 text and bytes
as base64 (VARCHAR), JSON columns as JSON.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Column

from datapipe.store.json_codec import ANY, column_kind, decode_column, dumps, encode_column, loads_many

# Hidden primary key of non-integer keys: uuid5(KEY_NAMESPACE, compact JSON of the key tuple).
KEY_NAMESPACE = uuid.UUID("7d0c3f52-8a4e-5b1f-9c6d-2e8f4a1b3c5d")


def encode_values(series: pd.Series, column: Column) -> List[Any]:
    """JSON-compatible values of ``series`` for ``column`` (None for NULL); raises ``ValueError`` on bad types."""
    values = encode_column(series, column)
    if column_kind(column) == ANY:
        # numpy arrays/scalars or datetimes nested in JSON values become plain JSON
        values = loads_many([dumps(v) for v in values])
    return values


def key_strings(key_values: Sequence[List[Any]]) -> List[str]:
    """The hidden VARCHAR primary key for each row: ``uuid5`` of the compact JSON key tuple.

    A uuid (hex and dashes only) rather than the key text, because pymilvus builds filter
    expressions from primary-key values without escaping quotes and backslashes.
    """
    return [
        str(uuid.uuid5(KEY_NAMESPACE, json.dumps(list(row), separators=(",", ":"), ensure_ascii=False)))
        for row in zip(*key_values)
    ]


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
    rows: Sequence[Dict[str, Any]],
    vectors: Optional[Sequence[Any]],
    columns: Sequence[Column],
    embedding_field: Optional[str],
) -> pd.DataFrame:
    """A DataFrame with every column of ``columns`` (in order) from Milvus rows and vectors."""
    data: Dict[str, pd.Series] = {}
    for col in columns:
        name = str(col.name)
        if name == embedding_field:
            data[name] = pd.Series(list(vectors or []), dtype=object)
        else:
            data[name] = decode_column([r.get(name) for r in rows], col)
    return pd.DataFrame(data)
