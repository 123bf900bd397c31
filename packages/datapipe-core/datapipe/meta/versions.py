"""Change versions: the database, not a client clock, orders changes.

Every metadata row a write creates, changes or deletes gets a ``version``: a number the
*database* assigns inside the writing transaction. A reader that wants to know "what have I
not seen yet" takes a :class:`Snapshot` of the database's version state before it reads, and
later treats a row as new exactly when its version is not visible in that snapshot. Client
wall-clock time (``update_ts``, ``process_ts``) is kept for people and for the 0.15 API, but
never decides whether a change is new.

PostgreSQL
    ``version`` is the 64-bit transaction id of the writer, ``pg_current_xact_id()``. A snapshot
    is ``pg_current_snapshot()``, reduced to what visibility needs: ``below`` (its ``xmax``:
    every id at or above it started after the snapshot) and ``pending`` (its ``xip``: ids that
    were still running). A version is *visible* in a snapshot when it is below ``below`` and not
    pending; everything else may have committed after the snapshot was taken. Ids are
    epoch-extended ``xid8`` values, so they never wrap around. Writers never wait for each other
    to stamp a version, and a transaction held open for minutes simply stays ``pending`` in every
    snapshot until it commits, when its rows become visible and are picked up.
SQLite
    SQLite lets one writer at a time hold the database's write lock from its first write until
    commit, so a counter incremented inside the write transaction is commit-ordered for free:
    ``datapipe_version`` holds it, and each write transaction takes the next value once. A
    snapshot is ``below = counter + 1`` with nothing pending.

Both give the same two guarantees the change query (``datapipe.meta.changes``) relies on:

1. A row whose version is visible in a snapshot was committed before the snapshot was taken,
   so any read that starts after the snapshot sees it.
2. A row that is not visible in a snapshot has a version that is not visible in it either:
   a write that commits later can never carry a version that looks old.

So a step records, per processed key, a snapshot taken *before* it read the key's inputs
(``seen_below``/``seen_pending`` in ``<step>_meta``: the batch's own, or in a full run one taken as
the batch's page of keys was read; an older one only makes the next run redo a key), and per input
the snapshot taken before a complete run started (``datapipe_watermarks``). A change is new for a
key exactly when its version is not visible in the key's snapshot; a run scans only rows not
visible in the watermark snapshot (an index range scan on ``version``, plus point lookups of the
pending ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from sqlalchemy import BigInteger, Column, Integer, String, and_, bindparam, cast, literal, literal_column, or_
from sqlalchemy.engine import Connection

from datapipe.sql.connection import DBConn, table_creation_allowed

VERSION_TABLE = "datapipe_version"


@dataclass(frozen=True)
class Snapshot:
    """What a reader could see: versions below ``below`` except the ``pending`` ones."""

    below: int
    pending: Tuple[int, ...] = ()

    def encoded_pending(self) -> Optional[str]:
        """``pending`` as stored in a text column: comma-separated ids, or None when empty."""
        return ",".join(map(str, self.pending)) if self.pending else None

    @classmethod
    def decode(cls, below: Any, pending: Optional[str]) -> Snapshot:
        ids = tuple(int(x) for x in pending.split(",")) if pending else ()
        return cls(int(below), ids)

    def sees(self, version: int) -> bool:
        return version < self.below and version not in self.pending


def declare_counter(dbconn: DBConn, create: bool) -> None:
    """SQLite: declare (and with ``create``, create and seed) the version counter table."""
    if not dbconn.is_sqlite:
        return
    table = dbconn.get_table(
        VERSION_TABLE, [Column("id", Integer, primary_key=True), Column("version", BigInteger)], create
    )
    if create and table_creation_allowed():
        with dbconn.begin() as con:
            con.execute(table.insert().prefix_with("OR IGNORE").values(id=1, version=0))


# a scalar subquery: the server evaluates it once per statement (an InitPlan), not once per row written
PG_WRITE_VERSION = "(SELECT pg_current_xact_id()::text::bigint)"


def write_version(con: Connection) -> int:
    """The version of the write transaction ``con`` is in (called before writing metadata rows).

    PostgreSQL: the transaction's id (assigning one if it has none yet). SQLite: the next counter
    value, taken once per transaction; the statement also takes SQLite's write lock, which the
    transaction then holds until it commits.
    """
    cached = con.info.get("datapipe_version")
    tx = con.get_transaction()
    if cached is not None and cached[0] is tx:
        return int(cached[1])
    if con.dialect.name == "postgresql":
        value = con.exec_driver_sql(f"SELECT {PG_WRITE_VERSION}").scalar_one()
    else:
        value = con.exec_driver_sql(
            f"INSERT INTO {VERSION_TABLE} (id, version) VALUES (1, 1) "
            "ON CONFLICT (id) DO UPDATE SET version = version + 1 RETURNING version"
        ).scalar_one()
    con.info["datapipe_version"] = (tx, int(value))
    return int(value)


def version_value(con: Connection) -> Any:
    """The version of the write transaction ``con`` is in, as a value for an ``UPDATE``'s ``SET``.

    PostgreSQL: the SQL expression (evaluated by the server: no round trip). SQLite: the number.
    """
    if con.dialect.name == "postgresql":
        return literal_column(PG_WRITE_VERSION)
    return write_version(con)


def stamp_upsert(con: Connection, columns: List[str], lists: List[List[Any]], kinds: List[str]) -> Dict[str, str]:
    """Add the write's ``version`` column to a bulk upsert of ``columns``/``lists``/``kinds``.

    PostgreSQL: returned as an SQL expression for ``bulk_upsert_values(extra=...)``, the same text for
    every statement (so it caches). SQLite: appended as a bound column holding the counter value.
    """
    if con.dialect.name == "postgresql":
        return {"version": PG_WRITE_VERSION}
    n = len(lists[0]) if lists else 0
    columns.append("version")
    lists.append([write_version(con)] * n)
    kinds.append("i")
    return {}


_PG_SNAPSHOT = (
    "SELECT pg_snapshot_xmax(s)::text::bigint, "
    "array_to_string(ARRAY(SELECT x::text FROM pg_snapshot_xip(s) AS x), ',') "
    "FROM pg_current_snapshot() AS s"
)


def take_snapshot(dbconn: DBConn) -> Snapshot:
    """The database's version state now; take it *before* reading what it is meant to cover."""
    with dbconn.read() as con:
        if con.dialect.name == "postgresql":
            below, pending = con.exec_driver_sql(_PG_SNAPSHOT).one()
            return Snapshot.decode(below, pending)
        row = con.exec_driver_sql(f"SELECT version FROM {VERSION_TABLE} WHERE id = 1").first()
    return Snapshot(int(row[0]) + 1 if row is not None else 1)


