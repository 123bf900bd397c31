"""The store conformance kit: one behavioural test suite every ``TableStore`` must pass.

A store author subclasses :class:`AbstractBaseStoreTests` in a test module and provides a
``store_maker`` fixture. The fixture returns a callable that takes a SQLAlchemy schema (a list of
``Column``, primary keys marked ``primary_key=True``) and returns a **fresh, empty** store with
that schema. Every call must give an independent store (a new table, index, folder...)::

    # tests/test_my_store.py
    import itertools

    import pytest
    from datapipe.testing import AbstractBaseStoreTests   # (0.15 path: datapipe.store.tests.abstract)

    from my_package import MyStore

    class TestMyStore(AbstractBaseStoreTests):
        # Optional: declare what the store cannot do; the kit skips exactly those tests
        # and says why in the skip reason.
        supported_types = ("int", "float", "str", "bool", "json")   # no datetime, no bytes
        supported_key_types = ("int", "str")
        supports_composite_keys = True

        @pytest.fixture
        def store_maker(self, tmp_path):
            counter = itertools.count()

            def make(data_sql_schema):
                return MyStore(path=tmp_path / f"t{next(counter)}", data_sql_schema=data_sql_schema)

            return make

Run it with plain ``pytest``. What the kit checks:

* insert, upsert (re-inserting changed rows replaces them), read by index with single keys of
  every declared key type (``int``, ``str``, ``float``, ``datetime``) and composite keys;
* reading keys that do not exist (``caps.supports_read_nonexistent_rows``), reading every row
  (``caps.supports_read_all_rows``), deleting (``caps.supports_delete``), deleting missing keys
  is a no-op, empty frames for insert/delete/read, a 10 000-row batch;
* a round trip of every declared column type (``supported_types``) and of NULL values;
* ``read_rows_meta_pseudo_df`` chunking (``caps.supports_read_meta_pseudo_df``);
* ``pickle`` and ``cloudpickle`` round trips (executors ship stores to other processes): the
  unpickled store reads the same data;
* ``get_schema`` / ``get_primary_schema`` (``caps.supports_get_schema``);
* end to end: ``DataTable.store_chunk`` / ``delete_by_idx`` through the store, with the metadata in
  a ``DataStore`` on SQLite.

Capability flags come from ``store.caps`` (a ``TableStoreCaps``); a store that says it cannot do
something is not tested for it, and a store that says it can is held to it.

Column type names understood by ``supported_types`` / ``supported_key_types`` (see ``COLUMN_TYPES``):
``int`` (Integer), ``float`` (Float), ``str`` (String), ``bool`` (Boolean), ``datetime`` (naive
DateTime), ``json`` (JSON: dicts and lists), ``bytes`` (LargeBinary).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pickle
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

try:
    import pytest
except ImportError as e:  # the kit is a pytest suite; datapipe itself does not need pytest
    raise ImportError("the store conformance kit needs pytest: pip install 'datapipe-core[testing]'") from e
from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Integer, LargeBinary, String
from sqlalchemy.types import TypeEngine

from datapipe.store.table_store import TableStore
from datapipe.types import DataSchema, IndexDF

StoreMaker = Callable[[DataSchema], TableStore]

COLUMN_TYPES: Dict[str, type[TypeEngine[Any]]] = {
    "int": Integer,
    "float": Float,
    "str": String,
    "bool": Boolean,
    "datetime": DateTime,
    "json": JSON,
    "bytes": LargeBinary,
}
ALL_TYPES: Tuple[str, ...] = tuple(COLUMN_TYPES)
KEY_TYPES: Tuple[str, ...] = ("int", "str", "float", "datetime")

_EPOCH = pd.Timestamp("2024-01-02 03:04:05")


def make_values(kind: str, n: int, offset: int = 0, salt: str = "") -> List[Any]:
    """``n`` distinct sample values of column type ``kind`` (``offset`` shifts them, ``salt`` varies data)."""
    ids = range(offset, offset + n)
    if kind == "int":
        return [i * 7 + len(salt) for i in ids]
    if kind == "float":
        return [i + 0.25 + len(salt) for i in ids]
    if kind == "str":
        return [f"s{i}-ü{salt}" for i in ids]
    if kind == "bool":
        return [(i + len(salt)) % 2 == 0 for i in ids]
    if kind == "datetime":
        return [_EPOCH + pd.Timedelta(seconds=i * 61 + len(salt)) for i in ids]
    if kind == "json":
        return [{"i": i, "tags": [f"t{i}", salt], "nested": {"ok": True}} for i in ids]
    if kind == "bytes":
        return [f"b{i}{salt}".encode() + b"\x00\xff" for i in ids]
    raise ValueError(f"unknown column type {kind!r}; known: {ALL_TYPES}")


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def normalise_value(value: Any, kind: str) -> Any:
    """A comparable Python value for ``value`` read back from a store (NaN/NaT/None -> None)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True) if kind == "json" else value
    if _is_null(value):
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return round(float(value), 9)
    if kind == "str":
        return str(value)
    if kind == "bool":
        return bool(value)
    if kind == "datetime":
        ts = pd.Timestamp(value)
        return ts.tz_convert(None) if ts.tzinfo is not None else ts
    if kind == "json":
        return json.dumps(value, sort_keys=True)
    if kind == "bytes":
        return bytes(value)
    return value


