"""The store conformance kit on ``TableStoreDB`` (SQLite and PostgreSQL via the ``dbconn`` fixture)."""

import itertools

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String, event

from datapipe.store.database import TableStoreDB
from datapipe.testing import AbstractBaseStoreTests
from datapipe.types import IndexDF

_names = itertools.count()


class TestTableStoreDB(AbstractBaseStoreTests):
    @pytest.fixture
    def store_maker(self, dbconn):
        def make(data_sql_schema):
            return TableStoreDB(dbconn, f"kit_{next(_names)}", data_sql_schema, create_table=True)

        return make


def test_read_with_data_columns_in_idx(dbconn):
    """Passing whole rows as the index filters by the primary keys only."""
    store = TableStoreDB(dbconn, "t", [Column("id", Integer, primary_key=True), Column("a", String)], create_table=True)
    store.insert_rows(pd.DataFrame({"id": [1, 2], "a": ["x", "y"]}))
    got = store.read_rows(IndexDF(pd.DataFrame({"id": [1, 2], "a": ["x", "changed"]})))
    assert sorted(got["id"]) == [1, 2]
    store.delete_rows(IndexDF(pd.DataFrame({"id": [1], "a": ["not x"]})))
    assert store.read_rows()["id"].tolist() == [2]


def test_a_pickled_copy_declares_its_table_without_reading_the_database(dbconn):
    """Unpickling (a Ray worker does it once per step run) trusts the check the original made: no
    statement runs until the copy reads or writes; it then works on the same table."""
    import pickle

    from sqlalchemy.engine import Engine

    from datapipe.sql.connection import is_offline

    store = TableStoreDB(dbconn, "t", [Column("id", Integer, primary_key=True), Column("a", String)], create_table=True)
    store.insert_rows(pd.DataFrame({"id": [1, 2], "a": ["x", "y"]}))
    blob = pickle.dumps(store)
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        clone = pickle.loads(blob)
        assert statements == [] and not is_offline()
        clone.insert_rows(pd.DataFrame({"id": [3], "a": ["z"]}))
        assert statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert sorted(store.read_rows()["id"]) == [1, 2, 3]
    assert clone.dbconn is not dbconn and clone.data_table.name == "t"


def test_describe_masks_password(postgres_url):
    from datapipe.store.database import DBConn

    url = postgres_url.replace("postgres@", "postgres:secret@") if "@" in postgres_url else postgres_url
    store = TableStoreDB(DBConn(url), "t", [Column("id", Integer, primary_key=True)])
    assert "secret" not in store.describe()


@pytest.mark.parametrize(
    "wanted",
    [
        [3, 4, 5, 6],  # a whole range: read as a range
        [3, 5, 7, 9, 11],  # every other key: a range, less the rows not asked for
        [9, 3, 3, 5],  # unsorted, a duplicate
        [0, 40, 80],  # sparse: read as a list
        [-2, -1, 0],  # below every stored key
        [1000, 1001],  # nothing stored
    ],
)
def test_read_rows_by_integer_keys_returns_exactly_those_rows(dbconn, wanted):
    """Dense integer keys are read as one key range (``keyset.dense_int_range``) and filtered; the rows are
    the same as for a list of keys."""
    store = TableStoreDB(dbconn, "t", [Column("id", Integer, primary_key=True), Column("a", String)], create_table=True)
    stored = pd.DataFrame({"id": range(100), "a": [f"v{i}" for i in range(100)]})
    store.insert_rows(stored)
    statements = []
    listen = (dbconn.con, "before_cursor_execute", lambda *args: statements.append(args[2]))
    event.listen(*listen)
    try:
        got = store.read_rows(IndexDF(pd.DataFrame({"id": wanted}))).sort_values("id", ignore_index=True)
    finally:
        event.remove(*listen)
    want = stored[stored["id"].isin(wanted)].sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert any("BETWEEN" in s for s in statements) == (max(wanted) - min(wanted) < 2 * len(wanted))


def test_dense_int_range_bounds_the_rows_a_range_may_return():
    from datapipe.keyset import dense_int_range

    assert dense_int_range(pd.DataFrame({"id": [5, 6, 7]})) == (5, 7)
    assert dense_int_range(pd.DataFrame({"id": [1, 6]})) is None  # 6 values for 2 keys
    assert dense_int_range(pd.DataFrame({"id": [1, 4]})) == (1, 4)  # 4 values for 2 keys: at most twice
    assert dense_int_range(pd.DataFrame({"id": ["a", "b"]})) is None
    assert dense_int_range(pd.DataFrame({"a": [1, 2], "b": [1, 2]})) is None
    assert dense_int_range(pd.DataFrame({"id": pd.Series([], dtype="int64")})) is None
