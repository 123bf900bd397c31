"""Vectorised, process-stable row hashing used to detect changed rows."""

from __future__ import annotations

import json
from typing import Any, List

import numpy as np
import pandas as pd


def _stable_repr(value: Any) -> str:
    """Text for values ``hash_pandas_object`` cannot hash (lists, dicts, arrays, bytes)."""
    if isinstance(value, np.ndarray):
        return f"ndarray:{value.dtype.str}:{value.shape}:{value.tobytes().hex()}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    return json.dumps(value, sort_keys=True, default=str)


def _hashable_column(col: pd.Series) -> pd.Series:
    if col.dtype != object:
        return col
    try:
        pd.util.hash_pandas_object(col.head(64), index=False)
        return col
    except TypeError:
        return col.map(_stable_repr)


def hash_rows(df: pd.DataFrame, primary_keys: List[str]) -> pd.Series:
    """Return an int64 hash of each row's non-key content (columns in name order).

    Uses ``pandas.util.hash_pandas_object`` (SipHash with a fixed key), so the value is
    the same across processes and runs. Object columns holding lists, dicts or arrays
    are serialised first.
    """
    data_cols = sorted(c for c in df.columns if c not in primary_keys)
    if not data_cols:
        return pd.Series(np.zeros(len(df), dtype=np.int64), index=df.index)
    frame = pd.DataFrame({c: _hashable_column(df[c]) for c in data_cols}, index=df.index)
    try:
        hashed = pd.util.hash_pandas_object(frame, index=False)
    except TypeError:
        frame = frame.apply(lambda s: s.map(_stable_repr) if s.dtype == object else s)
        hashed = pd.util.hash_pandas_object(frame, index=False)
    return pd.Series(hashed.to_numpy().view(np.int64), index=df.index)
