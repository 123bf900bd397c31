"""BatchTransform: call a function on batches of changed keys and keep its outputs in sync.

The unit of work is a *transform key* (by default the primary-key columns shared by the
inputs and the outputs). A full run takes a version snapshot, has the database evaluate the
change query (``datapipe.meta.changes``) once and hold the pending keys (``datapipe.sql.pages``),
reads them back a page at a time (``settings.key_page_rows`` keys, whole batches), cuts each page
into batches of ``chunk_size``, and for each batch

1. reads the input rows of those keys,
2. calls the function,
3. in one metadata transaction: writes the outputs (rows the function no longer returns for
   these keys are deleted) and records the keys as processed, together with the version
   snapshot taken before step 1 (``datapipe.meta.versions``; in a full run, one taken as the batch's
   page of keys was read): any input change that commits after it is not visible in it, so the
   next run picks the key up again.

A failing batch is recorded (``is_success=False`` with the error text) and retried next run.
Only after every batch of a complete, unfiltered run is the run's snapshot stored as the inputs'
watermark. Client memory for keys is bounded by the page size, not by how many keys are pending, and
a full run's batches report counts of changed output keys (``ChangeCounts``), not the keys: a full
run passes nothing downstream, so the executor keeps nothing that grows with the run.
"""

from __future__ import annotations

import inspect
import logging
import math
import pickle
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Type, Union

import pandas as pd
from sqlalchemy import Column, Integer, Table

from datapipe import keyset
from datapipe.compute import (
    Catalog,
    ComputeInput,
    ComputeOutput,
    ComputeStep,
    PipelineStep,
    StepRun,
    StepStatus,
    resolve_inputs,
    resolve_outputs,
    step_name,
)
from datapipe.datatable import DataStore, StartedWrite, TableWrite
from datapipe.errors import ConfigError
from datapipe.executor import BatchProcessor, Executor, ExecutorConfig, PreparedBatch, SingleThreadExecutor
from datapipe.meta.changes import GLOBAL_KEY, ChangeQuery, InputKeys, input_key_columns
from datapipe.meta.step_meta import Filters, StepMeta, normalise_filters
from datapipe.meta.versions import Snapshot, take_snapshot
from datapipe.run_config import RunConfig, filter_rows
from datapipe.run_result import attach_failure
from datapipe.settings import settings
from datapipe.sql.pages import MaterialisedRows
from datapipe.sql.schema import BASIC, python_type
from datapipe.types import ChangeList, DataSchema, IndexDF, Labels, TransformResult

logger = logging.getLogger("datapipe.step.batch_transform")

INJECTABLE = ("idx", "ds", "run_config")


def _unique(items: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(items))


def _transform_space(columns: Sequence[Column], renames: Optional[Dict[str, str]]) -> List[Tuple[str, Column]]:
    inverse = {col: tk for tk, col in (renames or {}).items()}
    return [(inverse.get(str(c.name), str(c.name)), c) for c in columns]


def compute_transform_schema(
    name: str,
    inputs: Sequence[ComputeInput],
    outputs: Sequence[ComputeOutput],
    transform_keys: Optional[List[str]],
) -> DataSchema:
    """Transform keys (with column types) of a step; see the module docstring."""
    check_key_types(name, inputs, outputs)
    in_cols = [kv for ci in inputs for kv in _transform_space(ci.dt.primary_schema, ci.keys)]
    out_cols = [kv for co in outputs for kv in _transform_space(co.dt.primary_schema, co.keys)]
    meta_cols = [kv for ci in inputs for kv in _transform_space(ci.dt.meta.meta_schema, ci.keys)]
    if transform_keys is None:
        out_names = {k for k, _ in out_cols}
        keys = _unique([k for k, _ in in_cols if k in out_names])
        if not keys:
            raise ConfigError(
                f"step {name!r}: inputs {[c.name for c in inputs]} and outputs {[c.name for c in outputs]} "
                "share no primary key column; pass transform_keys="
            )
    else:
        keys = list(transform_keys)
    types: Dict[str, Any] = {}
    for k, col in [*in_cols, *meta_cols, *out_cols]:
        types.setdefault(k, col.type)
    unknown = [k for k in keys if k not in types]
    if unknown:
        raise ConfigError(f"step {name!r}: transform key(s) {unknown} are not columns of any input or output")
    return [Column(k, types[k], primary_key=True) for k in keys]


def check_key_types(name: str, inputs: Sequence[ComputeInput], outputs: Sequence[ComputeOutput]) -> None:
    """Raise ``ValueError`` when a key column has different types in two of the step's tables."""
    seen: Dict[str, Tuple[str, Any]] = {}
    tables: List[Union[ComputeInput, ComputeOutput]] = [*inputs, *outputs]
    for table in tables:
        for key, col in _transform_space(table.dt.primary_schema, table.keys):
            want = python_type(col.type)
            if key not in seen:
                seen[key] = (table.name, col.type)
                continue
            first, first_type = seen[key]
            have = python_type(first_type)
            if want in BASIC and have in BASIC and want is not have:
                raise ConfigError(
                    f"step {name!r}: key {key!r} is {first_type} in table {first!r} but {col.type} in table "
                    f"{table.name!r}; rows cannot be matched across them (use InputSpec(keys=...) or fix a schema)"
                )


