"""Tables as Datapipe sees them: a ``TableStore`` for data plus a ``TableMeta`` for metadata."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import Table, and_, select
from sqlalchemy.exc import SQLAlchemyError

from datapipe import keyset
from datapipe.errors import StoreError
from datapipe.meta.sql_meta import TableMeta
from datapipe.run_config import RunConfig, filter_rows
from datapipe.sql.connection import DBConn
from datapipe.sql.rows import fetch_rows, key_chunks, key_filter, rows_to_df
from datapipe.sql.schema import python_type
from datapipe.store.database import TableStoreDB
from datapipe.store.table_store import TableStore
from datapipe.types import DataDF, IndexDF, MetadataDF

logger = logging.getLogger("datapipe.datatable")

#: Test-only fault injection. When not None it is called as ``fault_hook(point, table)`` at named
#: points of the write path; the reliability tests install a function that SIGKILLs the process there.
#: Points: ``"after_data_write"`` (the store was written, the table's metadata not yet) and
#: ``"after_data_delete"`` (rows were deleted from the store, not yet tombstoned). Costs one
#: ``is None`` check when unset.
fault_hook: Optional[Callable[[str, DataTable], None]] = None


class DataTable:
    """One table: its store, its metadata, and the write path that keeps the two in step.

    Get it from the data store (``ds.get_table("users")``) once the pipeline is built. Write
    source tables through it (``store_chunk``, ``delete_by_idx``) rather than to the store
    directly: only writes recorded in the metadata are seen by the steps.

    Attributes:
        name: the table's name (its metadata table is ``<name>_meta``).
        primary_keys: the key column names.
        table_store: the ``TableStore`` holding the rows.
        meta: the table's metadata (``datapipe.meta.sql_meta.TableMeta``).

    Example:
        ```python
        users = ds.get_table("users")
        users.store_chunk(pd.DataFrame({"user_id": [1], "name": ["Ann"]}))
        users.delete_by_idx(pd.DataFrame({"user_id": [1]}))
        users.get_data()          # every live row
        users.get_size()          # from the metadata, without reading the store
        ```
    """

    def __init__(self, name: str, meta_dbconn: DBConn, meta: TableMeta, table_store: TableStore) -> None:
        self.name = name
        self.meta_dbconn = meta_dbconn
        self.meta = meta
        self.table_store = table_store
        self.primary_keys: List[str] = list(meta.primary_keys)
        self.primary_schema = meta.primary_schema

    def __repr__(self) -> str:
        return f"DataTable({self.name!r}, {self.table_store.describe()})"

    # ---------------------------------------------------------------- reads

    def get_metadata(self, idx: Optional[IndexDF] = None) -> MetadataDF:
        return self.meta.get_metadata(idx)

    def get_data(self, idx: Optional[IndexDF] = None) -> DataDF:
        """Rows for the keys in ``idx`` (every row when None)."""
        return self.table_store.read_rows(idx)

    def get_size(self) -> int:
        """Number of live rows, from the metadata."""
        return self.meta.get_size()

    @property
    def live_data_table(self) -> Optional[Table]:
        """The SQL table ``get_live_data`` joins to the metadata; None when the store is not an SQL table
        in the metadata database."""
        store = self.table_store
        if not isinstance(store, TableStoreDB) or not store.in_database(self.meta.dbconn):
            return None
        return store.data_table

    def get_live_data(self, keys: pd.DataFrame) -> Optional[DataDF]:
        """Rows whose live metadata matches ``keys`` (some key or ``MetaKey`` columns), in one query
        joining the store's table to the metadata table; None when the store is not an SQL table in
        the metadata database (then look the keys up with ``meta.get_existing_idx`` first)."""
        d, m = self.live_data_table, self.meta.sql_table
        if d is None:
            return None
        columns = [str(c.name) for c in d.columns]
        sql = (
            select(*[d.c[c] for c in columns])
            .select_from(d.join(m, and_(*[d.c[k] == m.c[k] for k in self.primary_keys])))
            .where(m.c.delete_ts.is_(None))
        )
        # PostgreSQL: the keys narrow the data table too, so that it is read by an index scan rather than
        # looked up row by row (SQLite drives the join from one side anyway and only pays for the second filter)
        data_keys = [] if self.meta.dbconn.is_sqlite else [c for c in keys.columns if c in self.primary_keys]
        rows: List[Any] = []
        if len(keys):
            with self.meta.dbconn.read() as con:
                for chunk in key_chunks(keys):
                    where = key_filter(m, chunk)
                    if data_keys:
                        where = and_(where, key_filter(d, chunk[data_keys]))
                    rows.extend(fetch_rows(con, sql.where(where)))
        return DataDF(rows_to_df(rows, columns))

    # ---------------------------------------------------------------- validation

    def check_chunk(self, df: pd.DataFrame, context: Optional[str] = None) -> pd.DataFrame:
        """Return ``df`` if it may be stored, else raise ``TypeError``/``ValueError`` saying why.

        An empty frame without columns stands for "no rows" and comes back with the key columns.
        """
        where = context or f"table {self.name!r}"
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
        missing = [k for k in self.primary_keys if k not in df.columns]
        if missing and len(df) == 0:
            return keyset.empty(self.primary_keys)
        if missing:
            raise ValueError(f"{where}: missing primary key column(s) {missing} (got columns {list(df.columns)})")
        if len(df) == 0:
            return df
        null_keys = [k for k in self.primary_keys if df[k].isna().any()]
        if null_keys:
            raise ValueError(f"{where}: null values in primary key column(s) {null_keys}")
        df = self._check_key_types(df, where)
        keys = self.primary_keys
        dup = df[keys[0]].duplicated(keep=False) if len(keys) == 1 else df.duplicated(keys, keep=False)
        if dup.any():
            sample = df.loc[dup, self.primary_keys].head(3).to_dict("records")
            raise ValueError(f"{where}: {int(dup.sum())} rows have duplicate primary keys, e.g. {sample}")
        return df

    def _check_key_types(self, df: pd.DataFrame, where: str) -> pd.DataFrame:
        """Raise on key columns whose values cannot have the table's key type; return ``df`` with
        integer keys held in object columns (what ``DataFrame.explode`` leaves) converted to int64."""
        for col in self.primary_schema:
            expected = python_type(col.type)
            if expected is None:
                continue
            name = str(col.name)
            if expected is int and df[name].dtype.kind == "O" and pd.api.types.infer_dtype(df[name]) == "integer":
                df = df.assign(**{name: df[name].astype("int64")})
            kind = df[name].dtype.kind
            if (expected is int and kind not in "iu") or (expected is str and kind in "iufb"):
                raise ValueError(
                    f"{where}: key column {col.name!r} holds {df[str(col.name)].dtype} values, "
                    f"but the table's key type is {expected.__name__}"
                )
        return df

    def _match_existing(self, df: pd.DataFrame, existing: pd.DataFrame) -> np.ndarray:
        """Row number in ``existing`` of each row of ``df`` (by primary key), -1 when absent."""
        try:
            return keyset.positions(df, existing, self.primary_keys)
        except (TypeError, ValueError) as e:
            dtypes = {k: str(df[k].dtype) for k in self.primary_keys}
            stored = {k: str(existing[k].dtype) for k in self.primary_keys}
            raise ValueError(
                f"table {self.name!r}: key types {dtypes} do not match the stored key types {stored}: {e}"
            ) from e

    def _lookup(self, data_df: pd.DataFrame, processed_idx: Optional[IndexDF], full_keys: bool) -> pd.DataFrame:
        """Stored metadata of the keys of ``data_df`` (and of ``processed_idx`` when it has every key column)."""
        keys = self.primary_keys
        idx = keyset.select(data_df, keys)
        if full_keys and processed_idx is not None:  # mostly the same keys: look each up once
            idx = keyset.unique(pd.concat([idx, keyset.select(processed_idx, keys)], ignore_index=True))
        if len(idx) == 0:
            return keyset.empty([*keys, "hash", "create_ts", "delete_ts"])
        return self.meta.lookup(IndexDF(idx))

    # ---------------------------------------------------------------- writes

    def _write_rows(self, df: pd.DataFrame, now: float, write_store: bool, existing: pd.DataFrame) -> IndexDF:
        """Write new/changed rows, confirm unchanged ones; return the keys that changed.

        ``existing`` is the stored metadata (``TableMeta.lookup``) of at least the keys of ``df``.
        """
        keys = self.primary_keys
        hashes = self.table_store.hash_rows(DataDF(df)).to_numpy()
        pos = self._match_existing(df, existing)
        alive = pos >= 0
        new = not alive.any()  # no key of ``df`` was ever recorded: a first write of all of them
        if not new:
            take = np.where(alive, pos, 0)
            alive &= existing["delete_ts"].isna().to_numpy()[take]
            changed_mask = ~alive | (existing["hash"].to_numpy()[take] != hashes)
            create_ts = np.where(alive, existing["create_ts"].to_numpy()[take], now)
        else:
            changed_mask = np.ones(len(df), dtype=bool)
            create_ts = np.full(len(df), now)
        all_changed = bool(changed_mask.all())
        changed_df = df if all_changed else df[changed_mask]
        if write_store and len(changed_df):
            if new:
                self.table_store.insert_new_rows(DataDF(changed_df))
            else:
                self.table_store.insert_rows(DataDF(changed_df))
            if fault_hook is not None:
                fault_hook("after_data_write", self)
        meta_cols = [c for c in self.meta.meta_keys if c in df.columns]
        changed_keys = keyset.select(changed_df, [*keys, *meta_cols])
        self.meta.upsert_changed(changed_keys, hashes[changed_mask], create_ts[changed_mask], now, new=new)
        if not all_changed:
            self.meta.touch(IndexDF(keyset.select(df[~changed_mask], keys)), now)
        return IndexDF(keyset.select(changed_df, keys).reset_index(drop=True))

    def _delete_rows(self, idx: IndexDF, now: float, delete_store: bool = True) -> None:
        """Delete ``idx`` from the store (unless ``delete_store`` is False) and tombstone it."""
        if len(idx) == 0:
            return
        self._delete_stored(idx, delete_store)
        self.meta.mark_deleted(idx, now)

    def _delete_live(self, idx: IndexDF, now: float, delete_store: bool) -> IndexDF:
        """Tombstone the live (or unconfirmed) keys among ``idx``, then delete their rows from the store
        (unless ``delete_store`` is False); return those keys. Both happen before the unit of work
        commits, so their order does not matter to a crash."""
        deleted = self.meta.mark_deleted_live(idx, now)
        if len(deleted):
            self._delete_stored(deleted, delete_store)
        return deleted

    def _delete_stored(self, idx: IndexDF, delete_store: bool) -> None:
        if delete_store and self.table_store.caps.supports_delete:
            self.table_store.delete_rows(idx)
            if fault_hook is not None:
                fault_hook("after_data_delete", self)

    def apply_write(self, write: TableWrite, now: float) -> Tuple[IndexDF, IndexDF]:
        """Write ``write`` inside the current transaction: its data, then its metadata.

        Returns ``(changed, deleted)`` keys. Called by ``write_tables`` only, after validation and
        write intents; see there for the protocol.
        """
        data_df, scope, keys = write.frame, write.scope, self.primary_keys
        has_scope = scope is not None and len(scope) > 0
        full_keys = scope is not None and has_scope and all(k in scope.columns for k in keys)
        if write.fresh:  # checked by ``write_tables`` with ``writes_fresh``
            changed = self._write_fresh(data_df, now)
            if changed is not None:
                return changed, IndexDF(changed.iloc[0:0])
        if full_keys and not len(data_df):  # only deletions: the tombstones find the live keys themselves
            return IndexDF(keyset.select(data_df, keys)), self._delete_live(IndexDF(scope), now, write.write_store)
        # one metadata read serves both change detection and the deletion of vanished rows
        existing = self._lookup(data_df, scope, full_keys) if len(data_df) or full_keys else self._no_rows()
        data_keys = keyset.select(data_df, keys)
        changed = IndexDF(data_keys)
        if len(data_df):
            changed = self._write_rows(data_df, now, write.write_store, existing)
        deleted = IndexDF(data_keys.iloc[0:0])
        if scope is not None and has_scope:
            deleted = self._vanished(data_df, scope, existing if full_keys else None)
            self._delete_rows(deleted, now, write.write_store)
        return changed, deleted

    def writes_fresh(self, write: TableWrite) -> bool:
        """Whether ``write`` (``fresh``, validated) may skip reading the stored metadata: it has rows,
        they go to the metadata database's transaction, and nothing in its scope can be deleted (every
        key of the scope has a row)."""
        data_df, scope = write.frame, write.scope
        if not (write.fresh and len(data_df) and write.write_store):
            return False
        if not self.table_store.in_database(self.meta_dbconn):
            return False
        if scope is None or len(scope) == 0:
            return True
        if not all(k in scope.columns for k in self.primary_keys):
            return False
        return bool(keyset.isin(scope, data_df, self.primary_keys).all())

    def _write_fresh(self, df: pd.DataFrame, now: float) -> Optional[IndexDF]:
        """Write rows believed never recorded without reading the stored metadata first; their keys,
        or None when some key was recorded after all (the caller then writes them the exact way: the
        data rows written here are written again, the metadata rows are read and compared)."""
        hashes = self.table_store.hash_rows(DataDF(df)).to_numpy()
        self.table_store.insert_new_rows(DataDF(df))
        if fault_hook is not None:
            fault_hook("after_data_write", self)
        meta_cols = [c for c in self.meta.meta_keys if c in df.columns]
        if not self.meta.insert_new(keyset.select(df, [*self.primary_keys, *meta_cols]), hashes, now):
            logger.debug("table %s: a key believed new was recorded; writing the batch the exact way", self.name)
            return None
        return IndexDF(keyset.select(df, self.primary_keys).reset_index(drop=True))

    def _no_rows(self) -> pd.DataFrame:
        return keyset.empty([*self.primary_keys, "hash", "create_ts", "delete_ts"])

    def _vanished(self, data_df: pd.DataFrame, scope: IndexDF, existing: Optional[pd.DataFrame]) -> IndexDF:
        """Keys in ``scope`` stored before (live, or an unconfirmed write) that ``data_df`` no longer has."""
        keys = self.primary_keys
        if existing is not None:  # ``scope`` has every key column: its metadata is already in ``existing``
            live = existing
            # one mask, one selection: live (or unconfirmed), in scope, gone from ``data_df``
            gone = (existing["delete_ts"].isna() | existing["hash"].isna()).to_numpy() & keyset.isin(
                existing, scope, keys)
        else:
            live = self.meta.get_existing_idx(scope, unconfirmed=True)
            gone = np.ones(len(live), dtype=bool)
        gone &= ~keyset.isin(live, data_df, keys)
        if not gone.any():
            return IndexDF(keyset.empty(keys))
        return IndexDF(keyset.select(live[gone], keys).reset_index(drop=True))

    def store_chunk(
        self,
        data_df: DataDF,
        processed_idx: Optional[IndexDF] = None,
        now: Optional[float] = None,
        run_config: Optional[RunConfig] = None,
    ) -> IndexDF:
        """Write ``data_df`` and record its changes; rows of ``processed_idx`` absent from it are deleted.

        Rows are hashed: new or changed rows are written to the store and get a new change
        version (steps reading this table will process them); unchanged rows are not rewritten.
        ``processed_idx`` says "this is the complete new content for these keys": its keys that
        ``data_df`` lacks are deleted. ``now`` only sets the informative timestamps.

        Raises:
            ValueError: duplicate primary keys, missing or null key columns.
            TypeError: values that do not fit the table's column types.

        Returns:
            The keys of every changed row: new, updated and deleted (as datapipe 0.15 does).
        """
        [(changed, deleted)] = write_tables(self.meta_dbconn, [TableWrite(self, data_df, processed_idx)], now)
        if len(deleted) == 0:
            return changed
        return IndexDF(pd.concat([changed, deleted], ignore_index=True))

    def delete_by_idx(self, idx: IndexDF, now: Optional[float] = None, run_config: Optional[RunConfig] = None) -> None:
        """Delete the live rows among ``idx`` from the store and tombstone them in the metadata."""
        if len(idx) == 0:
            return
        at = time.time() if now is None else now

        def delete() -> None:
            with self.meta_dbconn.transaction():
                existing = self.meta.get_existing_idx(IndexDF(keyset.select(idx, self.primary_keys)))
                self._delete_rows(IndexDF(keyset.sort(existing, self.primary_keys)), at)

        self.meta_dbconn.retrying_conflicts(delete, f"deleting rows of table {self.name!r}")

    def delete_stale_by_process_ts(
        self,
        process_ts: float,
        now: Optional[float] = None,
        run_config: Optional[RunConfig] = None,
        delete_store: bool = True,
    ) -> IndexDF:
        """Delete live rows not written or confirmed since ``process_ts``; return their keys.

        With ``run_config.filters``, only rows matching the filters are deleted (a filtered run
        regenerates only part of the table, so rows outside it are not stale).
        """
        at = time.time() if now is None else now
        filters = run_config.filters if run_config is not None else None
        deleted: List[IndexDF] = []
        for chunk in self.meta.iter_stale_idx(process_ts):
            if filters:
                chunk = self._matching(chunk, filters)
            self.meta_dbconn.retrying_conflicts(
                partial(self._delete_stale, chunk, at, delete_store), f"deleting stale rows of {self.name!r}"
            )
            deleted.append(chunk)
        if not deleted:
            return IndexDF(keyset.empty(self.primary_keys))
        return IndexDF(pd.concat(deleted, ignore_index=True))

    def _delete_stale(self, idx: IndexDF, now: float, delete_store: bool) -> None:
        with self.meta_dbconn.transaction():
            self._delete_rows(idx, now, delete_store)

    def _matching(self, idx: IndexDF, filters: Any) -> IndexDF:
        """The keys of ``idx`` whose rows match ``filters`` (read from the store when a filter is not a key)."""
        columns = set(filters) if isinstance(filters, dict) else {c for f in filters for c in f}
        if columns <= set(idx.columns):
            return IndexDF(filter_rows(idx, filters))
        data = self.get_data(idx)
        return IndexDF(keyset.select(filter_rows(data, filters), self.primary_keys).reset_index(drop=True))

    def reset_metadata(self) -> None:
        """Mark every row as never confirmed (``process_ts = 0``)."""
        self.meta.reset_process_ts()


# ---------------------------------------------------------------- the unit of work


@dataclass
class TableWrite:
    """Rows for one table in a unit of work.

    ``frame`` replaces what the table held for the keys of ``scope`` (rows of ``scope`` absent from
    ``frame`` are deleted; None deletes nothing). ``context`` prefixes error messages (e.g. the step
    and table); ``write_store=False`` records the rows in the metadata only (for stores written by
    someone else, see ``UpdateExternalTable``). ``fresh``: the table's keys are believed never
    recorded (its metadata was empty when the run began), so the rows are inserted without reading
    the stored metadata first; a key recorded after all is noticed and the write done the exact way.
    """

    table: DataTable
    frame: pd.DataFrame
    scope: Optional[IndexDF] = None
    context: Optional[str] = None
    write_store: bool = True
    fresh: bool = False


WriteResults = List[Tuple[IndexDF, IndexDF]]


@dataclass
class StartedWrite:
    """A unit of work started by ``start_writing_tables``: ``result()`` (call it once) returns its
    ``(changed, deleted)`` keys per write or raises its error; ``in_flight``: the server may still be
    writing it, and ``result()`` waits for the outcome."""

    result: Callable[[], WriteResults]
    in_flight: bool = False


def write_tables(
    dbconn: DBConn,
    writes: Sequence[TableWrite],
    now: Optional[float] = None,
    then: Optional[Callable[[], None]] = None,
) -> WriteResults:
    """The one way Datapipe writes tables: returns ``(changed, deleted)`` keys per write.

    1. every frame is validated (``DataTable.check_chunk``): bad input raises before anything is written;
    2. for stores outside the metadata database, the keys about to be written are noted as
       *unconfirmed writes* in a transaction of their own (``TableMeta.record_write_intent``), so a
       crash between the store write and the metadata write cannot leave rows Datapipe does not know;
    3. one metadata transaction (``dbconn.transaction()``): for each write its store rows, then its
       metadata; then ``then()``, which records what the writes stand for (a step's processed keys).
       When a store shares the metadata database its rows commit in the same transaction.

    A ``fresh`` write stays fresh only where ``DataTable.writes_fresh`` allows (rows into the metadata
    database, nothing in its scope to delete). On PostgreSQL, a unit of work whose writes are all
    fresh (a step's first run) is first sent in pipeline mode (``DBConn.send_pipelined``): it reads
    nothing, and its statements go out without waiting for each other's results. Should a statement
    fail (a key that was recorded after all, bad data), that attempt is rolled back whole and the unit
    of work runs again the ordinary way, which also reports any error exactly.

    ``ValueError``, ``TypeError`` and ``StoreError`` are re-raised with the write's ``context`` in front.
    """
    return start_writing_tables(dbconn, writes, now, then).result()


def start_writing_tables(
    dbconn: DBConn,
    writes: Sequence[TableWrite],
    now: Optional[float] = None,
    then: Optional[Callable[[], None]] = None,
) -> StartedWrite:
    """``write_tables``, whose end may still be in flight on return (``StartedWrite.in_flight``): its
    ``result()`` returns the results, or raises the error ``write_tables`` would raise.

    Only a pipelined unit of work is left in flight (sent through its ``COMMIT``, its outcome unread),
    and only while the connection pool has another connection to spare; meanwhile the caller may read
    and compute on other connections, e.g. prepare the next batch (``SingleThreadExecutor``). Any
    other write is done before this returns, and errors raised here are those of ``write_tables``.
    """
    now = time.time() if now is None else now
    checked = _checked(writes)
    for write in checked:
        table = write.table
        if write.write_store and len(write.frame) and not table.table_store.in_database(dbconn):
            intent = partial(table.meta.record_write_intent, keyset.select(write.frame, table.primary_keys), now)
            with named(write.context):
                dbconn.retrying_conflicts(intent, f"noting the writes to {table.name!r}")
    what = "writing " + ", ".join(write.context or f"table {write.table.name!r}" for write in checked)

    def ordinary() -> WriteResults:
        return dbconn.retrying_conflicts(lambda: _unit_of_work(dbconn, checked, now, then), what)

    if not (dbconn.can_pipeline and all(write.fresh for write in checked)):
        results = ordinary()
        return StartedWrite(lambda: results)
    try:
        results, pending = dbconn.send_pipelined(lambda: _apply_writes(checked, now, then))
    except (SQLAlchemyError, StoreError) as e:  # rolled back: written again below, where errors are exact
        logger.debug("pipelined unit of work failed (%s: %s); writing it again", type(e).__name__, e)
        results = ordinary()
        return StartedWrite(lambda: results)

    def settle() -> WriteResults:
        try:
            pending.wait()
        except (SQLAlchemyError, StoreError) as e:  # nothing committed (or unknown): written again, exactly
            logger.debug("pipelined unit of work failed (%s: %s); writing it again", type(e).__name__, e)
            return ordinary()
        return results

    spare = dbconn.spare_connections()
    if spare is not None and spare < 1:  # a small pool: the next batch could not read while this one waits
        settled = settle()
        return StartedWrite(lambda: settled)
    return StartedWrite(settle, in_flight=True)


def _checked(writes: Sequence[TableWrite]) -> List[TableWrite]:
    """The writes with validated frames sorted by key (rows are locked in key order), ``fresh`` only
    where the table allows it."""
    checked = []
    for write in writes:
        with named(write.context):
            frame = write.table.check_chunk(write.frame, write.context)
        checked.append(replace(write, frame=keyset.sort(frame, write.table.primary_keys)))
    return [replace(write, fresh=write.table.writes_fresh(write)) for write in checked]


def _unit_of_work(
    dbconn: DBConn, writes: Sequence[TableWrite], now: float, then: Optional[Callable[[], None]]
) -> WriteResults:
    with dbconn.transaction():
        return _apply_writes(writes, now, then)


def _apply_writes(writes: Sequence[TableWrite], now: float, then: Optional[Callable[[], None]]) -> WriteResults:
    results = []
    for write in writes:
        with named(write.context):
            results.append(write.table.apply_write(write, now))
    if then is not None:
        then()
    return results


@contextmanager
def named(context: Optional[str]) -> Iterator[None]:
    """Re-raise bad-data and store errors with ``context`` (e.g. step and table) in front of the message."""
    try:
        yield
    except (ValueError, TypeError, StoreError) as e:
        if context is None:
            raise
        raise with_context(e, context) from e


def with_context(error: Exception, context: str) -> Exception:
    """``error`` again with ``context`` in front, for exactly ``ValueError``/``TypeError``/``StoreError``
    (whose constructors take one message); any other class, or a message already naming the
    context, is returned unchanged."""
    if str(error).startswith(context.split(",")[0]) or type(error) not in (ValueError, TypeError, StoreError):
        return error
    return type(error)(f"{context}: {error}")



class DataStore:
    """The tables of a pipeline and the metadata database they share.

    Args:
        meta_dbconn: the database of the metadata (``<table>_meta``, ``<step>_meta``,
            ``datapipe_watermarks``). It may also hold data tables.
        create_meta_table: create missing metadata tables when tables and steps are first
            used. Off: they must exist (``datapipe db create-all``).

    Example:
        ```python
        ds = DataStore(DBConn("sqlite:///pipeline.db"), create_meta_table=True)
        ds.get_table("users").store_chunk(users_df)     # after build_compute / DatapipeApp
        ```
    """

    def __init__(self, meta_dbconn: DBConn, create_meta_table: bool = False) -> None:
        self.meta_dbconn = meta_dbconn
        self.create_meta_table = create_meta_table
        self.tables: Dict[str, DataTable] = {}

    def create_table(self, name: str, table_store: TableStore) -> DataTable:
        if name in self.tables:
            raise ValueError(f"table {name!r} already exists in this DataStore")
        meta = TableMeta(
            self.meta_dbconn,
            name,
            primary_schema=table_store.get_primary_schema(),
            meta_schema=table_store.get_meta_schema(),
            create_table=self.create_meta_table,
        )
        table = DataTable(name, self.meta_dbconn, meta, table_store)
        self.tables[name] = table
        return table

    def get_or_create_table(self, name: str, table_store: TableStore) -> DataTable:
        if name in self.tables:
            return self.tables[name]
        return self.create_table(name, table_store)

    def write(
        self, writes: Sequence[TableWrite], now: Optional[float] = None, then: Optional[Callable[[], None]] = None
    ) -> WriteResults:
        """One unit of work on this store's tables; see ``write_tables``."""
        return write_tables(self.meta_dbconn, writes, now, then)

    def start_write(
        self, writes: Sequence[TableWrite], now: Optional[float] = None, then: Optional[Callable[[], None]] = None
    ) -> StartedWrite:
        """``write``, whose end may still be in flight; see ``start_writing_tables``."""
        return start_writing_tables(self.meta_dbconn, writes, now, then)

    def get_table(self, name: str) -> DataTable:
        if name not in self.tables:
            raise KeyError(f"table {name!r} is not known; known tables: {sorted(self.tables)}")
        return self.tables[name]
