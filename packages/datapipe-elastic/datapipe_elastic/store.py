"""``ElasticStore``: a Datapipe table kept as documents of one Elasticsearch index.

Layout (see the package README):

* one document per row, in index ``index``; the document ``_id`` is derived from the primary key
  (:func:`document_ids`): the key value as text for a single key (``"42"``, ``"img-7"``), the compact
  JSON array of the key values for a composite key (``[7,"shop1"]``), ``sha256:<hex>`` of that text
  when it is longer than Elasticsearch's 512-byte limit;
* the document body holds every column, keys included (so documents can be searched by key),
  under its field name (``key_name_remapping`` renames columns to fields), values encoded as JSON by
  column type (see :mod:`datapipe.store.json_codec`).

Writes and deletes go through the bulk API (``helpers.streaming_bulk``), reads by key through
``mget``, reading everything pages with scroll (``helpers.scan``) after a refresh.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import pandas as pd
from sqlalchemy import Column

from datapipe.errors import mask_url, redact
from datapipe.run_config import RunConfig
from datapipe.store.json_codec import decode_frame, dumps, empty_frame, encode_column
from datapipe.store.table_store import SchemaStore, StoreError, TableStoreCaps
from datapipe.types import DataDF, DataSchema, IndexDF

# Elasticsearch rejects ``_id`` values longer than 512 bytes.
MAX_ID_BYTES = 512
# Documents per bulk request and ids per mget request.
BULK_CHUNK = 1000
MGET_CHUNK = 1000


def document_id_texts(key_values: Sequence[Sequence[Any]]) -> List[str]:
    """Document ids for rows given as columns of JSON-ready key values (one list per key column)."""
    if len(key_values) == 1:
        ids = [v if isinstance(v, str) else dumps(v) for v in key_values[0]]
    else:
        ids = [dumps(list(row)) for row in zip(*key_values)]
    return [_limit_id(i) for i in ids]


def _limit_id(doc_id: str) -> str:
    if len(doc_id.encode("utf-8")) <= MAX_ID_BYTES:
        return doc_id
    return "sha256:" + hashlib.sha256(doc_id.encode("utf-8")).hexdigest()


def hosts_of(es_kwargs: Mapping[str, Any]) -> List[str]:
    """The server addresses named in ``es_kwargs`` (``hosts`` as str, list of str or dicts; ``cloud_id``)."""
    hosts = es_kwargs.get("hosts")
    if hosts is None and "cloud_id" in es_kwargs:
        return [f"cloud_id={str(es_kwargs['cloud_id']).split(':')[0]}"]
    if hosts is None:
        return []
    if isinstance(hosts, (str, dict)):
        hosts = [hosts]
    out = []
    for h in hosts:
        if isinstance(h, dict):
            scheme = h.get("scheme", "http")
            out.append(f"{scheme}://{h.get('host', 'localhost')}:{h.get('port', 9200)}{h.get('path_prefix', '')}")
        else:
            out.append(str(h))
    return out


def secrets_of(es_kwargs: Mapping[str, Any]) -> List[str]:
    """Every credential in ``es_kwargs`` (to be scrubbed from error messages)."""
    from urllib.parse import urlsplit

    secrets: List[str] = []
    for name in ("basic_auth", "http_auth"):
        auth = es_kwargs.get(name)
        if isinstance(auth, (tuple, list)) and len(auth) == 2:
            secrets.append(str(auth[1]))
        elif isinstance(auth, str) and ":" in auth:
            secrets.append(auth.split(":", 1)[1])
    for name in ("api_key", "bearer_auth"):
        value = es_kwargs.get(name)
        if isinstance(value, (tuple, list)):
            secrets.extend(str(v) for v in value)
        elif value:
            secrets.append(str(value))
    for host in hosts_of(es_kwargs):
        try:
            password = urlsplit(host).password
        except ValueError:
            password = None
        if password:
            secrets.append(password)
    hosts = es_kwargs.get("hosts")
    for h in hosts if isinstance(hosts, list) else [hosts]:
        if isinstance(h, dict) and h.get("http_auth"):
            secrets.extend(secrets_of({"http_auth": h["http_auth"]}))
    return [s for s in secrets if s]


class ElasticStore(SchemaStore):
    """A table stored as documents of the Elasticsearch index ``index`` (see the module docstring).

    ``es_kwargs`` are passed to ``elasticsearch.Elasticsearch`` (``hosts``, ``basic_auth``, ``api_key``,
    ``ca_certs``...). ``key_name_remapping`` maps column names to document field names. ``mapping`` is the
    index mapping used when the store creates the index: either the mappings body
    (``{"properties": {...}}``) or a full create-index body (``{"mappings": ..., "settings": ...}``).
    The client connects lazily and is recreated after unpickling. Server errors are raised as
    ``StoreError`` naming the store, the index and the server address (never credentials).
    """

    caps = TableStoreCaps()
    init_args = ("index", "data_sql_schema", "es_kwargs", "key_name_remapping", "mapping")

    def __init__(
        self,
        index: str,
        data_sql_schema: DataSchema,
        es_kwargs: Dict[str, Any],
        key_name_remapping: Optional[Dict[str, str]] = None,
        mapping: Optional[Dict[str, Any]] = None,
    ) -> None:
        if not isinstance(index, str) or not index:
            raise ValueError(f"ElasticStore: index must be a non-empty string, got {index!r}")
        self.index = index
        self.init_schema(f"ElasticStore {index!r}", data_sql_schema)
        self.es_kwargs = dict(es_kwargs)
        self.key_name_remapping = dict(key_name_remapping or {})
        self.mapping = mapping
        self._client: Any = None
        self._index_ready = False
        unknown = [c for c in self.key_name_remapping if c not in self.columns]
        if unknown:
            raise ValueError(f"ElasticStore {index!r}: key_name_remapping names unknown column(s) {unknown}")
        self._fields = {c: self.key_name_remapping.get(c, c) for c in self.columns}
        if len(set(self._fields.values())) != len(self._fields):
            raise ValueError(f"ElasticStore {index!r}: key_name_remapping maps two columns to one field")

    # ---------------------------------------------------------------- pickling and description

    @property
    def address(self) -> str:
        """The server address(es), credentials masked."""
        hosts = hosts_of(self.es_kwargs)
        return ", ".join(self._scrub(mask_url(h)) for h in hosts) if hosts else "<default host>"

    def describe(self) -> str:
        return f"ElasticStore({self.index!r} at {self.address})"

    # ---------------------------------------------------------------- client and errors

    @property
    def client(self) -> Any:
        """The ``Elasticsearch`` client, created on first use."""
        if self._client is None:
            with self._errors("connect"):
                from elasticsearch import Elasticsearch

                self._client = Elasticsearch(**self.es_kwargs)
        return self._client

    def _scrub(self, text: str) -> str:
        return redact(text, secrets_of(self.es_kwargs))

    def _fail(self, action: str, detail: str) -> StoreError:
        return StoreError(
            f"ElasticStore table {self.index!r} (index {self.index!r} at {self.address}): "
            f"{action} failed: {self._scrub(detail)}"
        )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn client errors into ``StoreError`` naming store, index and masked address."""
        from elasticsearch import ApiError, TransportError
        from elasticsearch.helpers import BulkIndexError, ScanError

        try:
            yield
        except (ApiError, TransportError, BulkIndexError, ScanError) as e:
            raise self._fail(action, f"{type(e).__name__}: {e}") from None
        except ValueError as e:  # bad es_kwargs (e.g. a malformed host URL)
            if self._client is None:
                raise self._fail(action, f"{type(e).__name__}: {e}") from None
            raise

    def ensure_index(self) -> None:
        """Create the index (with ``mapping``) unless it exists. Called before the first write."""
        if self._index_ready:
            return
        from elasticsearch import BadRequestError

        with self._errors("creating the index"):
            if not self.client.indices.exists(index=self.index):
                body: Dict[str, Any] = {}
                if self.mapping:
                    if "mappings" in self.mapping or "settings" in self.mapping:
                        body = dict(self.mapping)
                    else:
                        body = {"mappings": self.mapping}
                try:
                    self.client.indices.create(index=self.index, **body)
                except BadRequestError as e:
                    if e.error != "resource_already_exists_exception":
                        raise
        self._index_ready = True

    # ---------------------------------------------------------------- documents

    def _encode(self, df: pd.DataFrame, columns: Sequence[Column]) -> Dict[str, List[Any]]:
        try:
            return {str(c.name): encode_column(df[str(c.name)], c) for c in columns if str(c.name) in df.columns}
        except ValueError as e:
            raise ValueError(f"{self.describe()}: {e}") from e

    def document_ids(self, df: pd.DataFrame) -> List[str]:
        """The ``_id`` of each row of ``df`` (from its primary-key columns)."""
        encoded = self._encode(df, self.key_columns)
        return document_id_texts([encoded[str(c.name)] for c in self.key_columns])

    def documents(self, df: pd.DataFrame) -> List[Dict[str, Any]]:
        """The document body of each row of ``df``: every column under its field name."""
        encoded = self._encode(df, self.data_sql_schema)
        fields = [self._fields[name] for name in encoded]
        return [dict(zip(fields, row)) for row in zip(*encoded.values())]

    def rows_from_documents(self, sources: Sequence[Mapping[str, Any]]) -> DataDF:
        """Rows from document bodies (the inverse of :meth:`documents`)."""
        if len(sources) == 0:
            return DataDF(empty_frame(self.data_sql_schema))
        columns = {name: [s.get(field) for s in sources] for name, field in self._fields.items()}
        return DataDF(decode_frame(columns, self.data_sql_schema))

    # ---------------------------------------------------------------- writes

    def _bulk(self, actions: List[Dict[str, Any]], action: str, ignore_missing: bool = False) -> None:
        from elasticsearch.helpers import streaming_bulk

        errors: List[Any] = []
        with self._errors(action):
            for ok, item in streaming_bulk(
                self.client, actions, chunk_size=BULK_CHUNK, raise_on_error=False, raise_on_exception=True
            ):
                if ok:
                    continue
                result = next(iter(item.values()))
                if ignore_missing and result.get("status") == 404:
                    continue
                errors.append(result)
        if errors:
            sample = [{k: e.get(k) for k in ("_id", "status", "error")} for e in errors[:3]]
            raise self._fail(action, f"{len(errors)} documents failed, e.g. {sample}")

    def insert_rows(self, df: DataDF) -> None:
        if len(df) == 0:
            return
        self.check_columns(df)
        ids = self.document_ids(df)
        docs = self.documents(df)
        self.ensure_index()
        actions = [{"_op_type": "index", "_index": self.index, "_id": i, "_source": d} for i, d in zip(ids, docs)]
        self._bulk(actions, f"indexing {len(df)} documents")

    def delete_rows(self, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        self.check_columns(idx, keys_only=True)
        ids = self.document_ids(idx)
        actions = [{"_op_type": "delete", "_index": self.index, "_id": i} for i in ids]
        self._bulk(actions, f"deleting {len(idx)} documents", ignore_missing=True)

    # ---------------------------------------------------------------- reads

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        if idx is None:
            chunks = list(self._scan(BULK_CHUNK))
            return DataDF(pd.concat(chunks, ignore_index=True)) if len(chunks) > 1 else chunks[0]
        if len(idx) == 0:
            return DataDF(empty_frame(self.data_sql_schema))
        self.check_columns(idx, keys_only=True)
        ids = list(dict.fromkeys(self.document_ids(idx)))
        from elasticsearch import NotFoundError

        sources: List[Mapping[str, Any]] = []
        with self._errors(f"reading {len(ids)} documents"):
            for start in range(0, len(ids), MGET_CHUNK):
                try:
                    resp = self.client.mget(index=self.index, ids=ids[start : start + MGET_CHUNK])
                except NotFoundError:  # the index does not exist (yet): no rows
                    break
                sources.extend(self._found_sources(resp["docs"]))
        return self.rows_from_documents(sources)

    def _found_sources(self, docs: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
        found = []
        for doc in docs:
            if doc.get("found"):
                found.append(doc["_source"])
            elif "error" in doc and _error_type(doc["error"]) != "index_not_found_exception":
                raise self._fail("reading documents", f"document {doc.get('_id')!r}: {doc['error']}")
        return found

    def _scan(self, chunksize: int) -> Iterator[DataDF]:
        """Every document in chunks of at most ``chunksize`` rows; one empty frame for an empty index."""
        from elasticsearch import NotFoundError
        from elasticsearch.helpers import scan

        buffer: List[Mapping[str, Any]] = []
        emitted = False
        with self._errors("scanning the index"):
            try:
                self.client.indices.refresh(index=self.index)
            except NotFoundError:
                yield self.rows_from_documents([])
                return
            for hit in scan(self.client, index=self.index, query={"query": {"match_all": {}}}, size=chunksize):
                buffer.append(hit["_source"])
                if len(buffer) >= chunksize:
                    emitted = True
                    yield self.rows_from_documents(buffer)
                    buffer = []
        if buffer or not emitted:
            yield self.rows_from_documents(buffer)

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        """Every document in chunks (scroll after a refresh, so rows written just before are seen)."""
        yield from self._scan(chunksize)


def _error_type(error: Any) -> Optional[str]:
    if isinstance(error, Mapping):
        return error.get("type")  # type: ignore[no-any-return]
    return None