def _project(idx: pd.DataFrame, cols: Dict[str, str]) -> pd.DataFrame:
    """Values of the key columns ``cols`` (transform key -> table column) of ``idx``, renamed.

    A projection onto fewer columns is de-duplicated; a batch's own keys are already distinct.
    """
    sub = keyset.select(idx, list(cols))
    if len(cols) < len(idx.columns):
        sub = keyset.unique(sub)
    if any(k != v for k, v in cols.items()):
        sub = sub.rename(columns=cols)
    return sub


_warned: Set[Tuple[str, str]] = set()  # (step, input) pairs already warned about in this process


def warn_untied_inputs(
    name: str, transform_keys: Sequence[str], inputs: Sequence[ComputeInput], columns: Sequence[Dict[str, str]]
) -> None:
    """Warn (once per process) about inputs that no transform key ties to their rows.

    Such an input is read whole for every batch, and a change to any of its rows makes every
    key of the step pending again: correct, but a full recomputation on each change. Usually
    the input carries a transform key as a plain column that should be declared ``MetaKey()``.
    """
    for ci, cols in zip(inputs, columns):
        if cols or (name, ci.name) in _warned:
            continue
        _warned.add((name, ci.name))
        logger.warning(
            "step %r: input %r has none of the transform keys %s among its key columns %s, so any change "
            "to it reprocesses every key of the step. If a column of %r holds a transform key, declare it "
            "in the table's schema as Column(..., MetaKey()) (datapipe.store.database.MetaKey), or map it "
            "with InputSpec(%r, keys={...}); see the docs page 'Transform keys and joins'.",
            name,
            ci.name,
            list(transform_keys),
            ci.primary_keys,
            ci.name,
            ci.name,
        )


def error_with_traceback(text: str, error: BaseException, limit: int = 4000) -> str:
    """``text`` (the error's one-line summary) and, after a blank line, its traceback, within ``limit``
    characters: the innermost frames are kept when the traceback is too long."""
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    room = limit - len(text) - 2
    if room <= 0:
        return text[:limit]
    if len(trace) > room:
        trace = "...\n" + trace[-(room - 4) :]
    return f"{text}\n\n{trace}"


class ChangeCounts(ChangeList):
    """What a batch of a full run reports: how many output keys changed and were deleted, not which.

    A full run does not pass its changes downstream, so the executor need not gather them: with
    the keys themselves, ten million processed records would keep ten million keys in memory.
    """

    def __init__(self, changed: int = 0, deleted: int = 0) -> None:
        super().__init__()
        self.total = changed
        self.deleted_count = deleted

    def key_count(self) -> int:
        return self.total

    def extend(self, other: ChangeList) -> None:
        self.total += other.key_count()
        self.deleted_count += other.deleted_count


@dataclass
class BatchOutcome:
    """What ``read_and_compute`` produced for one batch: the (filtered) keys and, unless the batch failed,
    one frame per output and the version snapshot taken before reading (no frames: nothing to do).

    A failure carries the exception with the batch's keys and traceback attached (``attach_failure``)
    and the text to record (``error_with_traceback``), both made where it was raised, so the outcome
    can be written in another process. It pickles even when the exception does not (the exception is
    then replaced by a ``RuntimeError`` with its text and the attached keys and traceback).
    """

    idx: IndexDF
    frames: Optional[List[pd.DataFrame]] = None
    snapshot: Optional[Snapshot] = None
    error: Optional[Exception] = None
    error_text: Optional[str] = None

    @classmethod
    def failed(cls, idx: IndexDF, error: Exception) -> BatchOutcome:
        attach_failure(error, idx)
        return cls(idx, error=error, error_text=error_with_traceback(f"{type(error).__name__}: {error}", error))

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        error = self.error
        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:  # noqa: BLE001 - keep the text and the attachments of an unpicklable error
                stand_in = RuntimeError(f"{type(error).__name__}: {error}")
                for attr in ("datapipe_keys", "datapipe_key_count", "datapipe_traceback"):
                    if hasattr(error, attr):
                        setattr(stand_in, attr, getattr(error, attr))
                state["error"] = stand_in
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)


