"""Row hashes (``datapipe.hashing.hash_rows``) are pandas' frame hash of the data columns, value for value.

Existing metadata databases hold these hashes: a different value for the same content would report
every row as changed after an upgrade, so the fast path is compared with the definition itself.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from datapipe.hashing import hash_rows

N = 150  # more than the 64 rows the previous implementation sampled


def _column(kind: str) -> pd.Series:
    rng = np.random.default_rng(7)
    columns = {
        "int": lambda: pd.Series(rng.integers(-5, 5, N)),
        "float with NaN": lambda: pd.Series(np.where(rng.random(N) < 0.3, np.nan, rng.random(N))),
        "bool": lambda: pd.Series(rng.random(N) < 0.5),
        "str": lambda: pd.Series([f"v{i % 7}" for i in range(N)]),
        "str with None": lambda: pd.Series([None if i % 5 == 0 else f"v{i % 7}" for i in range(N)]),
        "object str": lambda: pd.Series([f"ü{i % 7}" for i in range(N)], dtype=object),
        "object str with None": lambda: pd.Series([None if i % 5 == 0 else f"v{i}" for i in range(N)], dtype=object),
        "object int and str": lambda: pd.Series([i if i % 2 else f"v{i}" for i in range(N)], dtype=object),
        "datetime": lambda: pd.Series(pd.date_range("2020-01-01", periods=N, freq="h")),
        "datetime tz with NaT": lambda: pd.Series(
            pd.date_range("2020-01-01", periods=N, freq="h", tz="UTC").where(rng.random(N) < 0.8)),
        "Int64 with NA": lambda: pd.Series(pd.array([None if i % 4 == 0 else i for i in range(N)], dtype="Int64")),
        "categorical": lambda: pd.Series(pd.Categorical([f"c{i % 3}" for i in range(N)])),
    }
    return columns[kind]()


KINDS = [
    "int", "float with NaN", "bool", "str", "str with None", "object str", "object str with None",
    "object int and str", "datetime", "datetime tz with NaT", "Int64 with NA", "categorical",
]


def _reference(df: pd.DataFrame, keys: list) -> pd.Series:
    data = df[sorted(c for c in df.columns if c not in keys)]
    return pd.Series(pd.util.hash_pandas_object(data, index=False).to_numpy().view(np.int64), index=df.index)


@pytest.mark.parametrize("kind", KINDS)
def test_hash_rows_is_pandas_frame_hash_of_one_column(kind):
    df = pd.DataFrame({"id": range(N), "v": _column(kind)})
    pd.testing.assert_series_equal(hash_rows(df, ["id"]), _reference(df, ["id"]))


def test_hash_rows_is_pandas_frame_hash_of_many_columns_in_name_order():
    df = pd.DataFrame({"id": range(N), **{f"c{i:02d}": _column(kind) for i, kind in enumerate(KINDS)}})
    shuffled = df[list(reversed(df.columns))]
    want = _reference(df, ["id"])
    pd.testing.assert_series_equal(hash_rows(df, ["id"]), want)
    pd.testing.assert_series_equal(hash_rows(shuffled, ["id"]), want)


def test_hash_rows_keeps_the_index_and_handles_no_rows_and_no_data_columns():
    df = pd.DataFrame({"id": [3, 4], "v": ["a", "b"]}, index=[10, 20])
    assert list(hash_rows(df, ["id"]).index) == [10, 20]
    assert hash_rows(df.iloc[0:0], ["id"]).dtype == np.int64 and len(hash_rows(df.iloc[0:0], ["id"])) == 0
    assert hash_rows(df[["id"]], ["id"]).tolist() == [0, 0]


def test_unhashable_values_are_hashed_by_their_stable_text():
    """Lists, dicts, arrays and bytes: the hash of their text, the same for the same content in any batch."""
    lists = pd.Series([[i, "a"] for i in range(N)], dtype=object)
    df = pd.DataFrame({"id": range(N), "l": lists, "s": [f"v{i}" for i in range(N)]})
    as_text = df.assign(l=lists.map(lambda v: json.dumps(v, sort_keys=True)))
    pd.testing.assert_series_equal(hash_rows(df, ["id"]), _reference(as_text, ["id"]))
    # a row hashes the same alone as among others
    assert hash_rows(df.iloc[[100]], ["id"]).iloc[0] == hash_rows(df, ["id"]).iloc[100]
    arrays = pd.DataFrame({"id": [1, 2], "a": [np.arange(3), np.arange(3)], "b": [b"x", b"x"], "d": [{"k": 1}] * 2})
    first, second = hash_rows(arrays, ["id"])
    assert first == second
    changed = arrays.assign(a=[np.arange(3), np.arange(4)])
    assert hash_rows(changed, ["id"]).nunique() == 2


def test_dicts_are_hashed_by_their_json_text():
    df = pd.DataFrame({"id": [1, 2], "d": [{"k": 1, "j": [2]}, {"j": [2], "k": 1}], "x": [1.5, 2.5]})
    as_text = df.assign(d=df["d"].map(lambda v: json.dumps(v, sort_keys=True)))
    pd.testing.assert_series_equal(hash_rows(df, ["id"]), _reference(as_text, ["id"]))
