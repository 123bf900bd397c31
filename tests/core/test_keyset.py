"""``datapipe.keyset``: set operations on key frames agree with plain pandas for every kind of key.

Keys of several integer columns take the ``int_codes`` path; other keys (strings, uint64, value ranges
too wide for 63 bits) the ``MultiIndex`` one. Both must give pandas' answers.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd
import pytest

from datapipe import keyset

KEYS = ["a", "b"]
BIG = np.iinfo(np.int64).max


def _frames(kind: str, rng: np.random.Generator) -> Dict[str, pd.DataFrame]:
    """A haystack with unique keys, needles (some in it, some not, repeats allowed) and other rows."""
    n = 60
    if kind == "int":
        a, b = rng.integers(-5, 5, n), rng.integers(0, 8, n)
    elif kind == "int32_int64":
        a, b = rng.integers(-5, 5, n).astype(np.int32), rng.integers(0, 8, n)
    elif kind == "extremes":  # b near int64's end: the codes wrap in between and must still be exact
        a, b = rng.integers(-3, 3, n), rng.choice([BIG, BIG - 1, BIG - 3], n)
    elif kind == "wide":  # the ranges' product exceeds 63 bits: MultiIndex path
        a, b = rng.choice([-BIG, 0, BIG], n), rng.choice([-BIG, 5, BIG], n)
    elif kind == "uint64":
        a, b = rng.integers(0, 5, n).astype(np.uint64), rng.integers(0, 5, n).astype(np.uint64)
    else:  # strings
        a, b = rng.integers(0, 5, n), rng.choice(["x", "y", "z", "w"], n)
    allrows = pd.DataFrame({"a": a, "b": b})
    unique = allrows.drop_duplicates(ignore_index=True)
    haystack = unique.iloc[: len(unique) // 2].sample(frac=1, random_state=1).reset_index(drop=True)
    return {"all": allrows, "haystack": haystack, "needles": allrows.iloc[::-1].reset_index(drop=True)}


def _tuples(df: pd.DataFrame) -> List[tuple]:
    return list(zip(df["a"].tolist(), df["b"].tolist()))


@pytest.mark.parametrize("kind", ["int", "int32_int64", "extremes", "wide", "uint64", "str"])
@pytest.mark.parametrize("seed", range(5))
def test_operations_match_pandas(kind: str, seed: int) -> None:
    f = _frames(kind, np.random.default_rng(seed))
    hay, needles = f["haystack"], f["needles"]
    where = {t: i for i, t in enumerate(_tuples(hay))}
    assert keyset.positions(needles, hay, KEYS).tolist() == [where.get(t, -1) for t in _tuples(needles)]
    assert keyset.isin(needles, hay, KEYS).tolist() == [t in where for t in _tuples(needles)]
    pd.testing.assert_frame_equal(keyset.unique(f["all"]), f["all"].drop_duplicates())
    pd.testing.assert_frame_equal(keyset.sort(f["all"], KEYS),
                                  f["all"].sort_values(KEYS, kind="stable", ignore_index=True))
    ordered = f["all"].sort_values(KEYS, ignore_index=True)
    assert keyset.sort(ordered, KEYS) is ordered


def test_codes_are_used_for_integer_keys_only() -> None:
    ints = pd.DataFrame({"a": [3, -1], "b": [0, 7]})
    codes = keyset.int_codes([ints, ints.iloc[:1]], KEYS)
    assert codes is not None and codes[0][0] == codes[1][0] and codes[0][1] < codes[0][0]
    assert keyset.int_codes([pd.DataFrame({"a": [1], "b": ["x"]})], KEYS) is None
    assert keyset.int_codes([pd.DataFrame({"a": [-BIG, BIG], "b": [0, 1]})], KEYS) is None  # 65 bits
    assert keyset.int_codes([pd.DataFrame({"a": np.array([1], dtype=np.uint64), "b": [0]})], KEYS) is None


def test_empty_frames() -> None:
    empty = pd.DataFrame({"a": np.array([], dtype=np.int64), "b": np.array([], dtype=np.int64)})
    some = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    assert keyset.positions(some, empty, KEYS).tolist() == [-1, -1]
    assert keyset.positions(empty, some, KEYS).tolist() == []
    assert keyset.isin(empty, some, KEYS).tolist() == []
    assert keyset.unique(empty) is empty


@pytest.mark.parametrize("values", [[3, 1, 3, 2, 1], ["b", "a", "b", None, None], [1.5, 1.5, 2.0], [5, 4, 3]])
def test_unique_of_one_column_keeps_first_occurrences_and_labels(values: list) -> None:
    df = pd.DataFrame({"k": values}, index=[10 * i for i in range(len(values))])
    got = keyset.unique(df)
    pd.testing.assert_frame_equal(got, df.drop_duplicates())
    if df["k"].is_unique:
        assert got is df