def _frame(columns: Dict[str, List[Any]]) -> pd.DataFrame:
    out = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    return out.infer_objects()


class AbstractBaseStoreTests:
    """Subclass me and provide a ``store_maker`` fixture (see the module docstring)."""

    #: Column types the store round-trips as data columns (names from ``COLUMN_TYPES``).
    supported_types: Sequence[str] = ALL_TYPES
    #: Column types the store accepts as primary keys.
    supported_key_types: Sequence[str] = KEY_TYPES
    #: Whether the store accepts more than one primary-key column.
    supports_composite_keys: bool = True
    #: Whether NULL (None/NaN) data values round-trip as NULL.
    supports_null_values: bool = True
    #: Rows in the large-batch test.
    large_batch_size: int = 10_000

    @pytest.fixture
    def store_maker(self) -> StoreMaker:
        raise NotImplementedError("subclasses of AbstractBaseStoreTests must define a `store_maker` fixture")

    # ------------------------------------------------------------------ helpers

    def _skip_unless_type(self, kind: str, as_key: bool = False) -> None:
        declared = self.supported_key_types if as_key else self.supported_types
        attr = "supported_key_types" if as_key else "supported_types"
        if kind not in declared:
            pytest.skip(f"{type(self).__name__} declares {attr}={tuple(declared)}: {kind!r} is not supported")

    def _skip_unless_cap(self, store: TableStore, cap: str) -> None:
        if not getattr(store.caps, cap):
            pytest.skip(f"{type(store).__name__} declares caps.{cap}=False")

    def _key_kind(self) -> str:
        return self.supported_key_types[0]

    def _value_kind(self) -> str:
        return "int" if "int" in self.supported_types else "str"

    def basic_schema(self, key_kind: str | None = None) -> Tuple[DataSchema, Dict[str, str]]:
        """``id`` key + ``name`` (str) + ``value`` (int, or str) columns; returns (schema, column kinds)."""
        key_kind = key_kind or self._key_kind()
        kinds = {"id": key_kind, "name": "str", "value": self._value_kind()}
        schema: DataSchema = [Column("id", COLUMN_TYPES[key_kind], primary_key=True)]
        schema += [Column(c, COLUMN_TYPES[k]) for c, k in kinds.items() if c != "id"]
        return schema, kinds

    def make_df(
        self, kinds: Dict[str, str], keys: Sequence[str], n: int, offset: int = 0, salt: str = ""
    ) -> pd.DataFrame:
        """``n`` rows for columns ``kinds``; key columns get distinct values, data columns depend on ``salt``."""
        cols = {c: make_values(k, n, offset, "" if c in keys else salt) for c, k in kinds.items()}
        return _frame(cols)

    def read_all(self, store: TableStore, expected_keys: pd.DataFrame) -> pd.DataFrame:
        """Every row (``read_rows()``), or the rows of ``expected_keys`` when the store cannot read all."""
        if store.caps.supports_read_all_rows:
            return store.read_rows()
        return store.read_rows(IndexDF(expected_keys))

    def assert_rows(
        self, actual: pd.DataFrame, expected: pd.DataFrame, kinds: Dict[str, str], keys: Sequence[str]
    ) -> None:
        """``actual`` holds exactly the rows of ``expected`` (any order, compared by type ``kinds``)."""
        assert set(actual.columns) == set(expected.columns), (
            f"columns differ: read {sorted(actual.columns)}, expected {sorted(expected.columns)}"
        )
        assert len(actual) == len(expected), f"read {len(actual)} rows, expected {len(expected)}\n{actual}"
        cols = list(keys) + [c for c in expected.columns if c not in keys]

        def rows(df: pd.DataFrame) -> List[Tuple[Any, ...]]:
            values = [[normalise_value(v, kinds[c]) for v in df[c].tolist()] for c in cols]
            return sorted(zip(*values), key=lambda r: tuple(str(v) for v in r[: len(keys)]))

        got, want = rows(actual), rows(expected)
        for g, w in zip(got, want):
            assert g == w, f"row differs: read {dict(zip(cols, g))}, expected {dict(zip(cols, w))}"

    # ------------------------------------------------------------------ schema

    def test_primary_schema(self, store_maker: StoreMaker) -> None:
        schema, _ = self.basic_schema()
        store = store_maker(schema)
        assert store.primary_keys == ["id"]
        assert [str(c.name) for c in store.get_primary_schema()] == ["id"]
        assert isinstance(store.get_meta_schema(), list)

    def test_get_schema(self, store_maker: StoreMaker) -> None:
        schema, _ = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_get_schema")
        got = store.get_schema()
        assert [str(c.name) for c in got] == ["id", "name", "value"]
        assert [bool(c.primary_key) for c in got] == [True, False, False]

    # ------------------------------------------------------------------ insert / upsert / read

    def test_insert_and_read(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 10)
        store.insert_rows(df)
        self.assert_rows(self.read_all(store, df[["id"]]), df, kinds, ["id"])

    def test_insert_twice_appends(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        a = self.make_df(kinds, ["id"], 5)
        b = self.make_df(kinds, ["id"], 5, offset=5)
        store.insert_rows(a)
        store.insert_rows(b)
        both = pd.concat([a, b], ignore_index=True)
        self.assert_rows(self.read_all(store, both[["id"]]), both, kinds, ["id"])

    def test_upsert(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 10)
        store.insert_rows(df)
        changed = self.make_df(kinds, ["id"], 4, offset=3, salt="-changed")
        store.insert_rows(changed)
        expected = pd.concat([df[~df["id"].isin(changed["id"])], changed], ignore_index=True)
        self.assert_rows(self.read_all(store, df[["id"]]), expected, kinds, ["id"])

    def test_update_rows(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 6)
        store.insert_rows(df)
        changed = self.make_df(kinds, ["id"], 2, salt="-upd")
        store.update_rows(changed)
        expected = pd.concat([df.iloc[2:], changed], ignore_index=True)
        self.assert_rows(self.read_all(store, df[["id"]]), expected, kinds, ["id"])

    def test_frames_with_gaps_in_index_and_other_column_order(self, store_maker: StoreMaker) -> None:
        """Stores must not rely on a 0..n-1 index or on column order (store_chunk passes filtered frames)."""
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 12)
        sparse = df.iloc[::3]  # index 0, 3, 6, 9
        store.insert_rows(sparse[list(reversed(sparse.columns))])
        idx = df[["id"]].iloc[[3, 4, 9]]  # index 3, 4, 9; key 4 is missing
        want = df.iloc[[3, 9]]
        if store.caps.supports_read_nonexistent_rows:
            self.assert_rows(store.read_rows(IndexDF(idx)), want, kinds, ["id"])
        else:
            self.assert_rows(store.read_rows(IndexDF(df[["id"]].iloc[[3, 9]])), want, kinds, ["id"])
        if store.caps.supports_delete:
            store.delete_rows(IndexDF(df[["id"]].iloc[[6]]))
            rest = df.iloc[[0, 3, 9]]
            self.assert_rows(self.read_all(store, rest[["id"]]), rest, kinds, ["id"])

    @pytest.mark.parametrize("key_kind", KEY_TYPES)
    def test_read_by_index_single_key(self, store_maker: StoreMaker, key_kind: str) -> None:
        self._skip_unless_type(key_kind, as_key=True)
        schema, kinds = self.basic_schema(key_kind)
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 20)
        store.insert_rows(df)
        wanted = df.iloc[[1, 5, 6, 19]]
        got = store.read_rows(IndexDF(wanted[["id"]].reset_index(drop=True)))
        self.assert_rows(got, wanted, kinds, ["id"])

    def test_read_by_index_composite_keys(self, store_maker: StoreMaker) -> None:
        if not self.supports_composite_keys:
            pytest.skip(f"{type(self).__name__} declares supports_composite_keys=False")
        key_kinds = [k for k in ("int", "str") if k in self.supported_key_types] or [self._key_kind()]
        a_kind, b_kind = key_kinds[0], key_kinds[-1]
        kinds = {"a": a_kind, "b": b_kind, "name": "str"}
        schema: DataSchema = [
            Column("a", COLUMN_TYPES[a_kind], primary_key=True),
            Column("b", COLUMN_TYPES[b_kind], primary_key=True),
            Column("name", String),
        ]
        store = store_maker(schema)
        assert store.primary_keys == ["a", "b"]
        a_vals = make_values(a_kind, 4)
        b_vals = make_values(b_kind, 3)
        pairs = [(a, b) for a in a_vals for b in b_vals]
        df = _frame(
            {"a": [p[0] for p in pairs], "b": [p[1] for p in pairs], "name": [f"n{i}" for i in range(len(pairs))]}
        )
        store.insert_rows(df)
        # (a0, b1) and (a2, b0): mixing values from different rows must not match (a0, b0) etc.
        wanted = df.iloc[[1, 6]].reset_index(drop=True)
        got = store.read_rows(IndexDF(wanted[["a", "b"]]))
        self.assert_rows(got, wanted, kinds, ["a", "b"])
        changed = wanted.assign(name=["x", "y"])
        store.insert_rows(changed)
        self.assert_rows(store.read_rows(IndexDF(wanted[["a", "b"]])), changed, kinds, ["a", "b"])
        if store.caps.supports_delete:
            store.delete_rows(IndexDF(wanted[["a", "b"]]))
            rest = df.drop(index=[1, 6])
            self.assert_rows(self.read_all(store, rest[["a", "b"]]), rest, kinds, ["a", "b"])

    def test_read_missing_keys(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_read_nonexistent_rows")
        df = self.make_df(kinds, ["id"], 5)
        store.insert_rows(df)
        missing = self.make_df(kinds, ["id"], 3, offset=100)[["id"]]
        idx = pd.concat([df[["id"]].iloc[[0, 3]], missing], ignore_index=True)
        self.assert_rows(store.read_rows(IndexDF(idx)), df.iloc[[0, 3]], kinds, ["id"])
        got = store.read_rows(IndexDF(missing))
        assert len(got) == 0, f"reading only missing keys returned rows:\n{got}"

    def test_read_all_rows(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_read_all_rows")
        assert len(store.read_rows()) == 0, "a fresh store must be empty"
        df = self.make_df(kinds, ["id"], 7)
        store.insert_rows(df)
        self.assert_rows(store.read_rows(), df, kinds, ["id"])

    # ------------------------------------------------------------------ delete

    def test_delete(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_delete")
        df = self.make_df(kinds, ["id"], 10)
        store.insert_rows(df)
        store.delete_rows(IndexDF(df[["id"]].iloc[[0, 4, 9]].reset_index(drop=True)))
        rest = df.drop(index=[0, 4, 9])
        self.assert_rows(self.read_all(store, rest[["id"]]), rest, kinds, ["id"])
        if store.caps.supports_read_nonexistent_rows:
            assert len(store.read_rows(IndexDF(df[["id"]].iloc[[0, 4]]))) == 0, "deleted rows are still readable"

    def test_delete_then_reinsert(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_delete")
        df = self.make_df(kinds, ["id"], 4)
        store.insert_rows(df)
        store.delete_rows(IndexDF(df[["id"]]))
        again = self.make_df(kinds, ["id"], 2, salt="-again")
        store.insert_rows(again)
        self.assert_rows(self.read_all(store, again[["id"]]), again, kinds, ["id"])

    def test_delete_missing_keys_is_noop(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_delete")
        df = self.make_df(kinds, ["id"], 5)
        store.insert_rows(df)
        missing = self.make_df(kinds, ["id"], 3, offset=100)[["id"]]
        store.delete_rows(IndexDF(missing))
        store.delete_rows(IndexDF(pd.concat([missing, df[["id"]].iloc[[2]]], ignore_index=True)))
        rest = df.drop(index=[2])
        self.assert_rows(self.read_all(store, rest[["id"]]), rest, kinds, ["id"])

    # ------------------------------------------------------------------ empty frames

    def test_empty_frames(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        empty = self.make_df(kinds, ["id"], 0)
        store.insert_rows(empty)
        store.insert_rows(self.make_df(kinds, ["id"], 3))
        store.insert_rows(empty)
        got = store.read_rows(IndexDF(empty[["id"]]))
        assert len(got) == 0
        assert "id" in got.columns, f"an empty read must still have the key columns, got {list(got.columns)}"
        if store.caps.supports_get_schema:
            assert set(got.columns) == {"id", "name", "value"}, f"empty read lost columns: {list(got.columns)}"
        if store.caps.supports_delete:
            store.delete_rows(IndexDF(empty[["id"]]))
        assert len(store.read_rows(IndexDF(self.make_df(kinds, ["id"], 3)[["id"]]))) == 3

    def test_empty_store_reads(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        if store.caps.supports_read_all_rows:
            got = store.read_rows()
            assert len(got) == 0 and "id" in got.columns, f"empty store read: {got}"
        if store.caps.supports_read_nonexistent_rows:
            assert len(store.read_rows(IndexDF(self.make_df(kinds, ["id"], 2)[["id"]]))) == 0

    # ------------------------------------------------------------------ volume

    def test_large_batch(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        n = self.large_batch_size
        df = self.make_df(kinds, ["id"], n)
        store.insert_rows(df)
        self.assert_rows(self.read_all(store, df[["id"]]), df, kinds, ["id"])
        half = self.make_df(kinds, ["id"], n // 2, salt="-v2")
        store.insert_rows(half)
        got = store.read_rows(IndexDF(half[["id"]]))
        self.assert_rows(got, half, kinds, ["id"])
        if store.caps.supports_delete:
            store.delete_rows(IndexDF(half[["id"]]))
            rest = df.iloc[n // 2 :]
            self.assert_rows(self.read_all(store, rest[["id"]]), rest, kinds, ["id"])

    # ------------------------------------------------------------------ types

    @pytest.mark.parametrize("kind", ALL_TYPES)
    def test_dtype_roundtrip(self, store_maker: StoreMaker, kind: str) -> None:
        self._skip_unless_type(kind)
        key_kind = self._key_kind()
        schema: DataSchema = [Column("id", COLUMN_TYPES[key_kind], primary_key=True), Column("col", COLUMN_TYPES[kind])]
        kinds = {"id": key_kind, "col": kind}
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 6)
        store.insert_rows(df)
        got = self.read_all(store, df[["id"]])
        self.assert_rows(got, df, kinds, ["id"])
        if kind == "int":
            ints = all(isinstance(v, (int, np.integer)) for v in got["col"])
            assert pd.api.types.is_integer_dtype(got["col"]) or ints, f"int column read back as {got['col'].dtype}"
        if kind == "datetime":
            assert all(isinstance(v, (_dt.datetime, np.datetime64)) for v in got["col"]), got["col"].tolist()
        if kind == "str":
            assert all(isinstance(v, str) for v in got["col"]), f"str column read back as {got['col'].tolist()}"
        if kind == "bool":
            assert all(isinstance(v, (bool, np.bool_)) for v in got["col"]), f"bool column read back as {got['col']}"

    def test_null_values(self, store_maker: StoreMaker) -> None:
        if not self.supports_null_values:
            pytest.skip(f"{type(self).__name__} declares supports_null_values=False")
        key_kind = self._key_kind()
        data_kinds = [k for k in ("str", "float", "int") if k in self.supported_types]
        kinds = {"id": key_kind, **{f"c_{k}": k for k in data_kinds}}
        schema: DataSchema = [Column("id", COLUMN_TYPES[key_kind], primary_key=True)]
        schema += [Column(f"c_{k}", COLUMN_TYPES[k]) for k in data_kinds]
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 4)
        for c in kinds:
            if c != "id":
                df[c] = df[c].astype(object)
                df.loc[[1, 3], c] = None
        store.insert_rows(df)
        self.assert_rows(self.read_all(store, df[["id"]]), df, kinds, ["id"])

    def test_hash_of_reads_is_stable(self, store_maker: StoreMaker) -> None:
        """Reading the same rows twice gives the same ``hash_rows`` (else every scan looks like a change)."""
        kinds = {"id": self._key_kind(), **{f"c_{k}": k for k in self.supported_types}}
        schema: DataSchema = [Column("id", COLUMN_TYPES[kinds["id"]], primary_key=True)]
        schema += [Column(c, COLUMN_TYPES[k]) for c, k in kinds.items() if c != "id"]
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 8)
        store.insert_rows(df)

        def hashes() -> List[Any]:
            rows = self.read_all(store, df[["id"]])
            h = store.hash_rows(rows)
            keys = [normalise_value(v, kinds["id"]) for v in rows["id"]]
            return [v for _, v in sorted(zip(keys, h.tolist()), key=lambda kv: str(kv[0]))]

        first = hashes()
        assert len(first) == len(df)
        assert hashes() == first

    # ------------------------------------------------------------------ paging

    def test_read_rows_meta_pseudo_df_chunks(self, store_maker: StoreMaker) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        self._skip_unless_cap(store, "supports_read_meta_pseudo_df")
        chunks = list(store.read_rows_meta_pseudo_df(chunksize=10))
        assert sum(len(c) for c in chunks) == 0
        df = self.make_df(kinds, ["id"], 25)
        store.insert_rows(df)
        chunks = list(store.read_rows_meta_pseudo_df(chunksize=10))
        assert all(len(c) <= 10 for c in chunks), f"chunk sizes {[len(c) for c in chunks]} exceed chunksize=10"
        assert len([c for c in chunks if len(c)]) >= 3, f"25 rows in chunks of 10 came as {[len(c) for c in chunks]}"
        self.assert_rows(pd.concat(chunks, ignore_index=True), df, kinds, ["id"])

    # ------------------------------------------------------------------ pickling

    @pytest.mark.parametrize("dumper", ["pickle", "cloudpickle"])
    def test_pickle_roundtrip(self, store_maker: StoreMaker, dumper: str) -> None:
        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        df = self.make_df(kinds, ["id"], 5)
        store.insert_rows(df)
        if dumper == "cloudpickle":
            cloudpickle = pytest.importorskip("cloudpickle")
            clone = cloudpickle.loads(cloudpickle.dumps(store))
        else:
            clone = pickle.loads(pickle.dumps(store))
        assert isinstance(clone, type(store))
        assert clone.primary_keys == store.primary_keys
        self.assert_rows(self.read_all(clone, df[["id"]]), df, kinds, ["id"])
        more = self.make_df(kinds, ["id"], 2, offset=5)
        clone.insert_rows(more)
        both = pd.concat([df, more], ignore_index=True)
        self.assert_rows(self.read_all(store, both[["id"]]), both, kinds, ["id"])

    # ------------------------------------------------------------------ end to end

    def test_datatable_store_chunk(self, store_maker: StoreMaker, tmp_path: Any) -> None:
        from datapipe.datatable import DataStore
        from datapipe.store.database import DBConn

        schema, kinds = self.basic_schema()
        store = store_maker(schema)
        meta = DBConn(f"sqlite:///{tmp_path}/conformance_meta.sqlite")
        try:
            ds = DataStore(meta, create_meta_table=True)
            dt = ds.get_or_create_table("conformance", store)
            df = self.make_df(kinds, ["id"], 20)
            assert len(dt.store_chunk(df, now=1000.0)) == 20
            self.assert_rows(self.read_all(store, df[["id"]]), df, kinds, ["id"])
            assert len(dt.store_chunk(df, now=1001.0)) == 0, "storing identical rows again must change nothing"

            processed = df[["id"]].iloc[:10]
            changed = self.make_df(kinds, ["id"], 4, offset=3, salt="-v2")  # rows 3..6 change
            new = pd.concat([df.iloc[[7, 8, 9]], changed], ignore_index=True)  # rows 0..2 vanish
            got = dt.store_chunk(new, processed_idx=IndexDF(processed), now=1002.0)
            # every changed key, the deleted ones (rows 0..2) included, as in datapipe 0.15
            assert sorted(normalise_value(v, kinds["id"]) for v in got["id"]) == sorted(
                normalise_value(v, kinds["id"]) for v in pd.concat([changed["id"], df["id"].iloc[:3]])
            )
            expected = pd.concat([new, df.iloc[10:]], ignore_index=True)
            assert dt.get_size() == len(expected)
            if store.caps.supports_delete:
                self.assert_rows(self.read_all(store, expected[["id"]]), expected, kinds, ["id"])
                dt.delete_by_idx(IndexDF(df[["id"]].iloc[[15]]), now=1003.0)
                expected = expected[expected["id"] != df["id"].iloc[15]]
                self.assert_rows(self.read_all(store, expected[["id"]]), expected, kinds, ["id"])
                assert dt.get_size() == len(expected)
        finally:
            meta.con.dispose()
