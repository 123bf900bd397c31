"""Core data types shared by every part of Datapipe.

The DataFrame aliases are documentation: an ``IndexDF`` holds only primary-key columns,
a ``DataDF`` holds keys plus data, a ``MetadataDF`` holds keys plus metadata columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeAlias, Union

import pandas as pd
from sqlalchemy import Column

from datapipe import keyset

DataSchema = List[Column]
MetaSchema = List[Column]

# Aliases, not distinct types: any DataFrame with the right columns is accepted.
IndexDF: TypeAlias = pd.DataFrame
DataDF: TypeAlias = pd.DataFrame
MetadataDF: TypeAlias = pd.DataFrame
HashDF: TypeAlias = pd.DataFrame

Labels = List[Tuple[str, str]]
TransformResult = Union[pd.DataFrame, List[pd.DataFrame], Tuple[pd.DataFrame, ...]]

# A step input/output may be a catalog name, a ``datapipe.compute.Table``, or an SQLAlchemy ORM class.
TableOrName = Union[str, Any]


@dataclass
class InputSpec:
    """A step input with options.

    Args:
        table: a catalog name, a ``Table`` or an ORM class.
        keys: ``{"transform_key": "column"}``: where this table keeps a transform key when the
            column is named differently (e.g. ``{"user_id": "author_id"}``).
    """

    table: TableOrName
    keys: Optional[Dict[str, str]] = None


@dataclass
class Required(InputSpec):
    """An input that must have a row for a key before the key is processed (inner join).

    Plain inputs are joined fully: a key is processed when any input has a row for it. With
    ``Required(table)`` only keys that ``table`` has a row for are processed, and when that row
    is deleted the key's outputs are deleted. Takes the same arguments as ``InputSpec``.
    """


@dataclass
class OutputSpec:
    """A step output with options.

    Args:
        table: a catalog name, a ``Table`` or an ORM class.
        keys: ``{"transform_key": "column"}`` for output key columns named differently.
    """

    table: TableOrName
    keys: Optional[Dict[str, str]] = None


class ChangeList:
    """Changed keys per table name, as produced by a run and consumed by ``run_changelist``.

    ``append`` only collects parts; they are concatenated and de-duplicated when ``changes`` is
    read, so gathering the changes of a run with thousands of batches stays linear.
    """

    def __init__(self, changes: Optional[Dict[str, IndexDF]] = None) -> None:
        self._changes: Dict[str, IndexDF] = dict(changes or {})
        self._parts: Dict[str, List[IndexDF]] = {}
        self.deleted_count = 0  # how many of the keys are deletions; progress statistics only

    def __repr__(self) -> str:
        return f"ChangeList({ {k: len(v) for k, v in self.changes.items()} })"

    @property
    def changes(self) -> Dict[str, IndexDF]:
        """Table name -> distinct changed keys."""
        if self._parts:
            for name, parts in self._parts.items():
                if name in self._changes:
                    parts = [self._changes[name], *parts]
                merged = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
                self._changes[name] = IndexDF(merged.drop_duplicates(ignore_index=True))
            self._parts = {}
        return self._changes

    def key_count(self) -> int:
        """How many changed keys, over all tables (progress statistics)."""
        return sum(len(idx) for idx in self.changes.values())

    @classmethod
    def of_distinct(cls, tables: Dict[str, Sequence[IndexDF]]) -> ChangeList:
        """Changes the caller knows hold no key twice among a table's parts (one write's written and
        deleted primary keys): kept without de-duplicating them, so counting them costs nothing."""
        res = cls()
        for name, parts in tables.items():
            present = [idx for idx in parts if len(idx)]
            if present:
                res._changes[name] = present[0] if len(present) == 1 else IndexDF(
                    pd.concat(present, ignore_index=True))
        return res

    @classmethod
    def create(cls, name: str, idx: IndexDF) -> ChangeList:
        res = cls()
        res.append(name, idx)
        return res

    def append(self, table_name: str, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        self._parts.setdefault(table_name, []).append(idx)

    def extend(self, other: ChangeList) -> None:
        for key, idx in other._changes.items():
            self.append(key, idx)
        for key, parts in other._parts.items():
            for idx in parts:
                self.append(key, idx)
        self.deleted_count += other.deleted_count

    def empty(self) -> bool:
        return not self._changes and not self._parts


def data_to_index(data: pd.DataFrame, primary_keys: List[str]) -> IndexDF:
    """The key columns of a data (or metadata, or hash) frame."""
    return IndexDF(data[list(primary_keys)])


# 0.15 names for the same projection
meta_to_index = data_to_index
hash_to_index = data_to_index


def index_to_data(data: pd.DataFrame, idx: IndexDF) -> DataDF:
    """Rows of ``data`` whose key columns (the columns of ``idx``) appear in ``idx``."""
    keys = list(idx.columns)
    return DataDF(data.merge(idx.drop_duplicates(), on=keys, how="inner"))


def index_difference(idx1: IndexDF, idx2: IndexDF) -> IndexDF:
    """Keys of ``idx1`` not in ``idx2``."""
    keys = list(idx1.columns)
    if len(idx2) == 0:
        return idx1
    return IndexDF(idx1[~keyset.isin(idx1, idx2, keys)].reset_index(drop=True))


def index_intersection(idx1: IndexDF, idx2: IndexDF) -> IndexDF:
    """Keys present in both ``idx1`` and ``idx2``."""
    if len(idx1) == 0 or len(idx2) == 0:
        return IndexDF(idx1.iloc[0:0])
    return IndexDF(idx1.merge(idx2[list(idx1.columns)].drop_duplicates(), on=list(idx1.columns)))
