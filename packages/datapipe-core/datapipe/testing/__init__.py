"""Test support for pipelines and for store authors, in one place.

``datapipe.testing.kit``
    the store conformance kit, ``AbstractBaseStoreTests``: subclass it, provide a ``store_maker``
    fixture, and get the behavioural suite every store in this repository passes.
``datapipe.testing.asserts``
    ``assert_df_equal``, ``assert_datatable_equal``, ``assert_ts_contains``, ``assert_idx_equal``,
    ``assert_idx_no_duplicates``.
``datapipe.testing.fixtures``
    opt-in pytest fixtures: ``postgres_server_url``, ``postgres_url``, ``dbconn`` (SQLite and
    PostgreSQL), ``redis_url``. Enable them in your top-level ``conftest.py`` with
    ``pytest_plugins = ["datapipe.testing.fixtures"]``; nothing is added to a pytest run otherwise.
``datapipe.testing.services``
    the throwaway PostgreSQL and Redis servers behind those fixtures (started from installed
    binaries; ``POSTGRES_URL`` / ``REDIS_URL`` use existing servers instead).

The kit needs pytest: ``pip install 'datapipe-core[testing]'``. The 0.15 paths
``datapipe.tests.util`` and ``datapipe.store.tests.abstract`` re-export from here.
"""

from datapipe.testing.asserts import (
    assert_datatable_equal,
    assert_df_equal,
    assert_idx_equal,
    assert_idx_no_duplicates,
    assert_ts_contains,
)

__all__ = [
    "AbstractBaseStoreTests",
    "assert_datatable_equal",
    "assert_df_equal",
    "assert_idx_equal",
    "assert_idx_no_duplicates",
    "assert_ts_contains",
]


def __getattr__(name: str) -> object:
    if name == "AbstractBaseStoreTests":  # imported lazily: the kit needs pytest
        from datapipe.testing.kit import AbstractBaseStoreTests

        return AbstractBaseStoreTests
    raise AttributeError(f"module 'datapipe.testing' has no attribute {name!r}")
