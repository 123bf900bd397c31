"""The SQL table store (``TableStoreDB``) and the ``MetaKey`` column mark.

Connections live in ``datapipe.sql.connection``; ``DBConn`` and ``MetaKey`` are importable from
here as in datapipe 0.15 (see "Compatibility" in ``datapipe/__init__.py``).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Type

import pandas as pd
from sqlalchemy import select

from datapipe import keyset
from datapipe.errors import mask_url
from datapipe.run_config import RunConfig
from datapipe.sql.bulk import bulk_upsert
from datapipe.sql.connection import DBConn, no_table_creation, offline
from datapipe.sql.rows import fetch_rows, key_chunks, locked_key_filter, read_by_keys, rows_to_df
from datapipe.sql.schema import MetaKey, check_values, copy_column
from datapipe.store.table_store import TableStore, TableStoreCaps
from datapipe.types import DataDF, DataSchema, IndexDF, MetaSchema

__all__ = ["DBConn", "MetaKey", "TableStoreDB", "no_table_creation", "offline"]


class TableStoreDB(TableStore):
    """A table in an SQL database (any SQLAlchemy URL; SQLite and PostgreSQL are tested).

    Writes are bulk upserts; reads filter by primary key with bound parameters. When the table
    is in the metadata database, a batch's output rows and metadata commit in one transaction.

    Args:
        dbconn: the database.
        name: the SQL table name.
        data_sql_schema: SQLAlchemy ``Column``s; primary keys marked ``primary_key=True``;
            ``Column(..., MetaKey())`` copies a non-key column into the metadata (for joins).
        create_table: create the table if it does not exist. An existing table must match the
            declaration (columns, key, types), or a ``ValueError`` says what differs.
        orm_table: a declarative ORM class instead of ``name`` and ``data_sql_schema``.

    Raises:
        ValueError: no name/schema, no primary key, or an existing table that does not match.
        StoreError: the database cannot be reached.
    """

    caps = TableStoreCaps()

    def __init__(
        self,
        dbconn: DBConn,
        name: Optional[str] = None,
        data_sql_schema: Optional[DataSchema] = None,
        create_table: bool = False,
        orm_table: Optional[Type[Any]] = None,
    ) -> None:
        self.dbconn = dbconn
        if orm_table is not None:
            table = orm_table.__table__
            self.name = str(table.name)
            self.data_sql_schema: DataSchema = [copy_column(c) for c in table.columns]
        else:
            if name is None or data_sql_schema is None:
                raise ValueError("TableStoreDB needs name and data_sql_schema, or orm_table")
            self.name = name
            self.data_sql_schema = [copy_column(c) for c in data_sql_schema]
        if not any(c.primary_key for c in self.data_sql_schema):
            raise ValueError(f"TableStoreDB {self.name!r}: data_sql_schema has no primary_key column")
        self.create_table = create_table
        self.data_table = dbconn.get_table(self.name, self.data_sql_schema, create=create_table)

    def __getstate__(self) -> Dict[str, Any]:
        return {
            "dbconn": self.dbconn,
            "name": self.name,
            "data_sql_schema": self.data_sql_schema,
            "create_table": False,
        }

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # The process that pickled this store checked (or created) the table when it declared it; a copy
        # (in a Ray worker: once per step run) only declares it, without reading the database's catalog.
        with offline():
            self.__init__(**state)  # type: ignore[misc]

    def describe(self) -> str:
        return f"TableStoreDB({self.name!r} in {mask_url(self.dbconn.connstr)})"

    def in_database(self, dbconn: DBConn) -> bool:
        return self.dbconn.connstr == dbconn.connstr

    def get_primary_schema(self) -> DataSchema:
        return [c for c in self.data_sql_schema if c.primary_key]

    def get_meta_schema(self) -> MetaSchema:
        return [c for c in self.data_sql_schema if hasattr(c, "meta_key")]

    def get_schema(self) -> DataSchema:
        return self.data_sql_schema

    @property
    def columns(self) -> List[str]:
        return [str(c.name) for c in self.data_sql_schema]

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [k for k in self.primary_keys if k not in df.columns]
        if missing:
            raise ValueError(f"{self.describe()}: rows are missing key column(s) {missing}")
        unknown = [c for c in df.columns if c not in self.columns]
        if unknown:
            raise ValueError(f"{self.describe()}: unknown column(s) {unknown}; the table has {self.columns}")
        check_values(self.describe(), self.data_sql_schema, df)

    def insert_rows(self, df: DataDF) -> None:
        self._insert(df, new=False)

    def insert_new_rows(self, df: DataDF) -> None:
        self._insert(df, new=True)

    def _insert(self, df: DataDF, new: bool) -> None:
        if len(df) == 0:
            return
        self._check_columns(df)
        columns = [c for c in self.columns if c in df.columns]
        with self.dbconn.begin() as con:
            bulk_upsert(con, self.data_table, df, columns, self.primary_keys, new=new)

    def delete_rows(self, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        keys = keyset.select(idx, [k for k in self.primary_keys if k in idx.columns])
        with self.dbconn.begin() as con:
            for chunk in key_chunks(keys):
                con.execute(self.data_table.delete().where(locked_key_filter(con, self.data_table, chunk)))

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        sql = select(*[self.data_table.c[c] for c in self.columns])
        with self.dbconn.read() as con:
            if idx is None:
                return DataDF(rows_to_df(fetch_rows(con, sql), self.columns))
            if len(idx) == 0:
                return DataDF(rows_to_df([], self.columns))
            keys = keyset.select(idx, [k for k in self.primary_keys if k in idx.columns])
            return DataDF(read_by_keys(con, self.data_table, sql, self.columns, keys))

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        sql = select(*[self.data_table.c[c] for c in self.columns])
        with self.dbconn.con.connect() as con:
            result = con.execution_options(stream_results=True).execute(sql)
            empty = True
            while rows := result.fetchmany(chunksize):
                empty = False
                yield DataDF(rows_to_df(rows, self.columns))
            if empty:
                yield DataDF(rows_to_df([], self.columns))
