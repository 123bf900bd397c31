"""Helpers shared by the vector-database stores (Qdrant, Milvus): payload values, key ids, vectors.

Pure functions over numpy/pandas; no client library is imported here.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Column

from datapipe.store.json_codec import ANY, column_kind, decode_column, dumps, encode_column, loads_many


def encode_values(series: pd.Series, column: Column) -> List[Any]:
    """JSON-compatible values of ``series`` for ``column`` (None for NULL); raises ``ValueError`` on bad types."""
    values = encode_column(series, column)
    if column_kind(column) == ANY:
        # numpy arrays/scalars or datetimes nested in JSON values become plain JSON
        values = loads_many([dumps(v) for v in values])
    return values


def key_uuid(namespace: uuid.UUID, values: Sequence[Any]) -> str:
    """``uuid5(namespace, compact JSON of the key values)``: a deterministic id for any key tuple."""
    return str(uuid.uuid5(namespace, json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)))


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
    """A DataFrame with every column of ``columns`` (in order) from stored payloads and their vectors."""
    data: Dict[str, pd.Series] = {}
    for col in columns:
        name = str(col.name)
        if name == embedding_field:
            data[name] = pd.Series(list(vectors or []), dtype=object)
        else:
            data[name] = decode_column([p.get(name) for p in payloads], col)
    return pd.DataFrame(data)


def check_frame(df: pd.DataFrame, columns: Sequence[str], keys: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` (prefixed with ``what``) when ``df`` lacks ``columns`` or has null ``keys``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}")
    for key in keys:
        if key in df.columns and df[key].isna().any():
            raise ValueError(f"{what} has null values in primary key column {key!r}")
