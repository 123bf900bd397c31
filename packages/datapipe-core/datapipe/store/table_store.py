"""The storage interface every backend implements.

A ``TableStore`` holds the data of one table. Datapipe never asks a store *what changed*:
that is the metadata store's job. A store only has to write, delete and read rows by
primary key, in batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterator, List, Optional, Tuple, Union

import pandas as pd
from sqlalchemy import Column, String

from datapipe import keyset
from datapipe.errors import StoreError
from datapipe.run_config import RunConfig
from datapipe.types import DataDF, DataSchema, IndexDF, MetaSchema, data_to_index, index_to_data

# StoreError is re-exported from datapipe.errors
__all__ = ["SchemaStore", "StoreError", "TableDataSingleFileStore", "TableStore", "TableStoreCaps"]

if TYPE_CHECKING:
    from datapipe.sql.connection import DBConn


@dataclass(frozen=True)
class TableStoreCaps:
    """What a store can do; the conformance kit checks that stores honour these flags."""

    supports_delete: bool = True
    supports_get_schema: bool = True
    supports_read_all_rows: bool = True
    supports_read_nonexistent_rows: bool = True
    supports_read_meta_pseudo_df: bool = True


class TableStore(ABC):
    """Storage of one table's rows.

    Subclasses implement the abstract methods; the rest have working defaults.
    All methods take and return whole batches (DataFrames), never single rows.
    Stores must be picklable (executors ship them to worker processes).
    """

    caps: TableStoreCaps = TableStoreCaps()

    @abstractmethod
    def get_primary_schema(self) -> DataSchema:
        """Return the primary-key columns (SQLAlchemy ``Column`` objects), in key order.

        Called when the table's metadata table is created and whenever Datapipe needs key names.
        """

    def get_meta_schema(self) -> MetaSchema:
        """Return non-key columns to copy into the metadata table (columns marked ``MetaKey``).

        Called when the table's metadata table is created. The default, for stores without
        ``MetaKey`` support, is ``[]``.
        """
        return []

    def get_schema(self) -> DataSchema:
        """Return every column of the table (keys first). May raise ``NotImplementedError``
        when ``caps.supports_get_schema`` is False."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its schema")

    @property
    def primary_keys(self) -> List[str]:
        return [str(c.name) for c in self.get_primary_schema()]

    @abstractmethod
    def insert_rows(self, df: DataDF) -> None:
        """Write ``df`` (keys + data columns). Rows whose key already exists are replaced (upsert).

        Called by ``DataTable.store_chunk`` with only the rows that are new or changed.
        An empty frame must be accepted and do nothing. Raises ``StoreError`` on backend failure.
        """

    def update_rows(self, df: DataDF) -> None:
        """Replace existing rows; by default the same as ``insert_rows``."""
        self.insert_rows(df)

    def insert_new_rows(self, df: DataDF) -> None:
        """Write rows whose keys the table's metadata has never recorded (a table's first write of them).

        Called by ``DataTable.store_chunk`` instead of ``insert_rows`` when every row it writes is
        new to the metadata. A store may use a cheaper plain insert here, but must still accept a key
        that exists (a crash, or a store outside the metadata database, can leave one): by default
        the same as ``insert_rows``.
        """
        self.insert_rows(df)

    @abstractmethod
    def delete_rows(self, idx: IndexDF) -> None:
        """Delete the rows with the keys in ``idx``. Keys that do not exist are ignored.

        Only called when ``caps.supports_delete``; raises ``StoreError`` on backend failure.
        """

    @abstractmethod
    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        """Return the rows whose keys are in ``idx`` (all rows when ``idx`` is None).

        Keys that do not exist are silently left out. The result has every column of the
        table, even when empty. Row order is not specified.
        """

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        """Yield every row of the table in chunks of about ``chunksize`` rows.

        Used by ``UpdateExternalTable`` to discover rows written behind Datapipe's back.
        The default reads everything at once and slices it; stores that can page do better.
        """
        df = self.read_rows()
        if len(df) == 0:
            yield df
            return
        for start in range(0, len(df), chunksize):
            yield DataDF(df.iloc[start : start + chunksize])

    def hash_rows(self, df: DataDF) -> pd.Series:
        """Return a stable int64 hash per row of ``df``, used to detect changed content."""
        from datapipe.hashing import hash_rows

        return hash_rows(df, self.primary_keys)

    def describe(self) -> str:
        """A one-line, password-free description used in error messages and ``table list``."""
        return type(self).__name__

    def __repr__(self) -> str:
        return self.describe()

    def in_database(self, dbconn: DBConn) -> bool:
        """True when the rows live in ``dbconn``'s database, so writes join its transactions.

        Datapipe asks this of every store about the metadata database: stores outside it get
        their keys noted before each write (see ``TableMeta.record_write_intent``).
        """
        return False


