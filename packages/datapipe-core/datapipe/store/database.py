"""SQL databases: the connection object (``DBConn``) and the SQL table store (``TableStoreDB``).

``DBConn`` also carries the *shared transaction* used for durability: inside
``with dbconn.transaction():`` every metadata write and every ``TableStoreDB`` write on the
same ``DBConn`` goes through one connection and commits (or rolls back) together.
"""

from __future__ import annotations

import contextvars
import select as io_select
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Type

import pandas as pd
from sqlalchemy import Column, MetaData, Table, create_engine, event, inspect, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError, OperationalError
from sqlalchemy.schema import SchemaItem
from sqlalchemy.sql.elements import ColumnElement

from datapipe.meta import keyset
from datapipe.run_config import RunConfig
from datapipe.store.sql_bulk import bulk_upsert, key_in, key_tuple_in
from datapipe.store.sql_checks import check_existing_table, check_values
from datapipe.store.table_store import StoreError, TableStore, TableStoreCaps
from datapipe.types import DataDF, DataSchema, IndexDF, MetaSchema

# Bound parameters per statement; SQLite allows 32766, PostgreSQL 65535.
MAX_PARAMS = 16000


class MetaKey(SchemaItem):
    """Marks a non-key column to be copied into the table's metadata table, for joins.

    A step whose transform key is a plain column of an input (``orders`` keyed by ``order_id``
    with a ``user_id`` column, in a per-user step) can map a changed row of that input to its
    key only if the column is in the metadata. Without ``MetaKey`` every change to the input
    reprocesses every key of the step, and ``build_compute`` logs a warning.

    Example:
        ```python
        TableStoreDB(dbconn, "orders", [
            Column("order_id", Integer, primary_key=True),
            Column("user_id", Integer, MetaKey()),   # orders_meta gets a user_id column
            Column("amount", Integer),
        ])
        ```
    """

    __visit_name__ = "meta_key"

    def __init__(self, target_name: Optional[str] = None) -> None:
        self.target_name = target_name

    def _set_parent(self, parent: Any, **kw: Any) -> None:  # noqa: D401 - SQLAlchemy hook
        self.parent = parent
        parent.meta_key = self


def copy_column(col: Column) -> Column:
    """A copy of ``col`` not bound to any table, keeping its ``MetaKey`` mark."""
    new = col._copy()
    if hasattr(col, "meta_key"):
        new.meta_key = col.meta_key  # type: ignore[attr-defined]
    return new


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``; safe for logs and CLI output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL; mask anything between ':' and '@'
        import re

        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


URL_EXAMPLES = "e.g. sqlite:///path/to/file.db or postgresql://user@host:5432/dbname"


