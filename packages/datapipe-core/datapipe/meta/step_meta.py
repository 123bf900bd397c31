"""A batch step's metadata: which keys it processed, and the change query that finds the pending ones.

``StepMeta`` is the ``<step>_meta`` table (``TransformMeta``, see ``datapipe.meta.sql_meta``) of a
batch step, together with what a run asks of it: the step's change query (``datapipe.meta.changes``)
with the step's own filters and order, the snapshot taken before the query is evaluated
(``datapipe.meta.versions``), the pending keys held in the database for a full run
(``datapipe.sql.pages``), and the lookup indexes the change query needs on the step's table (dropped
during a first run and built once at its end).
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pandas as pd
from sqlalchemy import Index, Table
from sqlalchemy import inspect as inspect_db
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select

from datapipe.errors import StoreError
from datapipe.meta.changes import ChangeQuery
from datapipe.meta.planner_stats import refresh_stale_statistics
from datapipe.meta.sql_meta import TransformMeta
from datapipe.meta.versions import Snapshot, take_snapshot
from datapipe.run_config import LabelDict, RunConfig
from datapipe.sql.connection import table_creation_allowed
from datapipe.sql.pages import MaterialisedRows

logger = logging.getLogger("datapipe.meta.step_meta")

#: A step's own filters: label dicts, a frame of them, or a callable returning either.
Filters = Union[LabelDict, List[LabelDict], pd.DataFrame, Callable[[], Any], None]


def normalise_filters(filters: Filters) -> List[LabelDict]:
    if filters is None:
        return []
    if callable(filters):
        filters = filters()
    if isinstance(filters, pd.DataFrame):
        return [{str(k): v for k, v in r.items()} for r in filters.to_dict("records")]
    if isinstance(filters, dict):
        return [filters] if filters else []
    return list(filters)  # type: ignore[arg-type]


class StepMeta(TransformMeta):
    """A batch step's processing state and its change query: which keys are pending.

    ``plan`` gives the change query and the step's own filters and order once the step has
    worked them out (``BaseBatchTransformStep.__init__``).
    """

    changes: ChangeQuery
    filters: Filters = None
    order_by: Optional[List[str]] = None
    descending: bool = False
    lookup_indexes: Sequence[Index] = ()  # see ensure_indexes
    may_create_indexes: bool = False
    joined_data: Sequence[Table] = ()  # see plan

    def plan(
        self,
        changes: ChangeQuery,
        filters: Filters,
        order_by: Optional[List[str]],
        descending: bool,
        joined_data: Sequence[Table] = (),
    ) -> None:
        """What the step's change query covers; ``joined_data``: the SQL data tables its batches read
        joined to their metadata (``DataTable.get_live_data``), analyzed with the metadata when stale."""
        self.changes, self.filters, self.order_by, self.descending = changes, filters, order_by, descending
        self.joined_data = list(joined_data)

    def ensure_indexes(self, column_sets: List[List[str]], create: bool) -> None:
        """Declare (and with ``create``, create if missing) an index on each of ``column_sets``."""
        table = self.sql_table
        self.lookup_indexes = []
        self.may_create_indexes = create and table_creation_allowed()
        for cols in column_sets:
            name = f"ix_{table.name}_{'_'.join(cols)}"
            if len(name) > 60:  # PostgreSQL truncates identifiers at 63 bytes
                name = f"ix_{str(table.name)[:40]}_{hashlib.sha1(name.encode()).hexdigest()[:12]}"
            index = next((ix for ix in table.indexes if ix.name == name), None)
            if index is None:
                index = Index(name, *[table.c[c] for c in cols])
            self.lookup_indexes.append(index)
            if self.may_create_indexes:
                self._create_index(index)

    def _create_index(self, index: Index) -> None:
        try:
            with self.dbconn.begin() as con:
                index.create(con, checkfirst=True)
        except (StoreError, DBAPIError):  # another runner created it at the same moment
            with self.dbconn.read() as con:
                existing = inspect_db(con).get_indexes(str(self.sql_table.name), schema=self.sql_table.schema)
            if index.name not in {ix["name"] for ix in existing}:
                raise

    @contextmanager
    def indexes_built_after(self, first_run: bool) -> Iterator[None]:
        """Around a step's first run (``first_run``: its metadata is empty), drop its lookup indexes
        and build each once at the end, even when the run fails.

        Keeping them up to date row by row is most of the cost of a first run of a cross join: every
        batch inserts its keys all over an index on the other side's key. A sorted build at the end
        costs a fraction. Only this step's runner writes its metadata (``datapipe.meta.locks``), and
        an index missing after a killed run is created again when the step is next built.
        """
        if not (first_run and self.lookup_indexes and self.may_create_indexes):
            yield
            return
        with self.dbconn.begin() as con:
            for index in self.lookup_indexes:
                index.drop(con, checkfirst=True)
        failed = True
        try:
            yield
            failed = False
        finally:
            started = time.perf_counter()
            try:
                for index in self.lookup_indexes:
                    self._create_index(index)
            except Exception as e:  # noqa: BLE001 - do not hide the run's own error behind this one
                if not failed:
                    raise
                logger.warning("step %s: lookup indexes not rebuilt after the failed run (%s); "
                               "they are created when the step is next built", self.name, e)
            else:
                logger.info("step %s: built %d lookup index(es) in %.2f s", self.name,
                            len(self.lookup_indexes), time.perf_counter() - started)

    def run_filters(self, run_config: Optional[RunConfig]) -> List[LabelDict]:
        """The step's filters combined with those of ``run_config`` (every pair merged)."""
        result = normalise_filters(self.filters)
        if run_config is not None and run_config.filters:
            run_filters = normalise_filters(run_config.filters)
            result = [{**a, **b} for a in (result or [{}]) for b in run_filters]
        return result

    def can_advance_watermark(self, run_config: Optional[RunConfig]) -> bool:
        """Only a run that saw every key may move the watermarks (static dict filters are part of the step)."""
        return not callable(self.filters) and not (run_config is not None and run_config.filters)

    def require_upgraded(self) -> None:
        super().require_upgraded()
        for inp in self.changes.inputs:
            inp.meta.require_upgraded()

    def _changed_query(
        self, run_config: Optional[RunConfig]
    ) -> Tuple[Optional[Select[Any]], Dict[str, Any], Snapshot, bool]:
        """The change query of a full run, its parameter values, the snapshot taken before it is
        evaluated, and whether the step has watermarks (has run before: its changes are likely few)."""
        self.require_upgraded()
        metadata = [self.sql_table, *[inp.meta.sql_table for inp in self.changes.inputs]]
        refresh_stale_statistics(self.dbconn, [*metadata, *self.joined_data])
        snapshot = take_snapshot(self.dbconn)  # before the query: what it may miss stays unseen
        marks = self.get_watermarks()
        query, params = self.changes.window_query(
            marks, self.run_filters(run_config), order_by=self.order_by, descending=self.descending
        )
        return query, params, snapshot, bool(marks)

    def get_changed_idx(self, run_config: Optional[RunConfig] = None) -> Tuple[pd.DataFrame, Snapshot]:
        """Keys needing processing, and the snapshot to store as every input's watermark once they are."""
        query, params, snapshot, _ = self._changed_query(run_config)
        return self.changes.fetch(query, params), snapshot

    def open_changed_keys(
        self, run_config: Optional[RunConfig] = None, page_rows: Optional[int] = None
    ) -> Tuple[MaterialisedRows, Snapshot]:
        """Like ``get_changed_idx``, but the keys stay in the database, to be read in pages of
        ``page_rows``: the caller must ``close()`` the result (or use it in a ``with`` block)."""
        query, params, snapshot, rerun = self._changed_query(run_config)
        return self.changes.materialise(query, page_rows, params, small_expected=rerun).open(), snapshot

    def get_changed_idx_count(self, ds: Any = None, run_config: Optional[RunConfig] = None) -> int:
        """How many keys are pending, counted in the database without fetching them (the 0.15 API
        passes the ``DataStore``, which is not needed)."""
        self.require_upgraded()
        wheres = self.changes.window_wheres(self.get_watermarks())
        return self.changes.count(self.changes.build(wheres, filters=self.run_filters(run_config)))
