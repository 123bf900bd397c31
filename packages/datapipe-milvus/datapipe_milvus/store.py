"""``MilvusStore``: a table stored as the entities of one Milvus collection."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TypeVar, Union

import numpy as np
import pandas as pd
from pymilvus import DataType, MilvusClient
from sqlalchemy import Column, String

from datapipe.errors import StoreError, redacted
from datapipe.run_config import RunConfig
from datapipe.store.json_codec import ANY, BOOL, BYTES, DATE, DATETIME, FLOAT, INT, STR, column_kind
from datapipe.store.table_store import TableStore, TableStoreCaps
from datapipe.store.vectors import check_frame
from datapipe.types import DataDF, DataSchema, IndexDF
from datapipe_milvus import client as mclient
from datapipe_milvus.convert import encode_values, key_strings, records_frame, vectors_to_lists

T = TypeVar("T")

HIDDEN_KEY = "_datapipe_key"
HIDDEN_VECTOR = "_datapipe_vector"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALAR_TYPES = {
    INT: DataType.INT64,
    FLOAT: DataType.DOUBLE,
    BOOL: DataType.BOOL,
    STR: DataType.VARCHAR,
    DATETIME: DataType.VARCHAR,
    DATE: DataType.VARCHAR,
    BYTES: DataType.VARCHAR,
    ANY: DataType.JSON,
}


class MilvusStore(TableStore):
    """A table in a Milvus collection (server or embedded Milvus Lite), one entity per row.

    Args:
        uri: ``http://host:19530`` (or ``https://``/``tcp://``) for a Milvus server, or a local file
            path ending in ``.db`` for embedded Milvus Lite.
        name: the collection name; the collection is created on first use.
        schema: every column (SQLAlchemy ``Column``), primary-key columns marked ``primary_key=True``.
        embedding_field: the vector column (lists or numpy arrays of ``dim`` floats), stored as a
            ``FLOAT_VECTOR``. None for a table without vectors (Milvus requires a vector field, so a
            hidden 2-dimensional placeholder vector is stored).
        dim: the vector dimension (required with ``embedding_field``).
        primary_key: the key column name(s); default: the columns marked ``primary_key=True``.
        metric_type: ``"COSINE"`` (default), ``"IP"`` or ``"L2"``.
        index_type: the vector index; default ``"AUTOINDEX"`` on servers and ``"FLAT"`` on Milvus Lite.
        index_params: extra index build parameters (e.g. ``{"M": 16, "efConstruction": 200}`` for HNSW).
        token: ``"user:password"`` or an API key (never shown in messages).
        db_name: the Milvus database (servers only).
        varchar_max_length: ``max_length`` of VARCHAR fields whose ``String`` column has no length.
        client_kwargs: extra ``MilvusClient`` arguments (e.g. ``timeout``).
        batch_size: rows per request.

    Keys: a single integer key becomes the ``INT64`` primary field. Any other key (strings,
    composite keys, floats, datetimes) uses a hidden ``VARCHAR`` primary field ``_datapipe_key``
    holding ``uuid5`` of the compact JSON key tuple (pymilvus does not escape quotes or backslashes
    in primary-key filters, so raw strings are not safe there); the key columns are stored as
    ordinary fields.
    Columns map to ``INT64``, ``DOUBLE``, ``BOOL``, ``VARCHAR`` (strings, ISO datetimes, base64 bytes)
    and ``JSON``; every non-key field is nullable. The collection uses ``Strong`` consistency so
    rows are readable as soon as they are written.
    """

    caps = TableStoreCaps()

    def __init__(
        self,
        uri: str,
        name: str,
        schema: DataSchema,
        embedding_field: Optional[str],
        dim: Optional[int] = None,
        primary_key: Union[str, Sequence[str], None] = None,
        metric_type: str = "COSINE",
        index_type: Optional[str] = None,
        index_params: Optional[Dict[str, Any]] = None,
        token: Optional[str] = None,
        db_name: str = "",
        varchar_max_length: int = 65535,
        client_kwargs: Optional[Dict[str, Any]] = None,
        batch_size: int = 1000,
    ) -> None:
        self.uri = mclient.normalise_uri(str(uri))
        self.name = name
        self.schema = list(schema)
        self.embedding_field = embedding_field
        self.dim = int(dim) if dim is not None else None
        if primary_key is None:
            self.pk_fields = [str(c.name) for c in self.schema if c.primary_key]
        else:
            self.pk_fields = [primary_key] if isinstance(primary_key, str) else [str(k) for k in primary_key]
        self.metric_type = metric_type.upper()
        self.index_type = index_type or ("FLAT" if mclient.is_lite(self.uri) else "AUTOINDEX")
        self.index_params = dict(index_params or {})
        self.token = token
        self.db_name = db_name
        self.varchar_max_length = int(varchar_max_length)
        self.client_kwargs = dict(client_kwargs or {})
        self.batch_size = int(batch_size)
        self._validate()
        self._ready = False

    # ------------------------------------------------------------------ configuration

    def describe(self) -> str:
        return f"MilvusStore(collection={self.name!r}, {self.address})"

    @property
    def address(self) -> str:
        return mclient.describe_address(self.uri)

    def _validate(self) -> None:
        names = [str(c.name) for c in self.schema]
        what = self.describe()
        if not _NAME.match(self.name):
            raise ValueError(f"{what}: invalid collection name (letters, digits and '_' only)")
        bad = [n for n in names if not _NAME.match(n) or n in (HIDDEN_KEY, HIDDEN_VECTOR)]
        if bad:
            raise ValueError(f"{what}: column names {bad} are not valid Milvus field names")
        if not self.pk_fields:
            raise ValueError(f"{what}: no primary key; pass primary_key or mark columns primary_key=True")
        missing = [k for k in self.pk_fields if k not in names]
        if missing:
            raise ValueError(f"{what}: primary key column(s) {missing} are not in the schema {names}")
        if self.batch_size < 1:
            raise ValueError(f"{what}: batch_size must be positive")
        if self.embedding_field is None:
            return
        if self.embedding_field not in names:
            raise ValueError(f"{what}: embedding_field {self.embedding_field!r} is not in the schema {names}")
        if self.embedding_field in self.pk_fields:
            raise ValueError(f"{what}: embedding_field {self.embedding_field!r} cannot be a primary key")
        if not self.dim or self.dim < 1:
            raise ValueError(f"{what}: dim (the vector dimension) is required with embedding_field")

    @property
    def columns(self) -> Dict[str, Column]:
        """Schema columns by name, in schema order."""
        return {str(c.name): c for c in self.schema}

    @property
    def kinds(self) -> Dict[str, str]:
        return {str(c.name): column_kind(c) for c in self.schema}

    @property
    def pk_field_name(self) -> str:
        """The Milvus primary field: the key column itself, or the hidden JSON key field."""
        if len(self.pk_fields) == 1 and self.kinds[self.pk_fields[0]] == INT:
            return self.pk_fields[0]
        return HIDDEN_KEY

    @property
    def vector_field_name(self) -> str:
        return self.embedding_field or HIDDEN_VECTOR

    def _as_key(self, col: Column) -> Column:
        if not col.primary_key:
            col = col._copy()
            col.primary_key = True
        return col

    def get_primary_schema(self) -> DataSchema:
        by_name = {str(c.name): c for c in self.schema}
        return [self._as_key(by_name[k]) for k in self.pk_fields]

    def get_schema(self) -> DataSchema:
        return self.get_primary_schema() + [c for c in self.schema if c.name not in self.pk_fields]

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_ready"] = False
        return state

    # ------------------------------------------------------------------ client, errors, collection

    @property
    def client(self) -> MilvusClient:
        """The underlying ``MilvusClient`` (shared per process and address)."""
        return mclient.get_client(self.uri, self.token, self.db_name, self.client_kwargs)

    def _call(self, method: str, **kwargs: Any) -> Any:
        """``client.<method>(collection_name=self.name, **kwargs)`` with errors turned into ``StoreError``."""
        return self._run(method, lambda c: getattr(c, method)(collection_name=self.name, **kwargs))

    def _run(self, op: str, fn: Callable[[MilvusClient], T]) -> T:
        try:
            return fn(self.client)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - any client/server failure becomes a StoreError
            message = f"MilvusStore: {op} on collection {self.name!r} at {self.address} failed: {type(e).__name__}: {e}"
            raise redacted(StoreError, message, [self.token]) from None  # the original may carry the token

    def _varchar_length(self, col: Column) -> int:
        length = getattr(col.type, "length", None) if isinstance(col.type, String) else None
        return int(length) if length else self.varchar_max_length

    def _milvus_schema(self) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        kinds = self.kinds
        pk = self.pk_field_name
        if pk == HIDDEN_KEY:
            schema.add_field(HIDDEN_KEY, DataType.VARCHAR, is_primary=True, max_length=36)
        for col in self.schema:
            name = str(col.name)
            if name == self.embedding_field:
                continue
            kind = kinds[name]
            extra: Dict[str, Any] = {}
            if _SCALAR_TYPES[kind] == DataType.VARCHAR:
                extra["max_length"] = self._varchar_length(col) if kind == STR else self.varchar_max_length
            if name == pk:
                schema.add_field(name, _SCALAR_TYPES[kind], is_primary=True, **extra)
            else:
                schema.add_field(name, _SCALAR_TYPES[kind], nullable=name not in self.pk_fields, **extra)
        schema.add_field(self.vector_field_name, DataType.FLOAT_VECTOR, dim=self.dim or 2)
        return schema

    def _index_params(self, client: MilvusClient) -> Any:
        params = client.prepare_index_params()
        if self.embedding_field is None:
            params.add_index(field_name=HIDDEN_VECTOR, index_type="FLAT", metric_type="L2")
        else:
            params.add_index(
                field_name=self.embedding_field,
                index_type=self.index_type,
                metric_type=self.metric_type,
                params=self.index_params,
            )
        return params

    def _ensure_collection(self) -> None:
        if self._ready:
            return

        def ensure(client: MilvusClient) -> None:
            if not client.has_collection(self.name):
                try:
                    client.create_collection(
                        self.name,
                        schema=self._milvus_schema(),
                        index_params=self._index_params(client),
                        consistency_level="Strong",
                    )
                except Exception:
                    if not client.has_collection(self.name):  # lost a creation race: fine
                        raise
            state = client.get_load_state(self.name).get("state")
            if str(state) != "Loaded" and getattr(state, "name", "") != "Loaded":
                client.load_collection(self.name)

        self._run("create/load collection", ensure)
        self._ready = True

    # ------------------------------------------------------------------ conversions

    def _check(self, df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
        check_frame(df, columns, self.pk_fields, f"{self.describe()}: {what}")

    def _encode(self, df: pd.DataFrame, name: str) -> List[Any]:
        try:
            return encode_values(df[name], self.columns[name])
        except ValueError as e:
            raise ValueError(f"{self.describe()}: {e}") from e

    def _ids(self, idx: pd.DataFrame) -> List[Any]:
        values = [self._encode(idx, k) for k in self.pk_fields]
        if self.pk_field_name == HIDDEN_KEY:
            return key_strings(values)
        return values[0]

    def _rows(self, df: pd.DataFrame) -> List[Dict[str, Any]]:
        names = [c for c in self.columns if c != self.embedding_field]
        columns = [self._encode(df, c) for c in names]
        if self.pk_field_name == HIDDEN_KEY:
            names.append(HIDDEN_KEY)
            columns.append(self._ids(df))
        names.append(self.vector_field_name)
        if self.embedding_field is None:
            columns.append([[0.0, 0.0]] * len(df))
        else:
            columns.append(vectors_to_lists(df[self.embedding_field], self.describe(), self.dim))
        return [dict(zip(names, row)) for row in zip(*columns)]

    @property
    def _output_fields(self) -> List[str]:
        return [str(c.name) for c in self.schema]

    def _frame(self, rows: Sequence[Dict[str, Any]], with_vectors: bool = True) -> pd.DataFrame:
        vectors = None
        columns = self.get_schema()
        if self.embedding_field is not None:
            if with_vectors:
                # FLOAT_VECTOR values are float32: converting through numpy is exact and C-speed
                vectors = np.asarray([r[self.embedding_field] for r in rows], dtype="float32").tolist() if rows else []
            else:
                columns = [c for c in columns if c.name != self.embedding_field]
        return records_frame(rows, vectors, columns, self.embedding_field)

    def _concat(self, frames: List[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        if not frames:
            return self._frame([])
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)

    def _chunks(self, df: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for start in range(0, len(df), self.batch_size):
            yield df.iloc[start : start + self.batch_size]

    # ------------------------------------------------------------------ TableStore API

    def insert_rows(self, df: DataDF) -> None:
        """Upsert ``df``'s rows, ``batch_size`` per request."""
        if len(df) == 0:
            return
        self._check(df, self._output_fields, "insert_rows data")
        if df.duplicated(self.pk_fields).any():
            raise ValueError(f"{self.describe()}: insert_rows data has duplicate primary keys")
        self._ensure_collection()
        for chunk in self._chunks(df):
            rows = self._rows(chunk)
            self._call("upsert", data=rows)

    def delete_rows(self, idx: IndexDF) -> None:
        """Delete the entities of ``idx``'s keys; missing keys are ignored."""
        if len(idx) == 0:
            return
        self._check(idx, self.pk_fields, "delete_rows index")
        self._ensure_collection()
        for chunk in self._chunks(idx):
            ids = self._ids(chunk)
            self._call("delete", ids=ids)

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        """Entities for ``idx``'s keys (get by primary key), or all of them (query iterator) when None."""
        if idx is None:
            return DataDF(self._concat(list(self._iterate(16384))))
        if len(idx) == 0:
            return DataDF(self._frame([]))
        self._check(idx, self.pk_fields, "read_rows index")
        self._ensure_collection()
        frames = []
        for chunk in self._chunks(idx[self.pk_fields].drop_duplicates()):
            ids = self._ids(chunk)
            rows = self._call("get", ids=ids, output_fields=self._output_fields)
            frames.append(self._frame(list(rows)))
        return DataDF(self._concat(frames))

    def _page_rows(self, chunksize: int) -> int:
        """Rows per query-iterator page: every Milvus query costs a fixed overhead (about 0.5 s on
        Milvus Lite), so pages are large (up to Milvus' 16384, within ~2M vector floats of memory)
        and are sliced into ``chunksize`` frames."""
        budget = max(1, 2_000_000 // (self.dim or 2))
        return max(1, min(16384, max(int(chunksize), budget)))

    def _iterate(self, chunksize: int) -> Iterator[pd.DataFrame]:
        """All entities as frames of at most ``chunksize`` rows."""
        self._ensure_collection()
        chunksize = max(1, int(chunksize))
        page = self._page_rows(chunksize)
        iterator = self._call("query_iterator", batch_size=page, output_fields=self._output_fields)
        try:
            while True:
                rows = list(self._run("query_iterator", lambda c: iterator.next()))
                if not rows:
                    return
                for start in range(0, len(rows), chunksize):
                    yield self._frame(rows[start : start + chunksize])
        finally:
            iterator.close()

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        """Every entity, ``chunksize`` at a time, through a query iterator."""
        empty = True
        for frame in self._iterate(chunksize):
            empty = False
            yield DataDF(frame)
        if empty:
            yield DataDF(self._frame([]))

    def search(self, vector: Any, limit: int = 10, filter: str = "", with_vectors: bool = False) -> pd.DataFrame:
        """The ``limit`` rows nearest to ``vector`` (best first) with a ``score`` column (Milvus distance).

        ``filter`` is a Milvus boolean expression, e.g. ``'category == "news"'``.
        """
        if self.embedding_field is None:
            raise ValueError(f"{self.describe()}: a store without embedding_field cannot search")
        self._ensure_collection()
        query = vectors_to_lists(pd.Series([vector], name=self.embedding_field), self.describe(), self.dim)
        fields = self._output_fields if with_vectors else [f for f in self._output_fields if f != self.embedding_field]
        hits = self._call(
            "search",
            data=query,
            limit=limit,
            filter=filter,
            output_fields=fields,
            anns_field=self.embedding_field,
            search_params={"metric_type": self.metric_type},
        )[0]
        frame = self._frame([h["entity"] for h in hits], with_vectors=with_vectors)
        frame["score"] = pd.Series([h["distance"] for h in hits], dtype="float64")
        return frame