class BaseBatchTransformStep(ComputeStep):
    """Change detection, batching and result storage shared by the batch steps.

    Subclasses implement ``compute_batch``: given a batch of keys, return one DataFrame per output.
    """

    def __init__(
        self,
        ds: DataStore,
        name: str,
        input_dts: Sequence[ComputeInput],
        output_dts: Sequence[ComputeOutput],
        transform_keys: Optional[List[str]] = None,
        chunk_size: int = 1000,
        labels: Optional[Labels] = None,
        executor_config: Optional[ExecutorConfig] = None,
        filters: Filters = None,
        order_by: Optional[List[str]] = None,
        order: str = "asc",
    ) -> None:
        super().__init__(name, input_dts, output_dts, labels, executor_config)
        if chunk_size < 1:
            raise ConfigError(f"step {name!r}: chunk_size must be positive, got {chunk_size}")
        if order not in ("asc", "desc"):
            raise ConfigError(f"step {name!r}: order must be 'asc' or 'desc', got {order!r}")
        outputs = [co.name for co in self.output_dts]
        twice = sorted({n for n in outputs if outputs.count(n) > 1})
        if twice:
            raise ConfigError(f"step {name!r}: output table(s) {twice} listed more than once")
        self.chunk_size = chunk_size
        self.fresh_keys = False  # during a first run: see _run_full
        self.fresh_outputs: Set[str] = set()
        self.page_snapshot: Optional[Snapshot] = None  # during a full run: see _paged_batches
        self.key_page_rows: Optional[int] = None  # None: settings.key_page_rows (see page_rows)
        self.filters = filters
        self.order_by = order_by
        self.order = order
        self.transform_schema = compute_transform_schema(name, self.input_dts, self.output_dts, transform_keys)
        self.global_batch = not self.transform_schema  # transform_keys=[]: see datapipe.meta.changes
        if self.global_batch:
            self.transform_schema = [Column(GLOBAL_KEY, Integer, primary_key=True)]
        self.transform_keys = [str(c.name) for c in self.transform_schema]
        if order_by:
            bad = [c for c in order_by if c not in self.transform_keys]
            if bad:
                raise ConfigError(f"step {name!r}: order_by {bad} are not transform keys {self.transform_keys}")
        self.meta = StepMeta(ds.meta_dbconn, name, self.transform_schema, create_table=ds.create_meta_table)
        self.input_columns = [input_key_columns(ci.dt.meta, self.transform_keys, ci.keys) for ci in self.input_dts]
        if not self.global_batch:  # one global batch reads every input whole by design
            warn_untied_inputs(name, self.transform_keys, self.input_dts, self.input_columns)
        self.changes = ChangeQuery(
            self.meta,
            self.transform_keys,
            [
                InputKeys(ci.name, ci.dt.meta, cols, ci.join_type == "inner")
                for ci, cols in zip(self.input_dts, self.input_columns)
            ],
        )
        self.meta.plan(self.changes, filters, order_by, order == "desc", self._joined_data())
        self.meta.ensure_indexes(self.changes.previous_lookups(), ds.create_meta_table)

    def _joined_data(self) -> List[Table]:
        """The SQL tables of the inputs that ``read_input`` reads joined to their metadata (the transform
        keys give only part of their key)."""
        tables = []
        for ci, cols in zip(self.input_dts, self.input_columns):
            table = ci.dt.live_data_table
            if cols and table is not None and not set(ci.dt.primary_keys) <= set(cols.values()):
                tables.append(table)
        return tables

    @property
    def output_specs(self) -> List[ComputeOutput]:
        """The outputs as declared: each table with its key mapping (``OutputSpec(keys=...)``)."""
        return self.output_dts

    # ------------------------------------------------------------------ which keys

    def get_changed_idx(self, ds: DataStore, run_config: Optional[RunConfig] = None) -> Tuple[pd.DataFrame, Snapshot]:
        """Keys needing processing, and the snapshot to store as the watermark once they are (see ``StepMeta``)."""
        return self.meta.get_changed_idx(run_config)

    def _batches(self, idx: pd.DataFrame, chunk_size: Optional[int] = None) -> Tuple[int, Iterator[IndexDF]]:
        size = chunk_size or self.chunk_size
        count = math.ceil(len(idx) / size)
        return count, (IndexDF(idx.iloc[i : i + size].reset_index(drop=True)) for i in range(0, len(idx), size))

    def page_rows(self, chunk_size: Optional[int] = None) -> int:
        """Keys read from the database at a time: ``settings.key_page_rows`` rounded down to whole
        batches (at least one), so batches never straddle pages. ``key_page_rows`` on the step overrides."""
        size = chunk_size or self.chunk_size
        rows = self.key_page_rows if self.key_page_rows is not None else settings.key_page_rows
        return size * max(1, rows // size)

    def _paged_batches(
        self, keys: MaterialisedRows, chunk_size: Optional[int] = None, run_snapshot: Optional[Snapshot] = None
    ) -> Tuple[int, Iterator[IndexDF]]:
        """Batches of ``chunk_size`` keys cut from the pages of ``keys``; the iterator closes ``keys``
        when exhausted or closed.

        ``run_snapshot`` (a full run's, taken before its change query): the snapshot the first page's
        batches record (``page_snapshot``, see ``read_and_compute``); before handing out each later
        page, a new one is taken. Each precedes every read of its batches, which is all the snapshot
        must be: an older one only makes the next run redo a key changed since. One per page instead
        of one per batch saves a round trip a batch on PostgreSQL (10 % of a first run of 1 M rows),
        and a page's batches are read within moments of each other; a run of one page (every small
        rerun) takes no snapshot beyond the run's own.
        """
        size = chunk_size or self.chunk_size

        def batches() -> Iterator[IndexDF]:
            for n, page in enumerate(keys.pages()):
                if run_snapshot is not None:
                    self.page_snapshot = take_snapshot(self.meta.dbconn) if n else run_snapshot
                for i in range(0, len(page), size):
                    yield IndexDF(page.iloc[i : i + size].reset_index(drop=True))

        return math.ceil(keys.count / size), batches()

    def get_full_process_ids(
        self, ds: DataStore, chunk_size: Optional[int] = None, run_config: Optional[RunConfig] = None
    ) -> Tuple[int, Iterator[IndexDF]]:
        """The batch count and the batches of a full run. The keys are held in the database until the
        iterator is exhausted or closed (``datapipe.sql.pages``)."""
        keys, _ = self.meta.open_changed_keys(run_config, self.page_rows(chunk_size))
        return self._paged_batches(keys, chunk_size)

    def get_change_list_process_ids(
        self, ds: DataStore, change_list: ChangeList, run_config: Optional[RunConfig] = None
    ) -> Tuple[int, Iterator[IndexDF]]:
        wheres = self.changes.changelist_wheres(change_list.changes)
        query = None
        if wheres:
            query = self.changes.build(
                wheres,
                filters=self.meta.run_filters(run_config),
                only_unprocessed=False,
                include_failed=False,
                order_by=self.order_by,
                descending=self.order == "desc",
            )
        return self._batches(self.changes.fetch(query))

    def get_status(self, ds: DataStore) -> StepStatus:
        counts = self.meta.get_counts()
        errors = self.meta.get_failed_errors(1) if counts["failed"] else []
        return StepStatus(
            name=self.name,
            total_idx_count=counts["processed"],
            changed_idx_count=self.meta.get_changed_idx_count(ds),
            failed_idx_count=counts["failed"],
            last_error=errors[0] if errors else None,
        )

    # ------------------------------------------------------------------ running

    def _execute(
        self,
        ds: DataStore,
        count: int,
        batches: Iterator[IndexDF],
        run_config: RunConfig,
        executor: Optional[Executor],
        run: StepRun,
        keep_changes: bool = True,
    ) -> ChangeList:
        """Run the batches; ``keep_changes=False`` (full runs) has each batch report counts only."""
        run.start(count)
        executor = executor or SingleThreadExecutor()
        config = self.executor_config
        process = self.processor(keep_changes)
        return executor.run_process_batch(self, ds, count, batches, process, run_config, config)

    def _run_full(self, ds: DataStore, run_config: RunConfig, executor: Optional[Executor], run: StepRun) -> None:
        keys, snapshot = self.meta.open_changed_keys(run_config, self.page_rows())
        with keys:
            count, batches = self._paged_batches(keys, run_snapshot=snapshot)
            logger.info("step %s: %d keys to process in %d batches", self.name, keys.count, count)
            # the step's first run: its keys are new to its metadata (a belief only, see ``sql.bulk``);
            # not worth a round trip for a single batch
            self.fresh_keys = count > 1 and self.meta.is_empty()
            if self.fresh_keys:  # and the outputs whose metadata is empty too: see TableWrite.fresh
                self.fresh_outputs = {co.name for co in self.output_dts if co.dt.meta.is_empty()}
            try:
                with self.meta.indexes_built_after(self.fresh_keys):
                    self._execute(ds, count, batches, run_config, executor, run, keep_changes=False)
            finally:
                self.fresh_keys = False
                self.fresh_outputs = set()
                self.page_snapshot = None
        if self.meta.can_advance_watermark(run_config):
            self.meta.set_watermarks({ci.name: snapshot for ci in self.input_dts})

    def _run_changelist(
        self,
        ds: DataStore,
        change_list: ChangeList,
        run_config: RunConfig,
        executor: Optional[Executor],
        run: StepRun,
    ) -> ChangeList:
        count, batches = self.get_change_list_process_ids(ds, change_list, run_config)
        return self._execute(ds, count, batches, run_config, executor, run)

    def _run_idx(self, ds: DataStore, idx: IndexDF, run_config: RunConfig, run: StepRun) -> ChangeList:
        run.start(1)
        return self.process_batch(ds, idx, run_config)

    def reset_metadata(self, ds: DataStore) -> None:
        self.meta.reset()

    def fill_metadata(self, ds: DataStore) -> None:
        keys, snapshot = self.meta.open_changed_keys(page_rows=self.page_rows())
        now = time.time()
        with keys:
            for page in keys.pages():
                self.meta.mark_success(IndexDF(page), snapshot, now)
        self.meta.set_watermarks({ci.name: snapshot for ci in self.input_dts})

    # ------------------------------------------------------------------ one batch

    @property
    def batch_processor(self) -> BatchProcessor:
        """The step's batches for an executor: ``prepare_batch`` and its halves ``read_and_compute`` and
        ``resume_batch`` (see ``datapipe.executor``); without the halves when a subclass overrides ``prepare_batch``."""
        return self.processor(keep_changes=True)

    def processor(self, keep_changes: bool) -> BatchProcessor:
        """``batch_processor``; with ``keep_changes=False`` (full runs) each batch reports counts only."""
        prepare = self.prepare_batch if keep_changes else self.prepare_batch_counts
        if type(self).prepare_batch is not BaseBatchTransformStep.prepare_batch:
            return BatchProcessor(prepare)
        resume = self.resume_batch if keep_changes else self.resume_batch_counts
        return BatchProcessor(prepare, self.read_and_compute, resume)

    def process_batch(self, ds: DataStore, idx: IndexDF, run_config: Optional[RunConfig] = None) -> ChangeList:
        """Process one batch of keys; record a failure instead of raising (unless fail_fast)."""
        return BatchProcessor(self.prepare_batch)(ds, idx, run_config)

    def prepare_batch(self, ds: DataStore, idx: IndexDF, run_config: Optional[RunConfig] = None) -> PreparedBatch:
        """The first half of a batch: snapshot, read, call the function (see ``datapipe.executor``).

        A failure here is recorded at once (raised under fail_fast); the batch then writes nothing.
        """
        return self.resume_batch(ds, self.read_and_compute(ds, idx, run_config), run_config)

    def read_and_compute(self, ds: DataStore, idx: IndexDF, run_config: Optional[RunConfig] = None) -> BatchOutcome:
        """Snapshot, read and call the function, writing nothing; an error is returned in the outcome, not raised."""
        run_config = run_config or RunConfig()
        try:
            # before reading: later input changes stay unseen (a full run's batches: their page's snapshot)
            snapshot = self.page_snapshot if self.page_snapshot is not None else take_snapshot(ds.meta_dbconn)
            idx = self.filtered_idx(idx, run_config)
            if len(idx) == 0:
                return BatchOutcome(idx)
            return BatchOutcome(idx, self.compute_batch(ds, idx, run_config), snapshot)
        except Exception as e:  # noqa: BLE001 - any error in user code fails only this batch
            return BatchOutcome.failed(idx, e)

    def prepare_batch_counts(
        self, ds: DataStore, idx: IndexDF, run_config: Optional[RunConfig] = None
    ) -> PreparedBatch:
        """``prepare_batch`` for a full run: the batch reports how many output keys changed, not
        which (``ChangeCounts``)."""
        return _Counted(self.prepare_batch(ds, idx, run_config))

    def resume_batch_counts(
        self, ds: DataStore, outcome: BatchOutcome, run_config: Optional[RunConfig] = None
    ) -> PreparedBatch:
        """``resume_batch`` for a full run (see ``prepare_batch_counts``)."""
        return _Counted(self.resume_batch(ds, outcome, run_config))

    def resume_batch(self, ds: DataStore, outcome: BatchOutcome, run_config: Optional[RunConfig] = None
                     ) -> PreparedBatch:
        """A ``read_and_compute`` outcome as the batch to write; a failed one is recorded at once (raised under
        fail_fast) and writes nothing."""
        run_config = run_config or RunConfig()
        if outcome.error is not None:
            return _Finished(self._record_failure(outcome.idx, outcome.error, run_config, outcome.error_text))
        if outcome.frames is None:
            return _Finished(ChangeList())
        assert outcome.snapshot is not None
        return _BatchWrite(self, ds, outcome.idx, outcome.frames, outcome.snapshot, run_config)

    def _record_failure(
        self, idx: IndexDF, error: Exception, run_config: RunConfig, error_text: Optional[str] = None
    ) -> ChangeList:
        text = f"{type(error).__name__}: {error}"
        logger.error("step %s: batch of %d keys failed: %s", self.name, len(idx), text)
        if error_text is None:  # else read_and_compute attached the keys and traceback where it was raised
            attach_failure(error, idx)
            error_text = error_with_traceback(text, error)
        self.meta.mark_failed(idx, time.time(), error_text)
        if run_config.fail_fast:
            raise error  # the step's lifecycle reports it, once
        if run_config.callback is not None:
            run_config.callback.on_step_error(self, error)
        return ChangeList()

    def compute_batch(self, ds: DataStore, idx: IndexDF, run_config: RunConfig) -> List[pd.DataFrame]:
        raise NotImplementedError

    def normalise_result(self, result: Any) -> List[pd.DataFrame]:
        """The function's return value as one DataFrame per output, or a clear error."""
        n = len(self.output_dts)
        names = [co.name for co in self.output_dts]
        if isinstance(result, pd.DataFrame):
            frames = [result]
        elif isinstance(result, (list, tuple)):
            frames = list(result)
        elif result is None and n == 0:
            frames = []
        else:
            raise TypeError(
                f"step {self.name!r}: the function returned {type(result).__name__}, "
                f"expected {'a DataFrame' if n == 1 else f'a tuple of {n} DataFrames'} for outputs {names}"
            )
        if len(frames) != n:
            raise ValueError(
                f"step {self.name!r}: the function returned {len(frames)} DataFrame(s) for {n} output(s) {names}"
            )
        for frame, co in zip(frames, self.output_dts):
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(
                    f"step {self.name!r}: result for output table {co.name!r} is {type(frame).__name__}, "
                    "not a DataFrame"
                )
        return frames

    def _output_idx(self, co: ComputeOutput, idx: IndexDF) -> Optional[IndexDF]:
        if self.global_batch:  # one batch over everything: what it returns replaces the whole output
            return co.dt.meta.get_existing_idx(unconfirmed=True)
        renames = co.keys or {}
        cols = {tk: renames.get(tk, tk) for tk in self.transform_keys if renames.get(tk, tk) in co.primary_keys}
        if not cols:
            return None
        return IndexDF(_project(idx, cols))

    def store_batch_result(
        self, ds: DataStore, idx: IndexDF, frames: List[pd.DataFrame], snapshot: Snapshot
    ) -> ChangeList:
        """Write the outputs of a batch and record its keys as processed, in one unit of work (the batches
        of a run go through ``prepare_batch``; this stays for code that writes a computed batch itself)."""
        return self.batch_changes(self.write_batch_result(ds, idx, frames, snapshot))

    def write_batch_result(
        self, ds: DataStore, idx: IndexDF, frames: List[pd.DataFrame], snapshot: Snapshot
    ) -> List[Tuple[IndexDF, IndexDF]]:
        """The unit of work of a batch: outputs, their metadata, the keys as processed; ``(changed, deleted)``
        keys per output."""
        return self.start_batch_write(ds, idx, frames, snapshot).result()

    def start_batch_write(
        self, ds: DataStore, idx: IndexDF, frames: List[pd.DataFrame], snapshot: Snapshot
    ) -> StartedWrite:
        """``write_batch_result``, whose end may still be in flight (``DataStore.start_write``)."""
        now = time.time()
        writes = [
            TableWrite(co.dt, frame, self._output_idx(co, idx), f"step {self.name!r}, result for table {co.name!r}",
                       fresh=co.name in self.fresh_outputs)
            for frame, co in zip(frames, self.output_dts)
        ]
        return ds.start_write(writes, now, then=lambda: self.meta.mark_success(idx, snapshot, now, self.fresh_keys))

    def batch_changes(self, results: List[Tuple[IndexDF, IndexDF]]) -> ChangeList:
        # outputs are distinct tables (checked in __init__); a table's changed and deleted keys are
        # distinct primary keys
        changes = ChangeList.of_distinct({co.name: result for co, result in zip(self.output_dts, results)})
        changes.deleted_count = sum(len(deleted) for _, deleted in results)
        return changes

    # ------------------------------------------------------------------ reading inputs

    def filtered_idx(self, idx: IndexDF, run_config: RunConfig) -> IndexDF:
        """The keys of ``idx`` that have an input row matching ``run_config.filters`` on a column that is
        not a transform key (the change query already applied the others). Keys without are left
        pending for an unfiltered run; their outputs are not touched."""
        columns = {c for f in normalise_filters(run_config.filters) for c in f} - set(self.transform_keys)
        if not columns:
            return idx
        matched = []
        for n in range(len(self.input_dts)):
            data = self.read_input(n, idx)
            if columns & set(data.columns):
                cols = self.input_columns[n]
                keys = filter_rows(data, run_config.filters)[list(cols.values())]
                matched.append(keys.rename(columns={v: k for k, v in cols.items()}).drop_duplicates())
        if not matched:
            return idx
        keys = pd.concat(matched, ignore_index=True).drop_duplicates()
        on = [k for k in self.transform_keys if k in keys.columns]
        return IndexDF(idx.merge(keys[on], on=on) if on else idx)

    def _input_idx(self, n: int, idx: pd.DataFrame) -> pd.DataFrame:
        return _project(idx, self.input_columns[n])

    def live_idx(self, idx: IndexDF) -> IndexDF:
        """The batch keys that every ``Required`` input has a row for."""
        for n, ci in enumerate(self.input_dts):
            if ci.join_type != "inner":
                continue
            cols = self.input_columns[n]
            if not cols:
                continue
            live = ci.dt.meta.get_existing_idx(self._input_idx(n, idx))
            live = live[list(cols.values())].rename(columns={v: k for k, v in cols.items()}).drop_duplicates()
            idx = IndexDF(idx.merge(live, on=list(cols)))
        return idx

    def read_input(self, n: int, idx: pd.DataFrame) -> pd.DataFrame:
        """Rows of input ``n`` for the transform keys in ``idx``.

        When the transform keys give only some of the input's key columns (``annotations(item_id,
        ann_id)`` under transform key ``item_id``), the rows are those of the input's live keys
        matching them: one joined query when the store is an SQL table in the metadata database,
        else the live keys from the metadata first and then the store's rows for them.
        """
        ci = self.input_dts[n]
        if not self.input_columns[n]:
            return ci.dt.get_data()
        keys = self._input_idx(n, idx)
        if not set(ci.dt.primary_keys) <= set(keys.columns):
            joined = ci.dt.get_live_data(keys)
            if joined is not None:
                return joined
            keys = ci.dt.meta.get_existing_idx(keys)
        return ci.dt.get_data(IndexDF(keyset.select(keys, ci.dt.primary_keys)))


class BatchTransformStep(BaseBatchTransformStep):
    """A ``BatchTransform`` bound to a data store."""

    def __init__(
        self,
        ds: DataStore,
        name: str,
        func: Callable[..., TransformResult],
        input_dts: Sequence[ComputeInput],
        output_dts: Sequence[ComputeOutput],
        kwargs: Optional[Dict[str, Any]] = None,
        transform_keys: Optional[List[str]] = None,
        chunk_size: int = 1000,
        labels: Optional[Labels] = None,
        executor_config: Optional[ExecutorConfig] = None,
        filters: Filters = None,
        order_by: Optional[List[str]] = None,
        order: str = "asc",
    ) -> None:
        super().__init__(
            ds, name, input_dts, output_dts, transform_keys, chunk_size, labels, executor_config, filters, order_by,
            order,
        )
        self.func = func
        self.kwargs = kwargs or {}
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self.injected = [p for p in INJECTABLE if p in params]

    def compute_batch(self, ds: DataStore, idx: IndexDF, run_config: RunConfig) -> List[pd.DataFrame]:
        live = self.live_idx(idx)
        # run filters also restrict input rows by columns that are not transform keys (as in 0.15)
        inputs = [filter_rows(self.read_input(n, live), run_config.filters) for n in range(len(self.input_dts))]
        if all(len(df) == 0 for df in inputs) and "idx" not in self.injected:
            return [keyset.empty(co.primary_keys) for co in self.output_dts]
        available = {"idx": idx, "ds": ds, "run_config": run_config}
        extra = {p: available[p] for p in self.injected}
        return self.normalise_result(self.func(*inputs, **extra, **self.kwargs))


class _Finished(PreparedBatch):
    """A batch with nothing to write: no keys left after filtering, or already recorded as failed."""

    def __init__(self, changes: ChangeList) -> None:
        self.changes = changes

    def write(self) -> None:
        pass

    def finish(self, error: Optional[Exception]) -> ChangeList:
        if error is not None:
            raise error
        return self.changes


class _Counted(PreparedBatch):
    """A batch of a full run: written as prepared, reported as counts (``ChangeCounts``)."""

    def __init__(self, prepared: PreparedBatch) -> None:
        self.prepared = prepared

    def write(self) -> None:
        self.prepared.write()

    @property
    def in_flight(self) -> bool:
        return self.prepared.in_flight

    def finish(self, error: Optional[Exception]) -> ChangeList:
        changes = self.prepared.finish(error)
        return ChangeCounts(changes.key_count(), changes.deleted_count)


class _BatchWrite(PreparedBatch):
    """A batch's computed outputs, waiting for their unit of work (``write_batch_result``)."""

    def __init__(
        self,
        step: BaseBatchTransformStep,
        ds: DataStore,
        idx: IndexDF,
        frames: List[pd.DataFrame],
        snapshot: Snapshot,
        run_config: RunConfig,
    ) -> None:
        self.step, self.ds, self.idx, self.frames, self.snapshot = step, ds, idx, frames, snapshot
        self.run_config = run_config
        self.started: Optional[StartedWrite] = None

    def write(self) -> None:
        self.started = self.step.start_batch_write(self.ds, self.idx, self.frames, self.snapshot)

    @property
    def in_flight(self) -> bool:
        return self.started is not None and self.started.in_flight

    def finish(self, error: Optional[Exception]) -> ChangeList:
        if error is None:
            assert self.started is not None, "finish() before write()"
            try:
                results = self.started.result()
            except Exception as e:  # noqa: BLE001 - recorded as the batch's failure, like an error of write()
                error = e
        if error is not None:
            return self.step._record_failure(self.idx, error, self.run_config)
        return self.step.batch_changes(results)


def _bind(
    step_cls: Type[BatchTransformStep],
    kind: str,
    decl: Union[BatchTransform, DatatableBatchTransform],
    ds: DataStore,
    catalog: Catalog,
    **options: Any,
) -> BatchTransformStep:
    """The runnable step of a batch-transform declaration."""
    inputs = resolve_inputs(ds, catalog, decl.inputs)
    outputs = resolve_outputs(ds, catalog, decl.outputs)
    return step_cls(
        ds,
        decl.name or step_name(decl.func, kind, inputs, outputs),
        decl.func,
        inputs,
        outputs,
        kwargs=decl.kwargs,
        transform_keys=decl.transform_keys,
        chunk_size=decl.chunk_size,
        labels=decl.labels,
        executor_config=decl.executor_config,
        **options,
    )


@dataclass
class BatchTransform(PipelineStep):
    """Declare a step that calls ``func`` on batches of changed keys and keeps its outputs in sync.

    The step works per **transform key**: by default the primary-key columns its inputs and
    outputs share. A run finds the keys whose input rows changed (were created, updated or
    deleted) since they were last processed, plus keys never processed and keys whose last
    attempt failed, and calls ``func`` on batches of ``chunk_size`` of them. For the keys of a
    batch, what ``func`` returns replaces what it returned last time: output rows it no longer
    returns are deleted.

    Args:
        func: called as ``func(*input_frames, **injected, **kwargs)``. It receives one DataFrame
            per input, positionally and in the order of ``inputs``, holding that input's rows for
            the batch's keys. It may declare parameters named ``idx`` (the batch's keys),
            ``ds`` (the ``DataStore``) and ``run_config``, which are passed by name. It returns
            one DataFrame, or a tuple/list with one per output, containing the output tables'
            key and data columns. When every input row of a key is gone, ``func`` is not called
            for that key (unless it declares ``idx``) and the key's outputs are deleted.
        inputs: the tables read: catalog names, ``Table`` objects, SQLAlchemy ORM classes, or
            ``InputSpec``/``Required`` wrappers of those. Plain inputs join fully (a key is
            processed when any input has a row for it); ``Required(t)`` joins inner (only keys
            ``t`` has a row for). ``InputSpec(t, keys={"transform_key": "column"})`` maps a
            transform key to a differently named column of ``t``.
        outputs: the tables written, as names, ``Table``s, ORM classes or ``OutputSpec``s.
            Only this step may write them.
        chunk_size: keys per batch. A batch is the unit of work, of commit and of retry: pick
            a size that takes seconds, not hours.
        name: the step's name (its metadata table is ``<name>_meta``; the CLI selects steps by
            it). Default: the function's name plus a short hash of the step kind and table
            names, stable across runs. Give a name when you refer to the step from scripts.
        kwargs: extra keyword arguments for every call of ``func``.
        transform_keys: the key columns of a unit of work, overriding the default. Every input
            should have each of them as a primary key column or a ``MetaKey`` column; an input
            with none of them is read whole for every batch and any change to it reprocesses
            every key (``build_compute`` logs a warning).
        labels: ``[("key", "value"), ...]`` tags, for ``datapipe step run --labels key=value``.
        executor_config: resources per batch for executors that use them (``ExecutorConfig``:
            ``cpu``, ``gpu``, ``memory``, ``parallelism``).
        filters: restrict the step to keys matching ``{"column": value}`` (a list value means
            any of), a list of such dicts, a DataFrame of keys, or a callable returning one of
            those. Filtered runs do not advance the step's change watermark.
        order_by: transform keys to order batches by (default: unordered).
        order: ``"asc"`` or ``"desc"`` for ``order_by``.

    Raises:
        ValueError: when the step is built (``build_compute``): no shared key and no
            ``transform_keys``, a transform key that is no column of any table, a key column
            with different types in two tables, ``chunk_size < 1``, a bad ``order``/``order_by``.

    Example:
        ```python
        def thumbnail(images: pd.DataFrame) -> pd.DataFrame:
            return images.assign(image=images["image"].map(make_thumbnail))

        BatchTransform(thumbnail, inputs=["images"], outputs=["thumbs"], chunk_size=100)

        # per user, from users(user_id) and orders(order_id, user_id as MetaKey)
        BatchTransform(order_totals, inputs=["users", "orders"], outputs=["totals"])
        ```
    """

    func: Callable[..., TransformResult]
    inputs: List[Any]
    outputs: List[Any]
    chunk_size: int = 1000
    name: Optional[str] = None
    kwargs: Optional[Dict[str, Any]] = None
    transform_keys: Optional[List[str]] = None
    labels: Optional[Labels] = None
    executor_config: Optional[ExecutorConfig] = None
    filters: Filters = None
    order_by: Optional[List[str]] = None
    order: str = "asc"

    def build_compute(self, ds: DataStore, catalog: Catalog) -> List[ComputeStep]:
        options = {"filters": self.filters, "order_by": self.order_by, "order": self.order}
        return [_bind(BatchTransformStep, "BatchTransform", self, ds, catalog, **options)]


class DatatableBatchTransformStep(BatchTransformStep):
    """A ``DatatableBatchTransform`` bound to a data store: ``func`` reads its inputs itself."""

    def compute_batch(self, ds: DataStore, idx: IndexDF, run_config: RunConfig) -> List[pd.DataFrame]:
        result = self.func(ds, idx, [ci.dt for ci in self.input_dts], run_config, self.kwargs)
        return self.normalise_result(result)


@dataclass
class DatatableBatchTransform(PipelineStep):
    """Like ``BatchTransform``, but the function reads the inputs itself.

    Use it when the inputs are too large to hand over as DataFrames, or when the function
    needs more than the rows of the batch's keys.

    Args:
        func: called as ``func(ds, idx, input_dts, run_config, kwargs)`` with the
            ``DataStore``, the batch's keys (``idx``, a DataFrame of transform-key columns),
            the input ``DataTable``s, the ``RunConfig`` and ``kwargs``. Returns one DataFrame
            per output, as for ``BatchTransform``.
        inputs: as for ``BatchTransform``; they decide which keys changed.
        outputs: as for ``BatchTransform``.
        name: the step's name (default: derived from the function name and the tables).
        chunk_size: keys per batch.
        transform_keys: the key columns of a unit of work (default: shared primary keys).
        kwargs: passed to ``func`` as its last argument.
        labels: ``[("key", "value"), ...]`` tags for CLI selection.
        executor_config: resources per batch (``ExecutorConfig``).
    """

    func: Callable[..., TransformResult]
    inputs: List[Any]
    outputs: List[Any]
    name: Optional[str] = None
    chunk_size: int = 1000
    transform_keys: Optional[List[str]] = None
    kwargs: Optional[Dict[str, Any]] = None
    labels: Optional[Labels] = None
    executor_config: Optional[ExecutorConfig] = None

    def build_compute(self, ds: DataStore, catalog: Catalog) -> List[ComputeStep]:
        return [_bind(DatatableBatchTransformStep, "DatatableBatchTransform", self, ds, catalog)]


__all__ = [
    "BaseBatchTransformStep",
    "BatchTransform",
    "BatchTransformStep",
    "DatatableBatchTransform",
    "DatatableBatchTransformStep",
]
