"""``QdrantStore`` (one collection) and ``QdrantShardedStore`` (one collection per shard key value).

Rows are Qdrant points. The point id is derived from the primary key (see ``convert.point_ids``)
and every non-vector column, keys included, is kept in the payload, so rows read back with their
original keys. All operations are batched: one request per ``batch_size`` rows, never per row.
"""

from __future__ import annotations

import re
import string
import warnings
from contextlib import AbstractContextManager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar, Union, cast

import pandas as pd
from qdrant_client import QdrantClient, models
from sqlalchemy import Column

from datapipe.errors import StoreError, redact
from datapipe.run_config import RunConfig
from datapipe.store.json_codec import INT, column_kind
from datapipe.store.table_store import TableStore, TableStoreCaps
from datapipe.store.vectors import check_frame
from datapipe.types import DataDF, DataSchema, IndexDF
from datapipe_qdrant import client as qclient
from datapipe_qdrant.convert import encode_values, point_ids, records_frame, vectors_to_lists
from datapipe_qdrant.params import CollectionParams

T = TypeVar("T")
PayloadIndexSpec = Union[str, models.PayloadSchemaType, Any]


class _QdrantBase(TableStore):
    """Shared machinery: schema handling, client access, batched point operations."""

    caps = TableStoreCaps()

    def __init__(
        self,
        url: str,
        schema: DataSchema,
        pk_field: Union[str, Sequence[str], None],
        embedding_field: Optional[str],
        collection_params: Optional[CollectionParams],
        index_schema: Optional[Mapping[str, PayloadIndexSpec]] = None,
        api_key: Optional[str] = None,
        client_kwargs: Optional[Dict[str, Any]] = None,
        batch_size: int = 1000,
    ) -> None:
        self.url = str(url)
        self.schema = list(schema)
        self.collection_params = collection_params if collection_params is not None else CollectionParams()
        self.embedding_field = embedding_field
        self.index_schema = dict(index_schema or {})
        self.api_key = api_key
        self.client_kwargs = dict(client_kwargs or {})
        self.batch_size = int(batch_size)
        self.pk_fields = self._pk_fields(pk_field)
        self._validate()
        self._server_client: Optional[QdrantClient] = None
        self._ready: Set[str] = set()

    # ------------------------------------------------------------------ configuration

    def _pk_fields(self, pk_field: Union[str, Sequence[str], None]) -> List[str]:
        if pk_field is None:
            return [str(c.name) for c in self.schema if c.primary_key]
        return [pk_field] if isinstance(pk_field, str) else [str(f) for f in pk_field]

    def _validate(self) -> None:
        names = [str(c.name) for c in self.schema]
        what = self.describe()
        if not self.pk_fields:
            raise ValueError(f"{what}: no primary key; pass pk_field or mark columns primary_key=True")
        missing = [f for f in self.pk_fields if f not in names]
        if missing:
            raise ValueError(f"{what}: primary key column(s) {missing} are not in the schema {names}")
        if self.batch_size < 1:
            raise ValueError(f"{what}: batch_size must be positive")
        if self.embedding_field is None:
            if self.collection_params.has_vectors():
                raise ValueError(f"{what}: collection_params define vectors but embedding_field is None")
            return
        if self.embedding_field not in names:
            raise ValueError(f"{what}: embedding_field {self.embedding_field!r} is not in the schema {names}")
        if self.embedding_field in self.pk_fields:
            raise ValueError(f"{what}: embedding_field {self.embedding_field!r} cannot be a primary key")
        if not self.collection_params.has_vectors():
            raise ValueError(f"{what}: collection_params must define the vectors (e.g. size=..., distance=...)")
        self.vector_name()  # validates named vectors

    def vector_name(self) -> Optional[str]:
        """The name of the vector in a named-vectors collection, None for a single unnamed vector."""
        cfg = self.collection_params.vectors_config()
        if isinstance(cfg, models.VectorParams) or not cfg:
            return None
        if self.embedding_field in cfg:
            return self.embedding_field
        if len(cfg) == 1:
            return next(iter(cfg))
        raise ValueError(
            f"{self.describe()}: collection_params has vectors {sorted(cfg)}; "
            f"embedding_field {self.embedding_field!r} must name one of them"
        )

    @property
    def columns(self) -> Dict[str, Column]:
        """Schema columns by name, in schema order."""
        return {str(c.name): c for c in self.schema}

    def _as_key(self, col: Column) -> Column:
        if col.name in self.pk_fields and not col.primary_key:
            col = col._copy()
            col.primary_key = True
        return col

    def get_primary_schema(self) -> DataSchema:
        by_name = {str(c.name): c for c in self.schema}
        return [self._as_key(by_name[f]) for f in self.pk_fields]

    def get_schema(self) -> DataSchema:
        keys = self.get_primary_schema()
        return keys + [c for c in self.schema if c.name not in self.pk_fields]

    @property
    def address(self) -> str:
        return qclient.describe_address(self.url)

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_server_client"] = None
        state["_ready"] = set()
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ client and errors

    def _client(self) -> Tuple[QdrantClient, AbstractContextManager[Any]]:
        if qclient.is_server_url(self.url):
            if self._server_client is None:
                self._server_client = qclient.server_client(self.url, self.api_key, self.client_kwargs)
            return self._server_client, qclient.no_lock()
        client, lock = qclient.embedded_client(self.url)
        return client, lock

    @property
    def client(self) -> QdrantClient:
        """The underlying ``QdrantClient`` (shared per process for embedded modes), e.g. for searches."""
        return self._client()[0]

    def _error(self, op: str, collection: str, e: Exception) -> StoreError:
        return StoreError(
            redact(
                f"{type(self).__name__}: {op} on collection {collection!r} at {self.address} failed: "
                f"{type(e).__name__}: {e}",
                [self.api_key],
            )
        )

    def _call(self, method: str, collection: str, **kwargs: Any) -> Any:
        """``client.<method>(**kwargs)`` with errors turned into ``StoreError``."""
        return self._run(method, collection, lambda c: getattr(c, method)(**kwargs))

    def _run(self, op: str, collection: str, fn: Callable[[QdrantClient], T]) -> T:
        try:
            client, lock = self._client()
            with lock:
                return fn(client)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - any client/server failure becomes a StoreError
            raise self._error(op, collection, e) from None  # the original may carry the secret

    def _ensure_collection(self, collection: str) -> None:
        if collection in self._ready:
            return

        def create(client: QdrantClient) -> None:
            if client.collection_exists(collection):
                return
            try:
                client.create_collection(collection, **self.collection_params.create_kwargs())
            except Exception:
                if not client.collection_exists(collection):  # lost a creation race: fine
                    raise
                return
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for field_name, field_schema in self.index_schema.items():
                    client.create_payload_index(collection, field_name, field_schema=cast(Any, field_schema))

        self._run("create collection", collection, create)
        self._ready.add(collection)

    # ------------------------------------------------------------------ conversions

    def _check_columns(self, df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
        check_frame(df, columns, self.pk_fields, f"{self.describe()}: {what}")

    def _encode(self, df: pd.DataFrame, name: str) -> List[Any]:
        try:
            return encode_values(df[name], self.columns[name])
        except ValueError as e:
            raise ValueError(f"{self.describe()}: {e}") from e

    def _ids(self, idx: pd.DataFrame) -> List[Any]:
        key_values = [self._encode(idx, k) for k in self.pk_fields]
        single_int = len(self.pk_fields) == 1 and column_kind(self.columns[self.pk_fields[0]]) == INT
        return point_ids(key_values, int_passthrough=single_int)

    def _batch(self, df: pd.DataFrame) -> models.Batch:
        payload_cols = [c for c in self.columns if c != self.embedding_field]
        columns = [self._encode(df, c) for c in payload_cols]
        payloads = [dict(zip(payload_cols, row)) for row in zip(*columns)]
        ids = self._ids(df)
        vectors: Any = {}
        if self.embedding_field is not None:
            name = self.vector_name()
            size = self.collection_params.vector_size(name)
            lists = vectors_to_lists(df[self.embedding_field], self.describe(), size)
            vectors = {name: lists} if name is not None else lists
        return models.Batch(ids=ids, vectors=vectors, payloads=payloads)

    def _frame(self, records: Sequence[Any], with_vectors: bool = True) -> pd.DataFrame:
        vectors = None
        columns = self.get_schema()
        if self.embedding_field is not None:
            name = self.vector_name()
            raw = [r.vector for r in records]
            vectors = [v.get(name) if isinstance(v, dict) else v for v in raw] if name is not None else raw
            if not with_vectors:
                columns = [c for c in columns if c.name != self.embedding_field]
        return records_frame([r.payload or {} for r in records], vectors, columns, self.embedding_field)

    # ------------------------------------------------------------------ per-collection operations

    def _chunks(self, df: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for start in range(0, len(df), self.batch_size):
            yield df.iloc[start : start + self.batch_size]

    def _upsert(self, collection: str, df: pd.DataFrame) -> None:
        self._ensure_collection(collection)
        for chunk in self._chunks(df):
            batch = self._batch(chunk)
            self._call("upsert", collection, collection_name=collection, points=batch, wait=True)

    def _delete(self, collection: str, idx: pd.DataFrame) -> None:
        self._ensure_collection(collection)
        for chunk in self._chunks(idx):
            selector = models.PointIdsList(points=self._ids(chunk))
            self._call("delete", collection, collection_name=collection, points_selector=selector, wait=True)

    def _retrieve(self, collection: str, idx: pd.DataFrame) -> pd.DataFrame:
        self._ensure_collection(collection)
        idx = idx[self.pk_fields].drop_duplicates()
        frames = []
        with_vectors = self.embedding_field is not None
        for chunk in self._chunks(idx):
            ids = self._ids(chunk)
            records = self._call(
                "retrieve",
                collection,
                collection_name=collection,
                ids=ids,
                with_payload=True,
                with_vectors=with_vectors,
            )
            frames.append(self._frame(records))
        return self._concat(frames)

    def _scroll(self, collection: str, chunksize: int) -> Iterator[pd.DataFrame]:
        self._ensure_collection(collection)
        offset: Any = None
        while True:
            records, offset = self._call(
                "scroll",
                collection,
                collection_name=collection,
                limit=chunksize,
                offset=offset,
                with_payload=True,
                with_vectors=self.embedding_field is not None,
            )
            if records:
                yield self._frame(records)
            if offset is None:
                return

    def _search(
        self, collection: str, vector: Any, limit: int, query_filter: Optional[models.Filter], with_vectors: bool
    ) -> pd.DataFrame:
        if self.embedding_field is None:
            raise ValueError(f"{self.describe()}: a store without embedding_field cannot search")
        self._ensure_collection(collection)
        query = vectors_to_lists(
            pd.Series([vector], name=self.embedding_field),
            self.describe(),
            self.collection_params.vector_size(self.vector_name()),
        )[0]
        response = self._call(
            "query_points",
            collection,
            collection_name=collection,
            query=query,
            using=self.vector_name(),
            limit=limit,
            query_filter=query_filter,
            with_payload=True,
            with_vectors=with_vectors,
        )
        points = response.points
        frame = self._frame(points, with_vectors=with_vectors)
        frame["score"] = pd.Series([p.score for p in points], dtype="float64")
        return frame

    def _concat(self, frames: List[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        if not frames:
            return self._frame([])
        if len(frames) == 1:
            return frames[0].reset_index(drop=True)
        return pd.concat(frames, ignore_index=True)


    # ---------------------------------------------------------------- routing (one or many collections)

    def _groups(self, df: pd.DataFrame) -> Iterator[Tuple[str, pd.DataFrame]]:
        """``(collection, rows)`` pairs: where each row of ``df`` lives."""
        raise NotImplementedError

    def _collections(self) -> List[str]:
        """Every collection this store's rows may be in."""
        raise NotImplementedError

    def insert_rows(self, df: DataDF) -> None:
        """Upsert ``df``'s rows as points, ``batch_size`` per request, into their collections."""
        if len(df) == 0:
            return
        self._check_columns(df, [str(c.name) for c in self.schema], "insert_rows data")
        if df.duplicated(self.pk_fields).any():
            raise ValueError(f"{self.describe()}: insert_rows data has duplicate primary keys")
        for collection, part in self._groups(df):
            self._upsert(collection, part)

    def delete_rows(self, idx: IndexDF) -> None:
        """Delete the points of ``idx``'s keys; missing keys are ignored."""
        if len(idx) == 0:
            return
        self._check_columns(idx, self.pk_fields, "delete_rows index")
        for collection, part in self._groups(idx):
            self._delete(collection, part)

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        """Points for ``idx``'s keys (retrieve by id), or every point (scroll) when ``idx`` is None."""
        if idx is None:
            frames = [f for coll in self._collections() for f in self._scroll(coll, self.batch_size)]
            return DataDF(self._concat(frames))
        if len(idx) == 0:
            return DataDF(self._frame([]))
        self._check_columns(idx, self.pk_fields, "read_rows index")
        return DataDF(self._concat([self._retrieve(coll, part) for coll, part in self._groups(idx)]))

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        """Every point, one scroll page of ``chunksize`` points at a time."""
        empty = True
        for collection in self._collections():
            for frame in self._scroll(collection, chunksize):
                empty = False
                yield DataDF(frame)
        if empty:
            yield DataDF(self._frame([]))


class QdrantStore(_QdrantBase):
    """A table stored as the points of one Qdrant collection.

    Args:
        name: the collection name (created on first use with ``collection_params``).
        url: ``http(s)://host:6333`` for a server, ``":memory:"`` or a directory path for embedded Qdrant.
        schema: every column (SQLAlchemy ``Column``); the embedding column may use any type (e.g. ``JSON``).
        pk_field: the primary-key column name, or a list of names for a composite key
            (None: the columns marked ``primary_key=True``).
        embedding_field: the column holding each row's vector (list or numpy array of floats);
            None for a payload-only collection.
        collection_params: ``CollectionParams`` (vector size, distance, ...).
        index_schema: ``{payload_field: schema}`` payload indexes created with the collection,
            e.g. ``{"category": "keyword"}`` (``models.PayloadSchemaType`` or index params).
        api_key: Qdrant API key for servers (never shown in messages).
        client_kwargs: extra ``QdrantClient`` arguments for servers (``timeout``, ``prefer_grpc``...).
        batch_size: points per request.

    Point ids: a single unsigned-integer key is used as the point id; other keys map to
    ``uuid5`` of the JSON key tuple. Keys and all other non-vector columns live in the payload.
    Vectors read back as lists of floats (with ``Cosine`` distance Qdrant stores them normalised).
    """

    def __init__(
        self,
        name: str,
        url: str,
        schema: DataSchema,
        pk_field: Union[str, Sequence[str], None],
        embedding_field: Optional[str],
        collection_params: Optional[CollectionParams],
        index_schema: Optional[Mapping[str, PayloadIndexSpec]] = None,
        api_key: Optional[str] = None,
        client_kwargs: Optional[Dict[str, Any]] = None,
        batch_size: int = 1000,
    ) -> None:
        self.name = name
        super().__init__(
            url, schema, pk_field, embedding_field, collection_params, index_schema, api_key, client_kwargs, batch_size
        )

    def describe(self) -> str:
        return f"QdrantStore(collection={self.name!r}, {self.address})"

    def _groups(self, df: pd.DataFrame) -> Iterator[Tuple[str, pd.DataFrame]]:
        yield self.name, df

    def _collections(self) -> List[str]:
        return [self.name]

    def search(
        self,
        vector: Any,
        limit: int = 10,
        query_filter: Optional[models.Filter] = None,
        with_vectors: bool = False,
    ) -> pd.DataFrame:
        """The ``limit`` rows nearest to ``vector``, best first, with a ``score`` column."""
        return self._search(self.name, vector, limit, query_filter, with_vectors)


class QdrantShardedStore(_QdrantBase):
    """A table spread over several collections, one per value of the shard key column(s).

    ``name_pattern`` names the collection with ``{column}`` placeholders, e.g. ``"docs_{tenant_id}"``:
    a row with ``tenant_id == 7`` lives in collection ``docs_7``. Placeholder columns must be
    primary-key columns (deletes and reads are routed by key). Other arguments as ``QdrantStore``.
    Writes, deletes and reads are grouped by shard: one request per shard and batch.
    ``read_rows()`` without keys reads every existing collection that matches the pattern.
    """

    def __init__(
        self,
        name_pattern: str,
        url: str,
        schema: DataSchema,
        pk_field: Union[str, Sequence[str], None],
        embedding_field: Optional[str],
        collection_params: Optional[CollectionParams],
        index_schema: Optional[Mapping[str, PayloadIndexSpec]] = None,
        api_key: Optional[str] = None,
        client_kwargs: Optional[Dict[str, Any]] = None,
        batch_size: int = 1000,
    ) -> None:
        self.name_pattern = name_pattern
        self.shard_fields = [f for _, f, _, _ in string.Formatter().parse(name_pattern) if f]
        super().__init__(
            url, schema, pk_field, embedding_field, collection_params, index_schema, api_key, client_kwargs, batch_size
        )
        if not self.shard_fields:
            raise ValueError(f"{self.describe()}: name_pattern has no {{column}} placeholder")
        not_keys = [f for f in self.shard_fields if f not in self.pk_fields]
        if not_keys:
            raise ValueError(f"{self.describe()}: shard column(s) {not_keys} must be primary-key columns")

    def describe(self) -> str:
        return f"QdrantShardedStore(pattern={self.name_pattern!r}, {self.address})"

    def collection_name(self, shard_values: Mapping[str, Any]) -> str:
        """The collection for one combination of shard values."""
        return self.name_pattern.format(**shard_values)

    def _groups(self, df: pd.DataFrame) -> Iterator[Tuple[str, pd.DataFrame]]:
        grouped = df.groupby(self.shard_fields, sort=False, dropna=False)
        for values, part in grouped:
            values = values if isinstance(values, tuple) else (values,)
            yield self.collection_name(dict(zip(self.shard_fields, values))), part

    def _collections(self) -> List[str]:
        """Every existing collection that matches ``name_pattern``."""
        pieces = []
        for literal, field_name, _, _ in string.Formatter().parse(self.name_pattern):
            pieces.append(re.escape(literal))
            if field_name:
                pieces.append(".+?")
        regex = re.compile("^" + "".join(pieces) + "$")
        response = self._call("get_collections", self.name_pattern)
        return sorted(c.name for c in response.collections if regex.match(c.name))

    def search(
        self,
        shard_values: Mapping[str, Any],
        vector: Any,
        limit: int = 10,
        query_filter: Optional[models.Filter] = None,
        with_vectors: bool = False,
    ) -> pd.DataFrame:
        """The ``limit`` rows of one shard nearest to ``vector``, best first, with a ``score`` column."""
        return self._search(self.collection_name(shard_values), vector, limit, query_filter, with_vectors)
