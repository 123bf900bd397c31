"""The store conformance kit on ``TableStoreDB`` (SQLite and PostgreSQL via the ``dbconn`` fixture)."""

import itertools

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

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


def test_describe_masks_password(postgres_url):
    from datapipe.store.database import DBConn

    url = postgres_url.replace("postgres@", "postgres:secret@") if "@" in postgres_url else postgres_url
    store = TableStoreDB(DBConn(url), "t", [Column("id", Integer, primary_key=True)])
    assert "secret" not in store.describe()
