"""0.15 path of the test assertions; they live in ``datapipe.testing.asserts``."""

from datapipe.testing.asserts import (
    assert_datatable_equal,
    assert_df_equal,
    assert_idx_equal,
    assert_idx_no_duplicates,
    assert_ts_contains,
)

__all__ = [
    "assert_datatable_equal",
    "assert_df_equal",
    "assert_idx_equal",
    "assert_idx_no_duplicates",
    "assert_ts_contains",
]