def not_seen(version: Any, below: Any, pending: Any) -> Any:
    """SQL: ``version`` is not visible in the snapshot stored in columns ``below``/``pending``.

    A NULL ``below`` means "nothing seen". Pending ids are matched on the comma-separated text,
    which works alike on PostgreSQL and SQLite; the list is empty in all but concurrent moments.
    """
    as_text = cast(version, String)
    in_pending = and_(
        pending.is_not(None),
        (literal(",") + pending + literal(",")).like(literal("%,") + as_text + literal(",%")),
    )
    return or_(below.is_(None), version >= below, in_pending)


def unseen_rows(version: Any, snapshot: Optional[Snapshot], name: Optional[str] = None) -> Any:
    """SQL: rows whose ``version`` is not visible in ``snapshot`` (every versioned row when None).

    An index range scan on ``version`` plus point lookups of the pending ids. With ``name``, the
    snapshot's values are the parameters ``snapshot_params(name, snapshot)`` names, so the clause can
    be reused with another snapshot of the same shape (with or without pending ids).
    """
    if snapshot is None:
        return version.is_not(None)
    below: Any = snapshot.below
    pending: Any = list(snapshot.pending)
    if name is not None:
        below = bindparam(f"{name}_below", snapshot.below, type_=BigInteger)
        pending = bindparam(f"{name}_pending", list(snapshot.pending), expanding=True)
    clause = version >= below
    if snapshot.pending:
        clause = or_(clause, version.in_(pending))
    return clause


def snapshot_params(name: str, snapshot: Optional[Snapshot]) -> Dict[str, Any]:
    """The parameter values of ``unseen_rows(version, snapshot, name)``."""
    if snapshot is None:
        return {}
    params: Dict[str, Any] = {f"{name}_below": snapshot.below}
    if snapshot.pending:
        params[f"{name}_pending"] = list(snapshot.pending)
    return params

