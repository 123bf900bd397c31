"""Vectorised, process-stable row hashing used to detect changed rows.

A row's hash is ``pandas.util.hash_pandas_object(frame, index=False)`` of its non-key columns in
name order: SipHash of each value with pandas' fixed key, combined across the columns as CPython
combines a tuple's item hashes. The stored metadata of existing databases holds these values, so the
definition must not change; ``hash_rows`` computes exactly it (the tests compare the two on every
kind of column) without building a frame of the data columns, and without categorising string
columns that hold no nulls (pandas factorises them first, which gives the same values at several times
the cost on small batches).
"""

from __future__ import annotations

import json
from typing import Any, List

import numpy as np
import pandas as pd

_SEED = np.uint64(0x345678)
_FINAL = np.uint64(97531)
_MULTIPLIER = 1000003


def _stable_repr(value: Any) -> str:
    """Text for values ``hash_pandas_object`` cannot hash (lists, dicts, arrays, bytes)."""
    if isinstance(value, np.ndarray):
        return f"ndarray:{value.dtype.str}:{value.shape}:{value.tobytes().hex()}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    return json.dumps(value, sort_keys=True, default=str)


def _values_hash(col: pd.Series) -> np.ndarray:
    """``hash_pandas_object(col, index=False)`` as a uint64 array; raises TypeError or ValueError on
    values pandas cannot hash."""
    if isinstance(col.dtype, np.dtype):
        # object columns are categorised, as pandas does: that decides which values fail (dicts)
        return pd.util.hash_array(col.to_numpy(), categorize=col.dtype.kind == "O")
    # extension arrays (strings, nullable integers, categoricals, time zones) hash themselves;
    # categorising gives nulls their own hash, and otherwise only saves hashing repeated values
    return pd.util.hash_array(col.array, categorize=bool(col.isna().any()))


def _column_hash(col: pd.Series) -> np.ndarray:
    """The hash of each value of ``col``; a column holding lists, dicts, arrays or bytes is hashed by
    the values' ``_stable_repr`` text."""
    try:
        return _values_hash(col)
    except (TypeError, ValueError):
        return _values_hash(col.map(_stable_repr))


def hash_rows(df: pd.DataFrame, primary_keys: List[str]) -> pd.Series:
    """Return an int64 hash of each row's non-key content (columns in name order).

    The same value across processes and runs (see the module docstring). Object columns holding
    lists, dicts, arrays or bytes are serialised first.
    """
    data_cols = sorted(c for c in df.columns if c not in primary_keys)
    if not data_cols:
        return pd.Series(np.zeros(len(df), dtype=np.int64), index=df.index)
    out = np.full(len(df), _SEED, dtype=np.uint64)
    multiplier = _MULTIPLIER
    for i, name in enumerate(data_cols):
        out ^= _column_hash(df[name])
        out *= np.uint64(multiplier)
        multiplier += 82520 + 2 * (len(data_cols) - i)
    out += _FINAL
    return pd.Series(out.view(np.int64), index=df.index)
