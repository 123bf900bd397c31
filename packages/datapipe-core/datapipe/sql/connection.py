"""Connections to the metadata (and SQL data) database: ``DBConn`` and the shared transaction.

Inside ``with dbconn.transaction():`` every metadata write and every ``TableStoreDB`` write on the
same database (any ``DBConn`` with the same URL, in this thread or task) goes through one connection
and commits or rolls back together: that is how a batch's data, output metadata and step state
become durable at once. Outside it, ``begin()`` opens a short transaction per call and ``read()``
an autocommit connection on PostgreSQL (one snapshot per statement, no BEGIN/COMMIT round trips).
``send_pipelined(work)`` runs a write-only block in psycopg's pipeline mode and sends it through its
COMMIT without waiting for the server: the returned ``PendingCommit`` learns the outcome later, so
the client may prepare the next batch while the server writes this one. Its errors surface as
``PipelineFailed`` from ``PendingCommit.wait()``.

Rows are locked in primary-key order (``sql.rows.locked_key_filter``; writes sort their rows), so
writers of overlapping keys do not deadlock; ``retrying_conflicts`` runs a write again should the server
abort it anyway (a deadlock with another application, a serialization failure).

Connection failures become ``StoreError`` with the URL's password masked. PostgreSQL pools check a
connection's socket locally at checkout instead of ``pool_pre_ping``'s round trip.

SQLite files run in WAL mode; a transaction that wrote hands the WAL checkpoint to a background
thread (``sql.checkpoint``) instead of paying for it in some later commit. Metadata tables whose key
is not one INTEGER column (the rowid) are ``WITHOUT ROWID`` there (``get_table(clustered=True)``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import select as io_select
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from sqlalchemy import INTEGER, Column, Integer, MetaData, Table, create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError, OperationalError

from datapipe.errors import StoreError, mask_url
from datapipe.sql.checkpoint import AUTOCHECKPOINT_PAGES, CHECKPOINTER
from datapipe.sql.schema import check_existing_table, copy_column
from datapipe.sql.sqla_private import spare_connections

logger = logging.getLogger("datapipe.sql")
T = TypeVar("T")

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


_NO_CREATE: contextvars.ContextVar[bool] = contextvars.ContextVar("datapipe_no_create", default=False)


@contextmanager
def no_table_creation() -> Iterator[None]:
    """Within the block ``create_table=True`` creates nothing: tables are declared and checked only.

    ``datapipe db adopt`` loads the pipeline this way, so that inspecting a database it may
    refuse does not change it.
    """
    token = _NO_CREATE.set(True)
    try:
        yield
    finally:
        _NO_CREATE.reset(token)


def table_creation_allowed() -> bool:
    """False when offline or inside ``no_table_creation``."""
    return not _OFFLINE.get() and not _NO_CREATE.get()


def _sqlite_pragmas(dbapi_con: Any, _record: Any) -> None:
    cur = dbapi_con.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")  # the thread of sql.checkpoint does it sooner
    cur.close()


def _sqlite_wrote(con: Connection) -> bool:
    """Whether the open transaction of a sqlite3 connection has written (the module begins one on the
    first write only)."""
    return bool(getattr(con.connection.driver_connection, "in_transaction", False))


def _keyed_by_more_than_rowid(columns: Sequence[Column]) -> bool:
    """Whether a SQLite table of ``columns`` has a primary key other than one ``INTEGER`` column (an
    alias of the rowid, whose rows are already kept in key order)."""
    keys = [c for c in columns if c.primary_key]
    return bool(keys) and not (len(keys) == 1 and type(keys[0].type) in (Integer, INTEGER))


def _sqlite_file(url: str) -> Optional[str]:
    """The database file of a SQLite URL, or None (in memory, or a ``file:`` URI)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


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


#: SQLSTATEs of a transaction the server aborted only because of other transactions (deadlock victim,
#: serialization failure): running it again is the documented remedy.
RETRYABLE_SQLSTATES = {"40P01", "40001"}
CONFLICT_ATTEMPTS = 8


def transient_conflict(error: BaseException) -> Optional[BaseException]:
    """The driver's error behind ``error`` (it, or an error it was raised from) when that is a PostgreSQL
    deadlock or serialization failure; else None."""
    seen: set = set()
    e: Optional[BaseException] = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for source in (e, getattr(e, "orig", None)):
            code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)  # psycopg 3 / psycopg2
            if code in RETRYABLE_SQLSTATES:
                return source
        e = e.__cause__ or e.__context__
    return None