def _normalise_url(connstr: str) -> str:
    """Pick an installed PostgreSQL driver for plain ``postgresql://`` URLs; ``ValueError`` if unparsable."""
    try:
        url = make_url(connstr)
    except ArgumentError:
        raise ValueError(f"database URL {mask_url(connstr)!r} is not a valid URL ({URL_EXAMPLES})") from None
    if url.drivername in ("postgresql", "postgres"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            url = url.set(drivername="postgresql+psycopg")
        else:
            url = url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _create_engine(connstr: str, url: str, kwargs: Dict[str, Any]) -> Engine:
    """``create_engine`` with one-line errors for an unknown database kind or a missing driver."""
    try:
        return create_engine(url, **kwargs)
    except NoSuchModuleError:
        kind = make_url(url).drivername
        raise ValueError(
            f"database URL {mask_url(connstr)!r}: unknown database kind {kind!r} ({URL_EXAMPLES})"
        ) from None
    except ModuleNotFoundError as e:
        hint = " (pip install 'datapipe-core[postgres]')" if url.startswith("postgres") else ""
        raise ImportError(
            f"database URL {mask_url(connstr)!r} needs the driver module {e.name!r}, which is not installed{hint}"
        ) from None


_OFFLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("datapipe_offline", default=False)


@contextmanager
def offline() -> Iterator[None]:
    """Declare tables without connecting to any database (used by ``datapipe graph``).

    Inside the block ``DBConn.get_table`` neither checks nor creates tables, so a pipeline can be
    loaded to inspect its shape while its databases are unreachable. Nothing may be read or written.
    """
    token = _OFFLINE.set(True)
    try:
        yield
    finally:
        _OFFLINE.reset(token)


def is_offline() -> bool:
    return _OFFLINE.get()


def _sqlite_pragmas(dbapi_con: Any, _record: Any) -> None:
    cur = dbapi_con.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _peer_hung_up(dbapi_con: Any) -> bool:
    """True when an idle connection's socket has something to read: the server closed it or said goodbye.

    A pooled connection between transactions has consumed every reply, so pending input means the
    server ended the session (shutdown, restart, terminated backend: a final error message and/or
    EOF). A local, non-blocking check; a failure to check counts as a hang-up.
    """
    if getattr(dbapi_con, "closed", False) or getattr(dbapi_con, "broken", False):
        return True
    try:
        readable, _, _ = io_select.select([dbapi_con.fileno()], [], [], 0)
    except Exception:  # noqa: BLE001 - unknown state: reconnect
        return True
    return bool(readable)


def _drop_dead_connection(dbapi_con: Any, _record: Any, _proxy: Any) -> None:
    """Pool ``checkout`` hook replacing ``pool_pre_ping`` for PostgreSQL without its round trip per checkout.

    Raising ``DisconnectionError`` makes the pool discard the connection and check out a fresh one, so a
    server restart between two transactions is survived like with pre-ping.
    """
    if _peer_hung_up(dbapi_con):
        raise DisconnectionError("the server closed the connection")


# The connection of the transaction opened by ``DBConn.transaction()`` in this context, by URL:
# every DBConn of the same database joins it (two connections would deadlock on SQLite).
_ACTIVE_TX: contextvars.ContextVar[Optional[Dict[str, Connection]]] = contextvars.ContextVar(
    "datapipe_active_tx", default=None
)


class DBConn:
    """A database the metadata (and optionally data) lives in.

    Args:
        connstr: an SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql://user:pw@host/db``
            (needs ``pip install 'datapipe-core[postgres]'``). Printed and logged only with the
            password masked.
        schema: put every table in this PostgreSQL schema.
        create_engine_kwargs: passed to SQLAlchemy's ``create_engine`` (pool, ``connect_args``).
        sqla_metadata: an SQLAlchemy ``MetaData`` to declare tables in (default: a new one).

    Raises:
        ValueError: an unparsable URL or an unknown database kind (one line, password masked).
        ImportError: the database driver is not installed (names the extra to install).

    Connecting is lazy: an unreachable server is reported when a table is first used, as a
    ``StoreError`` naming the (masked) URL.
    """

    def __init__(
        self,
        connstr: str,
        schema: Optional[str] = None,
        create_engine_kwargs: Optional[Dict[str, Any]] = None,
        sqla_metadata: Optional[MetaData] = None,
    ) -> None:
        self._init(connstr, schema, create_engine_kwargs or {}, sqla_metadata)

    def _init(
        self,
        connstr: str,
        schema: Optional[str],
        create_engine_kwargs: Dict[str, Any],
        sqla_metadata: Optional[MetaData],
    ) -> None:
        self.connstr = connstr
        self.schema = schema
        self.create_engine_kwargs = create_engine_kwargs
        self.sqla_metadata = sqla_metadata if sqla_metadata is not None else MetaData(schema=schema)
        url = _normalise_url(connstr)
        self.is_sqlite = url.startswith("sqlite")
        kwargs = dict(create_engine_kwargs)
        if self.is_sqlite:
            kwargs.setdefault("connect_args", {"timeout": 60})
        self.con: Engine = _create_engine(connstr, url, kwargs)
        if self.is_sqlite:
            event.listen(self.con, "connect", _sqlite_pragmas)
        elif "pool_pre_ping" not in kwargs:
            event.listen(self.con, "checkout", _drop_dead_connection)

    @property
    def supports_returning(self) -> bool:
        return not self.is_sqlite

    def __repr__(self) -> str:
        return f"DBConn({mask_url(self.connstr)!r})"

    def __getstate__(self) -> Dict[str, Any]:
        return {"connstr": self.connstr, "schema": self.schema, "create_engine_kwargs": self.create_engine_kwargs}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._init(state["connstr"], state["schema"], state["create_engine_kwargs"], None)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction: the shared one when inside ``transaction()``, else a new one."""
        active = (_ACTIVE_TX.get() or {}).get(self.connstr)
        if active is not None:
            yield active
            return
        try:
            with self.con.begin() as con:
                yield con
        except OperationalError as e:
            raise StoreError(f"database {mask_url(self.connstr)} failed: {e.orig}") from e

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads: the shared one when inside ``transaction()``, else like ``begin()``.

        On PostgreSQL (unless ``create_engine_kwargs`` sets an ``isolation_level``) the connection is in
        autocommit mode: each statement still reads one consistent snapshot of committed data, exactly as
        under the default READ COMMITTED, without the BEGIN and COMMIT round trips of a transaction.
        """
        active = (_ACTIVE_TX.get() or {}).get(self.connstr)
        if active is not None:
            yield active
            return
        if self.is_sqlite or "isolation_level" in self.create_engine_kwargs:
            with self.begin() as con:
                yield con
            return
        try:
            with self.con.connect() as con:
                yield con.execution_options(isolation_level="AUTOCOMMIT")
        except OperationalError as e:
            raise StoreError(f"database {mask_url(self.connstr)} failed: {e.orig}") from e

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Run the block in one transaction shared by every write on this ``DBConn``."""
        active = (_ACTIVE_TX.get() or {}).get(self.connstr)
        if active is not None:
            yield active
            return
        with self.begin() as con:
            token = _ACTIVE_TX.set({**(_ACTIVE_TX.get() or {}), self.connstr: con})
            try:
                yield con
            finally:
                _ACTIVE_TX.reset(token)

    def get_table(
        self,
        name: str,
        columns: Sequence[Column],
        create: bool,
        indexes: Sequence[Any] = (),
        optional: Sequence[str] = (),
    ) -> Table:
        """The SQLAlchemy ``Table`` called ``name`` with ``columns`` (copied), created if ``create``.

        An existing table must match the declaration, except that the ``optional`` columns may be missing.
        """
        if name in self.sqla_metadata.tables or (
            self.schema and f"{self.schema}.{name}" in self.sqla_metadata.tables
        ):
            key = name if name in self.sqla_metadata.tables else f"{self.schema}.{name}"
            table = self.sqla_metadata.tables[key]
        else:
            table = Table(name, self.sqla_metadata, *[copy_column(c) for c in columns], *indexes)
            if is_offline():
                return table
            with self.begin() as con:  # a table created by an earlier run must still match its declaration
                where = f"table {name!r} in {mask_url(self.connstr)}"
                check_existing_table(con, where, name, self.schema, [c for c in columns if c.name not in optional])
        if create and not is_offline():
            self._create_table(table)
        return table

    def _create_table(self, table: Table) -> None:
        """``CREATE TABLE`` unless it exists; tolerates another process creating it at the same moment."""
        try:
            with self.begin() as con:
                table.create(con, checkfirst=True)
        except (StoreError, DBAPIError):
            # Two runners starting together both see "no such table" and both create it; the
            # loser fails ("already exists", or a unique violation in PostgreSQL's catalog).
            if not self.has_table(str(table.name)):
                raise

    def missing_columns(self, name: str, columns: Sequence[str]) -> List[str]:
        """Those of ``columns`` an existing table ``name`` lacks ([] when the table does not exist)."""
        if not columns or is_offline():
            return []
        with self.begin() as con:
            insp = inspect(con)
            if not insp.has_table(name, schema=self.schema):
                return []
            actual = {str(c["name"]) for c in insp.get_columns(name, schema=self.schema)}
        return [c for c in columns if c not in actual]

    def has_table(self, name: str) -> bool:
        with self.begin() as con:
            return inspect(con).has_table(name, schema=self.schema)


# ---------------------------------------------------------------- key filters and row conversion


def python_values(series: pd.Series) -> List[Any]:
    """Values of ``series`` as plain Python objects with NaN/NaT/NA as None (drivers want these)."""
    if series.dtype.kind in "iub":
        return series.tolist()
    return series.astype(object).where(series.notna(), None).tolist()


def key_chunks(idx: pd.DataFrame, max_params: int = MAX_PARAMS) -> Iterator[pd.DataFrame]:
    """Slices of ``idx`` small enough to bind as an ``IN`` list."""
    step = max(1, max_params // max(1, len(idx.columns)))
    for start in range(0, len(idx), step):
        yield idx.iloc[start : start + step]


def key_filter(table: Table, idx: pd.DataFrame) -> ColumnElement[bool]:
    """``WHERE (k1, k2) IN (...)`` for the key columns of ``idx`` (values bound, never formatted)."""
    cols = list(idx.columns)
    if len(cols) == 1:
        return key_in(table.c[cols[0]], python_values(idx[cols[0]]))
    return key_tuple_in([table.c[c] for c in cols], [python_values(idx[c]) for c in cols])


def df_to_records(df: pd.DataFrame, columns: Sequence[str]) -> List[Dict[str, Any]]:
    """Rows of ``df`` as dicts of Python values, NaN/NaT/NA as NULL, ready for ``executemany``."""
    col_values = [python_values(df[c]) for c in columns]
    return [dict(zip(columns, row)) for row in zip(*col_values)]


def fetch_rows(con: Connection, sql: Any) -> Sequence[Any]:
    """Every row of ``sql`` as the driver returns them (tuples), skipping SQLAlchemy's ``Row`` objects
    when no column has a result processor (the usual case); otherwise ``Row`` objects as usual."""
    result = con.execute(sql)
    processors = getattr(result._metadata, "_processors", None)
    if processors is None or any(processors) or result.cursor is None:
        return result.fetchall()
    try:
        return result.cursor.fetchall()  # type: ignore[no-any-return]
    finally:
        result.close()


def rows_to_df(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    # column-wise construction: much cheaper than from_records over SQLAlchemy Row objects
    return pd.DataFrame(dict(zip(columns, map(list, zip(*rows)))))


def insert_statement(con: Connection, table: Table) -> Any:
    """The dialect's ``INSERT`` (with ``on_conflict_*``) for PostgreSQL and SQLite."""
    if con.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif con.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    else:
        raise StoreError(f"upsert is not supported on {con.dialect.name}")
    return dialect_insert(table)


def upsert_statement(con: Connection, table: Table, columns: Sequence[str], keys: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` for PostgreSQL and SQLite."""
    stmt = insert_statement(con, table)
    update_cols = [c for c in columns if c not in keys]
    if not update_cols:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in update_cols}
    )


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
        if len(df) == 0:
            return
        self._check_columns(df)
        columns = [c for c in self.columns if c in df.columns]
        with self.dbconn.begin() as con:
            bulk_upsert(con, self.data_table, df, columns, self.primary_keys)

    def delete_rows(self, idx: IndexDF) -> None:
        if len(idx) == 0:
            return
        keys = idx[[k for k in self.primary_keys if k in idx.columns]]
        with self.dbconn.begin() as con:
            for chunk in key_chunks(keys):
                con.execute(self.data_table.delete().where(key_filter(self.data_table, chunk)))

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        sql = select(*[self.data_table.c[c] for c in self.columns])
        with self.dbconn.read() as con:
            if idx is None:
                return DataDF(rows_to_df(fetch_rows(con, sql), self.columns))
            if len(idx) == 0:
                return DataDF(rows_to_df([], self.columns))
            keys = keyset.select(idx, [k for k in self.primary_keys if k in idx.columns])
            keys = keyset.unique_if_chunked(keys, MAX_PARAMS // max(1, len(keys.columns)))
            rows: List[Any] = []
            for chunk in key_chunks(keys):
                rows.extend(fetch_rows(con, sql.where(key_filter(self.data_table, chunk))))
        return DataDF(rows_to_df(rows, self.columns))

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