class SchemaStore(TableStore):
    """A ``TableStore`` whose columns are declared as SQLAlchemy ``Column``\\ s (``data_sql_schema``).

    Gives backends what they would otherwise each write again: the schema methods, checks of a
    frame's columns against the declaration (``check_columns``), and pickling by constructor
    arguments (a subclass lists them in ``init_args``; unpickling calls ``__init__`` again, so
    clients and connections are recreated in the worker). Call ``init_schema`` from ``__init__``.
    """

    init_args: ClassVar[Tuple[str, ...]] = ()
    data_sql_schema: List[Column]

    def init_schema(self, label: str, data_sql_schema: DataSchema) -> None:
        """Keep ``data_sql_schema``; ``label`` (e.g. ``"RedisStore 'items'"``) names the store in errors."""
        self.data_sql_schema = list(data_sql_schema)
        self.columns = [str(c.name) for c in self.data_sql_schema]
        self.key_columns = [c for c in self.data_sql_schema if c.primary_key]
        self.value_columns = [c for c in self.data_sql_schema if not c.primary_key]
        if not self.key_columns:
            raise ValueError(f"{label}: data_sql_schema has no primary_key column")

    def get_primary_schema(self) -> DataSchema:
        return list(self.key_columns)

    def get_meta_schema(self) -> MetaSchema:
        return [c for c in self.data_sql_schema if hasattr(c, "meta_key")]

    def get_schema(self) -> DataSchema:
        return list(self.data_sql_schema)

    def check_columns(self, df: pd.DataFrame, keys_only: bool = False) -> None:
        """Raise ``ValueError`` for missing or null key columns, and (unless ``keys_only``) unknown columns."""
        keys = self.primary_keys
        missing = [k for k in keys if k not in df.columns]
        if missing:
            what = "index" if keys_only else "rows"
            raise ValueError(f"{self.describe()}: {what} missing key column(s) {missing} (got {list(df.columns)})")
        if not keys_only:
            unknown = [c for c in df.columns if c not in self.columns]
            if unknown:
                raise ValueError(f"{self.describe()}: unknown column(s) {unknown}; the table has {self.columns}")
        null = [k for k in keys if df[k].isna().any()]
        if null:
            raise ValueError(f"{self.describe()}: null values in key column(s) {null}")

    def __getstate__(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.init_args}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


class TableDataSingleFileStore(TableStore):
    """Base for stores that keep the whole table in one file (JSON lines, Excel).

    Subclasses implement ``load_file`` and ``save_file``; writes rewrite the file.
    ``primary_schema`` may declare every column, as in datapipe 0.15: the columns marked
    ``primary_key`` are the keys (all of them when none is marked), the others are read back
    with their declared types (``get_schema`` returns them all).
    """

    caps = TableStoreCaps(supports_get_schema=False)

    def __init__(self, filename: Union[str, Path], primary_schema: Optional[DataSchema] = None) -> None:
        if primary_schema is None:
            primary_schema = [Column("id", String, primary_key=True)]
        self.filename = str(filename)
        self.declared_schema = list(primary_schema)
        self.primary_schema = [c for c in primary_schema if c.primary_key] or list(primary_schema)

    def get_primary_schema(self) -> DataSchema:
        return self.primary_schema

    def get_schema(self) -> DataSchema:
        return self.declared_schema

    def describe(self) -> str:
        return f"{type(self).__name__}({self.filename})"

    @abstractmethod
    def load_file(self) -> Optional[pd.DataFrame]:
        """Return the file's content, or None when the file does not exist."""

    @abstractmethod
    def save_file(self, df: pd.DataFrame) -> None:
        """Replace the file's content with ``df``."""

    def _load(self) -> pd.DataFrame:
        df = self.load_file()
        if df is None:
            return self.empty_frame()
        return df

    def empty_frame(self) -> pd.DataFrame:
        """No rows, with the declared columns."""
        return keyset.empty([str(c.name) for c in self.declared_schema])

    def insert_rows(self, df: DataDF) -> None:
        if len(df) == 0:
            return
        current = self._load()
        if len(current):
            current = current.set_index(self.primary_keys)
            new = df.set_index(self.primary_keys)
            current = pd.concat([current[~current.index.isin(new.index)], new]).reset_index()
        else:
            current = df
        self.save_file(current)

    def delete_rows(self, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        current = self._load()
        if len(current) == 0:
            return
        keys = self.primary_keys
        drop = current.set_index(keys).index.isin(idx.set_index(keys).index)
        self.save_file(current[~drop].reset_index(drop=True))

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        current = self._load()
        if idx is None:
            return DataDF(current)
        if len(current) == 0:
            return DataDF(current)
        return index_to_data(current, IndexDF(data_to_index(idx, self.primary_keys)))
