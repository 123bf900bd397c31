"""``ExampleMemoryStore``: a table held in a process-wide dict of DataFrames, keyed by table name.

Pickling keeps only the name and schema, so an unpickled copy in the same process sees the same
rows (enough for in-process executors; a real backend would reconnect to its server instead).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import pandas as pd

from datapipe.store.table_store import TableStore, TableStoreCaps
from datapipe.types import DataDF, DataSchema, IndexDF, MetaSchema

_TABLES: Dict[str, pd.DataFrame] = {}
_LOCK = threading.Lock()


class ExampleMemoryStore(TableStore):
    """A table named ``name`` with columns ``data_sql_schema``, living in this process's memory."""

    caps = TableStoreCaps()

    def __init__(self, name: str, data_sql_schema: DataSchema) -> None:
        if not any(c.primary_key for c in data_sql_schema):
            raise ValueError(f"ExampleMemoryStore {name!r}: data_sql_schema has no primary_key column")
        self.name = name
        self.data_sql_schema = list(data_sql_schema)
        with _LOCK:
            _TABLES.setdefault(name, self._empty())

    def __getstate__(self) -> Dict[str, Any]:
        return {"name": self.name, "data_sql_schema": self.data_sql_schema}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def describe(self) -> str:
        return f"ExampleMemoryStore({self.name!r})"

    @property
    def columns(self) -> List[str]:
        return [str(c.name) for c in self.data_sql_schema]

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in self.columns})

    def get_primary_schema(self) -> DataSchema:
        return [c for c in self.data_sql_schema if c.primary_key]

    def get_meta_schema(self) -> MetaSchema:
        return []

    def get_schema(self) -> DataSchema:
        return self.data_sql_schema

    def _index(self, df: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_frame(df[self.primary_keys])

    def insert_rows(self, df: DataDF) -> None:
        if len(df) == 0:
            return
        unknown = [c for c in df.columns if c not in self.columns]
        if unknown:
            raise ValueError(f"{self.describe()}: unknown column(s) {unknown}")
        new = df.reindex(columns=self.columns)
        with _LOCK:
            current = _TABLES[self.name]
            keep = current[~self._index(current).isin(self._index(new))]
            _TABLES[self.name] = new.copy() if len(keep) == 0 else pd.concat([keep, new], ignore_index=True)

    def delete_rows(self, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        with _LOCK:
            current = _TABLES[self.name]
            _TABLES[self.name] = current[~self._index(current).isin(self._index(idx))].reset_index(drop=True)

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        current = _TABLES[self.name]
        if idx is None:
            return DataDF(current.reset_index(drop=True))
        return DataDF(current[self._index(current).isin(self._index(idx))].reset_index(drop=True))
