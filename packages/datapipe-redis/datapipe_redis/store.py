"""``RedisStore``: a Datapipe table kept in one Redis hash.

Key layout (see the package README):

* the table is the Redis hash named ``name``;
* each row is one field of that hash: the field is the JSON array of the row's primary-key
  values in key order (``[42]``, ``["img", 7]``), the value is a JSON object of the row's
  non-key columns (``{"title":"x","score":0.5}``).

Every batch operation is one pipeline, i.e. one network round trip: writes are ``HSET`` with
many fields per command, reads ``HMGET``, deletes ``HDEL``; reading the whole table pages
with ``HSCAN``. With ``cluster_mode=True`` the client is ``redis.cluster.RedisCluster``; the
whole table lives in the slot of its hash key.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pandas as pd

from datapipe.errors import mask_url, redact
from datapipe.run_config import RunConfig
from datapipe.store.json_codec import (
    decode_frame,
    empty_frame,
    encode_column,
    json_arrays,
    json_objects,
    json_texts,
    loads_many,
)
from datapipe.store.table_store import SchemaStore, StoreError, TableStoreCaps
from datapipe.types import DataDF, DataSchema, IndexDF

# Fields per HSET/HMGET/HDEL command: big enough to amortise, small enough not to block the server.
COMMAND_BATCH = 5000


class RedisStore(SchemaStore):
    """A table stored in the Redis hash ``name`` (one field per row; see the module docstring).

    ``connection`` is a redis URL (``redis://[:password@]host:port/db``, ``rediss://`` for TLS);
    ``password`` overrides the URL's. ``data_sql_schema`` lists SQLAlchemy ``Column``\\ s, the
    primary-key ones marked ``primary_key=True``. The client connects lazily on first use and is
    recreated after unpickling. Server errors are raised as ``StoreError`` naming the store, the
    table and the server address (never the password).
    """

    caps = TableStoreCaps()
    init_args = ("connection", "name", "data_sql_schema", "cluster_mode", "password")

    def __init__(
        self,
        connection: str,
        name: str,
        data_sql_schema: DataSchema,
        cluster_mode: bool = False,
        password: Optional[str] = None,
    ) -> None:
        if not isinstance(connection, str) or not connection:
            raise ValueError(f"RedisStore {name!r}: connection must be a redis URL string, got {connection!r}")
        scheme = connection.split("://", 1)[0] if "://" in connection else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"RedisStore {name!r}: connection {mask_url(connection)!r} is not a redis URL "
                "(redis://host:port/db, rediss:// or unix://)"
            )
        self.connection = connection
        self.name = name
        self.init_schema(f"RedisStore {name!r}", data_sql_schema)
        self.cluster_mode = cluster_mode
        self.password = password
        self._client: Any = None

    # ---------------------------------------------------------------- pickling and description

    @property
    def address(self) -> str:
        """The server URL with any password masked."""
        return mask_url(self.connection)

    def describe(self) -> str:
        mode = ", cluster" if self.cluster_mode else ""
        return f"RedisStore({self.name!r} at {self.address}{mode})"

    # ---------------------------------------------------------------- client and errors

    @property
    def client(self) -> Any:
        """The redis-py client, created on first use (``RedisCluster`` when ``cluster_mode``)."""
        if self._client is None:
            with self._errors("connect"):
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        kwargs: Dict[str, Any] = {"decode_responses": True}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.cluster_mode:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(self.connection, **kwargs)
        import redis

        return redis.Redis.from_url(self.connection, **kwargs)

    def _scrub(self, text: str) -> str:
        secrets = [self.password] if self.password else []
        try:
            from urllib.parse import urlsplit

            url_password = urlsplit(self.connection).password
        except ValueError:
            url_password = None
        return redact(text, [*secrets, url_password])

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn redis-py errors into ``StoreError`` naming store, table and masked address."""
        from redis.exceptions import RedisClusterException, RedisError

        try:
            yield
        except (RedisError, RedisClusterException) as e:
            detail = self._scrub(f"{type(e).__name__}: {e}")
            raise StoreError(
                f"RedisStore table {self.name!r} (hash {self.name!r} at {self.address}): {action} failed: {detail}"
            ) from None

    # ---------------------------------------------------------------- key encoding

    def encode_fields(self, df: pd.DataFrame) -> List[str]:
        """The hash field of each row of ``df``: the JSON array of its key values."""
        try:
            texts = [json_texts(encode_column(df[str(c.name)], c), c) for c in self.key_columns]
        except ValueError as e:
            raise ValueError(f"{self.describe()}: {e}") from e
        return json_arrays(texts)

    def encode_values(self, df: pd.DataFrame) -> List[str]:
        """The hash value of each row of ``df``: the JSON object of its non-key columns."""
        present = [c for c in self.value_columns if str(c.name) in df.columns]
        try:
            texts = [json_texts(encode_column(df[str(c.name)], c), c) for c in present]
        except ValueError as e:
            raise ValueError(f"{self.describe()}: {e}") from e
        except TypeError as e:
            raise ValueError(f"{self.describe()}: a value cannot be stored as JSON: {e}") from e
        return json_objects([str(c.name) for c in present], texts, len(df))

    def decode_rows(self, fields: Sequence[str], values: Sequence[str]) -> DataDF:
        """Rows from hash fields and their values (the inverse of the two ``encode_*``)."""
        if len(fields) == 0:
            return DataDF(empty_frame(self.data_sql_schema))
        key_rows = loads_many(fields)
        value_rows = loads_many(values)
        columns: Dict[str, List[Any]] = {}
        for i, col in enumerate(self.key_columns):
            columns[str(col.name)] = [row[i] for row in key_rows]
        for col in self.value_columns:
            name = str(col.name)
            columns[name] = [row.get(name) for row in value_rows]
        return DataDF(decode_frame(columns, self.data_sql_schema))

    # ---------------------------------------------------------------- writes

    def insert_rows(self, df: DataDF) -> None:
        if len(df) == 0:
            return
        self.check_columns(df)
        fields = self.encode_fields(df)
        values = self.encode_values(df)
        with self._errors(f"writing {len(df)} rows"):
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(fields), COMMAND_BATCH):
                end = start + COMMAND_BATCH
                pipe.hset(self.name, mapping=dict(zip(fields[start:end], values[start:end])))
            pipe.execute()

    def delete_rows(self, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        self.check_columns(idx, keys_only=True)
        fields = self.encode_fields(idx)
        with self._errors(f"deleting {len(idx)} rows"):
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(fields), COMMAND_BATCH):
                pipe.hdel(self.name, *fields[start : start + COMMAND_BATCH])
            pipe.execute()

    # ---------------------------------------------------------------- reads

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        if idx is None:
            chunks = list(self._scan(COMMAND_BATCH))
            if len(chunks) == 1:
                return chunks[0]
            # HSCAN may return a field twice while the hash is being rehashed.
            df = pd.concat(chunks, ignore_index=True)
            return DataDF(df.drop_duplicates(self.primary_keys, keep="last", ignore_index=True))
        if len(idx) == 0:
            return DataDF(empty_frame(self.data_sql_schema))
        self.check_columns(idx, keys_only=True)
        fields = list(dict.fromkeys(self.encode_fields(idx)))
        with self._errors(f"reading {len(fields)} rows"):
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(fields), COMMAND_BATCH):
                pipe.hmget(self.name, fields[start : start + COMMAND_BATCH])
            values = [v for chunk in pipe.execute() for v in chunk]
        found = [(f, v) for f, v in zip(fields, values) if v is not None]
        return self.decode_rows([f for f, _ in found], [v for _, v in found])

    def _scan(self, chunksize: int) -> Iterator[DataDF]:
        """Every row, in chunks of about ``chunksize`` (``HSCAN``); yields one empty frame for an empty table."""
        cursor = 0
        empty = True
        while True:
            with self._errors("scanning"):
                cursor, page = self.client.hscan(self.name, cursor, count=chunksize)
            fields = list(page.keys())
            # COUNT is only a hint (small hashes come back whole): slice pages to ``chunksize``.
            for start in range(0, len(fields), chunksize):
                empty = False
                part = fields[start : start + chunksize]
                yield self.decode_rows(part, [page[f] for f in part])
            if int(cursor) == 0:
                break
        if empty:
            yield DataDF(empty_frame(self.data_sql_schema))

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        """Every row in chunks, paging with ``HSCAN`` (rows written concurrently may be seen twice or not at all)."""
        yield from self._scan(chunksize)
