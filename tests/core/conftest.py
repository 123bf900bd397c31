from typing import Callable, List

import pytest
from sqlalchemy import Column

from datapipe.compute import Catalog, Table
from datapipe.datatable import DataStore
from datapipe.store.database import DBConn, TableStoreDB


@pytest.fixture
def ds(dbconn: DBConn) -> DataStore:
    return DataStore(dbconn, create_meta_table=True)


@pytest.fixture
def make_catalog(dbconn: DBConn) -> Callable[..., Catalog]:
    """``make_catalog(name=[columns], ...)``: SQL tables in the metadata database."""

    def make(**tables: List[Column]) -> Catalog:
        return Catalog(
            {name: Table(TableStoreDB(dbconn, name, cols, create_table=True)) for name, cols in tables.items()}
        )

    return make
