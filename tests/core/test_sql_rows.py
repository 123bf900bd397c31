"""Result rows to DataFrames (``datapipe.sql.rows.rows_to_df``): the fast numeric path builds what pandas would."""

from __future__ import annotations

import pandas as pd
import pytest

from datapipe.sql.rows import rows_to_df


@pytest.mark.parametrize(
    "values",
    [
        [1, 2, 3], [1, None], [None, 1], [1.5, 2], [2, 1.5], [1.0, float("nan")], [True, False], [True, 2], [2, True],
        [True, None], [2**70, 1], [1, 2**64], [2**63, 2**63 + 1], [-(2**63), 2**63 - 1], ["a", "b"], [1, "b"],
        [b"x", b"y"], [None, None],
    ],
)
def test_rows_to_df_builds_the_dtypes_pandas_infers_from_the_values(values):
    """Numeric columns are built from numpy arrays (faster); the frame equals pandas' own construction."""
    rows = [(v, i) for i, v in enumerate(values)]
    got = rows_to_df(rows, ["v", "i"])
    want = pd.DataFrame({"v": list(values), "i": list(range(len(values)))})
    pd.testing.assert_frame_equal(got, want)
    assert [type(x) for x in got["v"]] == [type(x) for x in want["v"]]


def test_rows_to_df_without_rows_has_the_columns():
    df = rows_to_df([], ["a", "b"])
    assert list(df.columns) == ["a", "b"] and len(df) == 0


@pytest.mark.parametrize("n_rows, n_cols", [(5, 1), (5, 6), (30_000, 2), (30_000, 6), (1000, 6)])
def test_rows_to_df_transposes_short_and_long_results_alike(n_rows, n_cols):
    """Few columns or many rows go column by column, others through ``zip(*rows)``: the same frame."""
    rows = [tuple(i * 10 + c if c % 2 == 0 else f"r{i}c{c}" for c in range(n_cols)) for i in range(n_rows)]
    columns = [f"c{c}" for c in range(n_cols)]
    pd.testing.assert_frame_equal(rows_to_df(rows, columns), pd.DataFrame(rows, columns=columns))
