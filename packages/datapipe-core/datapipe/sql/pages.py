"""Query results held by the database and read back in pages: bounded client memory at any N.

A full run of a step has to hand out every pending key exactly once, in a fixed order, and
know how many there are before the first batch (progress, ``Executor`` contract). Holding the
keys in one client-side frame costs about 300 bytes a key (10 M keys: several GiB), so
``MaterialisedRows`` evaluates the query **once** into a result the database keeps (a SQLite
rerun may try a plain fetch first, below), and reads it back ``page_rows`` at a time over one
dedicated connection:

PostgreSQL
    ``DECLARE … SCROLL CURSOR WITH HOLD FOR <query>`` on an autocommit connection. A holdable
    cursor is run to completion when its (one-statement) transaction commits and its rows are
    kept in a tuplestore of that session (``work_mem``, then a temporary file), so the counting
    ``MOVE FORWARD ALL`` and every ``FETCH FORWARD n`` read a frozen result without any
    transaction or snapshot being open. That matters because a run can take hours: a
    long-open read transaction (a plain server-side cursor, ``stream_results``) would pin the
    vacuum horizon (``backend_xmin``) of the whole cluster for that time, so no dead row
    version anywhere, including the step's own metadata that every batch rewrites, could be
    vacuumed. A temporary table would do the same without a snapshot but writes catalog rows
    (``pg_class``, ``pg_attribute``) on every run, also on a no-op one. The first page is
    fetched at once; when it is not full it is the whole result and the cursor is closed right
    away (a small rerun costs ``DECLARE``, ``FETCH``, ``CLOSE``), else the rest is counted with
    ``MOVE FORWARD ALL`` and the cursor moved back to the end of the first page.
SQLite
    ``CREATE TEMP TABLE`` and one ``INSERT … SELECT <query>`` in a short transaction; the rows
    get ``rowid`` 1…n in the query's order, and a page is the ``rowid`` range ``(a, b]`` (a
    B-tree range read, O(page) per page). The temporary database is private to the connection
    and lives in a temporary file, not in the main file and not in its WAL. An open SQLite
    cursor would instead keep a read transaction on the main database for the whole run,
    and while any reader holds a WAL snapshot the checkpointer cannot get past it: the WAL
    file would grow with every batch written during the run (checkpoint starvation).
    When the caller expects a small result (``small_expected``: a step's rerun, which has
    watermarks), the query is first run plainly and at most ``page_rows + 1`` rows fetched: if
    that is all of them, they are the result and no table is made (the table's four more
    statements cost a rerun about 0.5 ms: 1.2 ms to find 500 keys against 0.6); if not, the
    cursor is closed and the query evaluated again into the table, so a large rerun pays for
    part of its query twice.

The query is run through SQLAlchemy as usual (so its compiled form is cached, which matters for
a change query: compiling one takes milliseconds), with the ``DECLARE``/``INSERT`` prefix added by
a ``before_cursor_execute`` hook that only statements run here ask for.

Either way the candidate set is evaluated in one statement under one database snapshot, batches
written on other connections while pages are read cannot change it (no key skipped or handed out
twice), and between pages the dedicated connection holds no transaction. ``close()`` (or leaving
the ``with`` block, or exhausting ``pages()``) drops the cursor or table and returns the
connection; if the process dies the server drops them with the session. Other databases fall
back to fetching the result into memory.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from datapipe.settings import settings
from datapipe.sql.connection import DBConn
from datapipe.sql.rows import rows_to_df

_PREFIX_OPTION = "datapipe_statement_prefix"


def _prefix_statement(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> Tuple[str, Any]:
    """``before_cursor_execute`` hook: prepend the execution option ``datapipe_statement_prefix``."""
    prefix = context.execution_options.get(_PREFIX_OPTION) if context is not None else None
    return (prefix + statement if prefix else statement), parameters


def _install_hook(engine: Engine) -> None:
    if not event.contains(engine, "before_cursor_execute", _prefix_statement):
        event.listen(engine, "before_cursor_execute", _prefix_statement, retval=True)


def _driver_rows(result: Any, limit: Optional[int] = None) -> List[Any]:
    """Every row (at most ``limit``) of a driver-level result as the driver returns it (no SQLAlchemy
    ``Row`` objects); the result is closed."""
    cursor = result.cursor
    try:
        if cursor is None:
            return []
        return list(cursor.fetchall() if limit is None else cursor.fetchmany(limit))
    finally:
        result.close()


class MaterialisedRows:
    """The rows of ``query`` (columns ``columns``, typed like ``types``), held server-side.

    Use as a context manager::

        with MaterialisedRows(dbconn, query, ["id"], [Integer()], page_rows=50_000) as rows:
            print(rows.count)
            for page in rows.pages():   # DataFrames of at most page_rows rows, in query order
                ...

    ``count`` is known after entering. ``pages_read`` and ``largest_page`` tell what was read.
    """

    def __init__(
        self,
        dbconn: DBConn,
        query: Optional[Select[Any]],
        columns: Sequence[str],
        types: Sequence[Any],
        page_rows: Optional[int] = None,
        params: Optional[Dict[str, Any]] = None,
        small_expected: bool = False,
    ) -> None:
        page_rows = settings.key_page_rows if page_rows is None else page_rows
        if page_rows < 1:
            raise ValueError(f"page_rows must be positive, got {page_rows}")
        self.dbconn = dbconn
        self.query = query
        self.params = dict(params or {})  # the query's parameter values
        self.columns = list(columns)
        self.types = list(types)
        self.page_rows = page_rows
        self.small_expected = small_expected
        self.count = 0
        self.pages_read = 0
        self.largest_page = 0
        self._con: Optional[Connection] = None
        self._name = f"datapipe_keys_{uuid.uuid4().hex[:16]}"
        self._kind = ""
        self._memory: Optional[pd.DataFrame] = None
        self._position = 0
        self._opened = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> MaterialisedRows:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> MaterialisedRows:
        """Evaluate the query and keep its result in the database (a result of one page may be kept
        in memory instead); sets ``count``. Opening an open (or already read) result does nothing."""
        if self.query is None or self._opened:
            return self
        self._opened = True
        engine = self.dbconn.con
        dialect = engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            self._fetch_all(None)
            return self
        if dialect == "sqlite" and self.small_expected and self._fetch_all(self.page_rows + 1):
            return self
        con = engine.connect()
        self._con = con
        try:
            if dialect == "postgresql":
                self._open_pg(con.execution_options(isolation_level="AUTOCOMMIT"))
            else:
                self._open_sqlite(con)
        except BaseException:
            self.close()
            raise
        return self

    def _fetch_all(self, limit: Optional[int]) -> bool:
        """Fetch the result into memory, unless it has ``limit`` rows or more: whether it did."""
        assert self.query is not None
        with self.dbconn.read() as con:
            rows = _driver_rows(con.execute(self.query, self.params), limit)
        if limit is not None and len(rows) >= limit:
            return False
        self._memory = rows_to_df(rows, self.columns)
        self._kind, self.count = "memory", len(self._memory)
        return True

    def _run_prefixed(self, con: Connection, prefix: str) -> None:
        """Execute the query with ``prefix`` put in front of its SQL text by the driver-level hook
        (``_prefix_statement``): SQLAlchemy still compiles the query once per shape and caches it,
        where compiling it by hand each run costs tens of milliseconds for a change query."""
        assert self.query is not None
        _install_hook(con.engine)
        con.execute(self.query, self.params, execution_options={_PREFIX_OPTION: prefix}).close()

    def _open_pg(self, con: Connection) -> None:
        # the name is generated here; the query's values stay bound parameters
        self._run_prefixed(con, f"DECLARE {self._name} SCROLL CURSOR WITH HOLD FOR ")
        self._kind = "pg"
        first = rows_to_df(_driver_rows(con.exec_driver_sql(f"FETCH FORWARD {self.page_rows} FROM {self._name}")),
                           self.columns)
        self.count = len(first)
        if self.count == self.page_rows:  # maybe more: count the rest by moving over it, then come back
            self.count += int(con.exec_driver_sql(f"MOVE FORWARD ALL IN {self._name}").rowcount)
            con.exec_driver_sql(f"MOVE ABSOLUTE {self.page_rows} IN {self._name}")
        self._memory = first  # the first page is handed out from here, not fetched again
        if self.count == len(first):
            self._release()  # a small result: nothing stays on the server

    def _open_sqlite(self, con: Connection) -> None:
        quote = con.dialect.identifier_preparer.quote
        columns = ", ".join(f"{quote(c)} {t.compile(dialect=con.dialect)}" for c, t in zip(self.columns, self.types))
        names = ", ".join(quote(c) for c in self.columns)
        with con.begin():
            con.exec_driver_sql(f"CREATE TEMP TABLE {self._name} ({columns})")
            self._kind = "sqlite"
            self._run_prefixed(con, f"INSERT INTO temp.{self._name} ({names}) ")
        self.count = int(con.exec_driver_sql(f"SELECT coalesce(max(rowid), 0) FROM temp.{self._name}").scalar_one())
        con.commit()

    def close(self) -> None:
        """Drop the server-side result and give the connection back (idempotent)."""
        self._memory = None
        self._release()

    def _release(self) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        try:
            if self._kind == "pg":
                con.exec_driver_sql(f"CLOSE {self._name}")
            elif self._kind == "sqlite":
                con.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{self._name}")
                con.commit()
        except Exception:  # noqa: BLE001 - the connection is in an unknown state: do not pool it
            con.invalidate()
        finally:
            self._kind = ""
            con.close()

    # ------------------------------------------------------------------ reading

    def pages(self) -> Iterator[pd.DataFrame]:
        """The rows in query order, ``page_rows`` at a time; closes when exhausted or closed early."""
        try:
            while self._position < self.count:
                page = self._read_page()
                if len(page) == 0:
                    break
                self._position += len(page)
                self.pages_read += 1
                self.largest_page = max(self.largest_page, len(page))
                yield page
        finally:
            self.close()

    def _read_page(self) -> pd.DataFrame:
        n = self.page_rows
        if self._memory is not None and self._position < len(self._memory):
            page = self._memory.iloc[self._position : self._position + n].reset_index(drop=True)
            if self._position + n >= len(self._memory):
                self._memory = None  # handed out: let it go
            return page
        con = self._con
        if con is None:
            return rows_to_df([], self.columns)
        if self._kind == "pg":
            rows = _driver_rows(con.exec_driver_sql(f"FETCH FORWARD {n} FROM {self._name}"))
        else:
            cols = ", ".join(con.dialect.identifier_preparer.quote(c) for c in self.columns)
            rows = _driver_rows(
                con.exec_driver_sql(
                    f"SELECT {cols} FROM temp.{self._name} WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
                    (self._position, self._position + n),
                )
            )
            con.commit()  # end the read at once: no snapshot is held between pages
        return rows_to_df(rows, self.columns)
