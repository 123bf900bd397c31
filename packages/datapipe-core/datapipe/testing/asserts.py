"""Assertions for tests of pipelines and stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Union

import pandas as pd

from datapipe.types import IndexDF

if TYPE_CHECKING:
    from datapipe.datatable import DataTable
    from datapipe.store.table_store import TableStore


def _normalise(df: pd.DataFrame, index_cols: List[str]) -> pd.DataFrame:
    df = df.set_index(index_cols).sort_index()
    return df[sorted(df.columns)]


def assert_df_equal(a: pd.DataFrame, b: pd.DataFrame, index_cols: Optional[List[str]] = None) -> bool:
    """Frames hold the same rows (by ``index_cols``, default ``["id"]``) and values; order and dtype width ignored."""
    index_cols = index_cols or ["id"]
    a = _normalise(a, index_cols)
    b = _normalise(b, index_cols)
    assert sorted(a.columns) == sorted(b.columns), f"columns differ: {list(a.columns)} != {list(b.columns)}"
    assert len(a) == len(b), f"row counts differ: {len(a)} != {len(b)}\n{a}\n{b}"
    assert a.index.equals(b.index), f"keys differ:\n{a.index}\n{b.index}"
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_index_type=False, check_like=True)
    return True


def assert_datatable_equal(dt: DataTable, df: pd.DataFrame) -> bool:
    """The table's data equals ``df`` (compared by the table's primary keys)."""
    return assert_df_equal(dt.get_data(), df, index_cols=dt.primary_keys)


def assert_ts_contains(ts: Union[TableStore, DataTable], df: pd.DataFrame) -> bool:
    """Every row of ``df`` is in the store ``ts`` (read by its primary keys), as datapipe 0.15 does it.

    A ``DataTable`` is accepted too (its store is read).
    """
    store = ts.table_store if hasattr(ts, "table_store") else ts
    keys = store.primary_keys
    data = store.read_rows(IndexDF(df[keys]))
    assert_df_equal(data[list(df.columns)] if set(df.columns) <= set(data.columns) else data, df, index_cols=keys)
    return True


def assert_idx_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Two key frames hold the same keys (any order)."""
    cols = sorted(a.columns)
    assert cols == sorted(b.columns), f"key columns differ: {list(a.columns)} != {list(b.columns)}"
    sa = a[cols].sort_values(cols).reset_index(drop=True)
    sb = b[cols].sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(sa, sb, check_dtype=False)
    return True


def assert_idx_no_duplicates(idx: pd.DataFrame, index_cols: Optional[List[str]] = None) -> bool:
    cols = index_cols or list(idx.columns)
    dups = idx[idx.duplicated(cols, keep=False)]
    assert len(dups) == 0, f"duplicate keys:\n{dups}"
    return True