def is_transient_conflict(error: BaseException) -> bool:
    """Whether ``error`` comes from a PostgreSQL deadlock or serialization failure (see ``transient_conflict``)."""
    return transient_conflict(error) is not None


class PipelineFailed(StoreError):
    """A statement sent in pipeline mode failed, or its connection broke; raised by ``PendingCommit.wait``
    (the transaction is then rolled back, or its outcome unknown). ``__cause__`` is the driver's error."""


class PendingCommit:
    """A transaction sent in pipeline mode through its ``COMMIT``, whose outcome is not read yet.

    The server runs the statements as they arrive and commits at the ``COMMIT``, or, after a failing
    statement, skips the rest and rolls back: the transaction is all or nothing whether or not
    anyone waits. ``wait()`` reads the replies and returns the transaction's pooled connection; call
    it exactly once, also when giving up on the result.
    """

    def __init__(self, con: Connection, transaction: Any, pipeline: Any) -> None:
        self.con, self.transaction, self.pipeline = con, transaction, pipeline

    def wait(self) -> None:
        """Return once the transaction committed. Raise ``PipelineFailed``, its ``__cause__`` the driver's
        error, when a statement failed (nothing was committed) or the connection broke (the outcome is
        then unknown: a caller writes again, idempotently)."""
        try:
            try:
                self.pipeline.__exit__(None, None, None)
            except Exception as e:  # noqa: BLE001 - the driver's error of some statement sent earlier
                raise PipelineFailed(f"a statement sent in pipeline mode failed: {type(e).__name__}: {e}") from e
            self.transaction.commit()  # the server has committed; this only closes SQLAlchemy's transaction
        finally:
            _release(self.con, self.transaction)


def _release(con: Connection, transaction: Any) -> None:
    """Roll back what is left of ``transaction`` and return ``con`` to the pool; a broken connection's
    error is only logged (the caller raises the error that broke it)."""
    try:
        if transaction.is_active:
            transaction.rollback()
    except Exception as e:  # noqa: BLE001 - see the docstring
        logger.debug("rolling back a pipelined transaction failed: %s: %s", type(e).__name__, e)
    finally:
        con.close()


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
        self._sqlite_file = _sqlite_file(url) if self.is_sqlite else None
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
        active = self._active()
        if active is not None:
            yield active
            return
        try:
            with self.con.begin() as con:
                yield con
                wrote = self._sqlite_file is not None and _sqlite_wrote(con)
        except OperationalError as e:
            raise StoreError(f"database {mask_url(self.connstr)} failed: {e.orig}") from e
        if wrote:
            CHECKPOINTER.nudge(self._sqlite_file)  # type: ignore[arg-type]

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads: the shared one when inside ``transaction()``, else like ``begin()``.

        On PostgreSQL (unless ``create_engine_kwargs`` sets an ``isolation_level``) the connection is in
        autocommit mode: each statement still reads one consistent snapshot of committed data, exactly as
        under the default READ COMMITTED, without the BEGIN and COMMIT round trips of a transaction.
        """
        active = self._active()
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
        active = self._active()
        if active is not None:
            yield active
            return
        with self.begin() as con, self._shared(con):
            yield con

    @contextmanager
    def _shared(self, con: Connection) -> Iterator[None]:
        """Within the block, ``con`` is this context's ``transaction()`` of this database."""
        token = _ACTIVE_TX.set({**(_ACTIVE_TX.get() or {}), self.connstr: con})
        try:
            yield
        finally:
            _ACTIVE_TX.reset(token)

    def send_pipelined(self, work: Callable[[], T]) -> Tuple[T, PendingCommit]:
        """Run ``work()`` as a ``transaction()`` in psycopg's pipeline mode and send it through its
        ``COMMIT``, without waiting for the server's replies; ``PendingCommit.wait()`` reads them.

        Only when ``can_pipeline``. ``work`` must only write (a read would wait for every reply); its
        statements go out as it runs, so the server executes one while the client builds the next,
        and the caller may go on (prepare the next batch, on another connection) while the server
        finishes. A statement's error surfaces once its reply arrives: while ``work`` sends a later
        statement (raised here, the transaction rolled back, like any error of ``work``), or from
        ``wait()``.
        """
        if not self.can_pipeline:
            raise RuntimeError(f"{self!r} cannot pipeline (PostgreSQL through psycopg 3, outside a transaction)")
        try:
            con = self.con.connect()
            transaction = con.begin()
        except OperationalError as e:
            raise StoreError(f"database {mask_url(self.connstr)} failed: {e.orig}") from e
        pipeline = con.connection.driver_connection.pipeline()  # type: ignore[union-attr]
        try:
            pipeline.__enter__()
            with self._shared(con):
                result = work()
            con.exec_driver_sql("COMMIT")
        except BaseException as e:
            pipeline.__exit__(type(e), e, e.__traceback__)
            _release(con, transaction)
            raise
        return result, PendingCommit(con, transaction, pipeline)

    def _active(self) -> Optional[Connection]:
        """The connection of the ``transaction()`` of this database open in this context, if any."""
        return (_ACTIVE_TX.get() or {}).get(self.connstr)

    def in_transaction(self) -> bool:
        """Whether a ``transaction()`` of this database is open in this context."""
        return self._active() is not None

    def retrying_conflicts(self, work: Callable[[], T], what: str = "transaction") -> T:
        """``work()`` (which opens its own ``transaction()``), run again when PostgreSQL aborted it as
        a deadlock victim or for a serialization failure, up to ``CONFLICT_ATTEMPTS`` times in all,
        after a short random pause that grows with each attempt.

        Writers of overlapping rows lock them in key order, so deadlocks are rare, but not impossible
        (a key may be inserted by one writer and updated by another). Inside an enclosing
        ``transaction()`` nothing is retried: the enclosing transaction is aborted, and its owner decides.
        """
        if self.in_transaction():
            return work()
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return work()
            except Exception as e:
                cause = transient_conflict(e)
                if attempt == CONFLICT_ATTEMPTS or cause is None:
                    raise
                pause = random.uniform(0.01, 0.05) * attempt
                logger.info("%s aborted by the database (%s, attempt %d of %d); running it again in %.0f ms",
                            what, type(cause).__name__, attempt, CONFLICT_ATTEMPTS, 1000 * pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def spare_connections(self) -> Optional[int]:
        """How many more connections the pool can hand out without waiting (None: no limit)."""
        return spare_connections(self.con.pool)

    @property
    def can_pipeline(self) -> bool:
        """Whether ``send_pipelined`` may be used: PostgreSQL through psycopg 3, and no transaction of
        this ``DBConn`` open in this context (a pipeline starts a transaction)."""
        if self.in_transaction():
            return False
        return self.con.dialect.name == "postgresql" and self.con.dialect.driver == "psycopg"

    def get_table(
        self,
        name: str,
        columns: Sequence[Column],
        create: bool,
        indexes: Sequence[Any] = (),
        optional: Sequence[str] = (),
        clustered: bool = False,
    ) -> Table:
        """The SQLAlchemy ``Table`` called ``name`` with ``columns`` (copied), created if ``create``.

        An existing table must match the declaration, except that the ``optional`` columns may be missing.
        ``clustered``: on SQLite, a new table keeps its rows in primary-key order (``WITHOUT ROWID``),
        unless the key is one ``INTEGER`` column, which then is the rowid. A lookup by key is then one
        B-tree search instead of two (the key's index, then the row), and a write updates one B-tree
        fewer. An existing table is used as it is either way.
        """
        if name in self.sqla_metadata.tables or (
            self.schema and f"{self.schema}.{name}" in self.sqla_metadata.tables
        ):
            key = name if name in self.sqla_metadata.tables else f"{self.schema}.{name}"
            table = self.sqla_metadata.tables[key]
        else:
            with_rowid = not (clustered and _keyed_by_more_than_rowid(columns))
            table = Table(name, self.sqla_metadata, *[copy_column(c) for c in columns], *indexes,
                          sqlite_with_rowid=with_rowid)
            if is_offline():
                return table
            with self.begin() as con:  # a table created by an earlier run must still match its declaration
                where = f"table {name!r} in {mask_url(self.connstr)}"
                check_existing_table(con, where, name, self.schema, [c for c in columns if c.name not in optional])
        if create and table_creation_allowed():
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


