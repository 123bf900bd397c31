"""Pipelines: the catalog of tables, the declared steps, and the runner that executes them."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from datapipe.datatable import DataStore, DataTable
from datapipe.errors import ConfigError
from datapipe.executor import Executor, ExecutorConfig
from datapipe.meta.locks import step_lock
from datapipe.run_callback import CompositeRunCallback, RunCallback
from datapipe.run_config import RunConfig
from datapipe.run_result import RunResult, with_result_collector
from datapipe.store.table_store import TableStore
from datapipe.types import ChangeList, DataSchema, IndexDF, InputSpec, Labels, OutputSpec, Required, TableOrName

logger = logging.getLogger("datapipe.compute")


@dataclass
class Table:
    """A table of a pipeline: where its rows live, and its name.

    Args:
        store: the ``TableStore`` holding the rows (``TableStoreDB``, ``TableStoreFiledir``,
            ``datapipe_qdrant.QdrantStore``, ...).
        name: the table's name; its metadata table is ``<name>_meta``. Filled in from the key
            when the table is put in a ``Catalog``; required for a ``Table`` used directly as
            a step input or output.
    """

    store: TableStore
    name: Optional[str] = None


class Catalog:
    """The named tables of a pipeline; steps refer to tables by these names.

    Args:
        catalog: ``{"name": Table(store), ...}``.

    Example:
        ```python
        catalog = Catalog({
            "images": Table(TableStoreFiledir("in/{image_id}.jpg", PILFile("jpg"))),
            "thumbs": Table(TableStoreDB(dbconn, "thumbs", schema, create_table=True)),
        })
        ```
    """

    def __init__(self, catalog: Dict[str, Table]) -> None:
        self.catalog: Dict[str, Table] = {}
        for name, table in catalog.items():
            self.add_datatable(name, table)

    def add_datatable(self, name: str, table: Table) -> None:
        if table.name is None:
            table.name = name
        self.catalog[name] = table

    def remove_datatable(self, name: str) -> None:
        del self.catalog[name]

    def init_all_tables(self, ds: DataStore) -> None:
        for name in self.catalog:
            self.get_datatable(ds, name)

    def get_datatable(self, ds: DataStore, name: str) -> DataTable:
        """The ``DataTable`` (store plus metadata) of table ``name``; ``KeyError`` naming the known tables."""
        if name not in self.catalog:
            raise KeyError(f"table {name!r} is not in the catalog; known tables: {sorted(self.catalog)}")
        return ds.get_or_create_table(name, self.catalog[name].store)

    def resolve(self, ds: DataStore, table: TableOrName) -> DataTable:
        """A step input/output (catalog name, ``Table`` or ORM class) as a ``DataTable``."""
        if isinstance(table, str):
            return self.get_datatable(ds, table)
        if isinstance(table, Table):
            if table.name is None:
                raise ConfigError(f"Table {table!r} has no name; give it one or put it in the catalog")
            if table.name not in self.catalog:
                self.add_datatable(table.name, table)
            return ds.get_or_create_table(table.name, table.store)
        if hasattr(table, "__table__"):
            from datapipe.store.database import TableStoreDB

            name = str(table.__table__.name)
            if name not in self.catalog:
                self.add_datatable(name, Table(TableStoreDB(ds.meta_dbconn, orm_table=table, create_table=True)))
            return self.get_datatable(ds, name)
        raise TypeError(f"cannot use {table!r} as a table: expected a name, a Table or an ORM class")


@dataclass
class _StepTable:
    """A table as one of a step's inputs or outputs."""

    dt: DataTable

    @property
    def name(self) -> str:
        return self.dt.name

    @property
    def primary_keys(self) -> List[str]:
        return self.dt.primary_keys


@dataclass
class ComputeInput(_StepTable):
    """A step input: the table, how it joins (``"full"`` or ``"inner"``), and key renames."""

    join_type: str = "full"
    keys: Optional[Dict[str, str]] = None


@dataclass
class ComputeOutput(_StepTable):
    """A step output: the table and key renames (transform key -> table column)."""

    keys: Optional[Dict[str, str]] = None


@dataclass
class StepStatus:
    """What a step has done and has left to do, from indexed metadata only.

    ``total_idx_count``: keys the step has a record of; ``changed_idx_count``: keys waiting to be
    processed (changed since, never processed, or failed); ``failed_idx_count``: keys whose last
    attempt failed (None for step kinds that keep no per-key state); ``last_error``: the text of
    one such failure, or None.
    """

    name: str
    total_idx_count: int
    changed_idx_count: int
    failed_idx_count: Optional[int] = None  # None: the step kind does not track keys
    last_error: Optional[str] = None


class StepRun:
    """One run of one step, as its listeners see it; handed to the step's ``_run_*`` hooks.

    ``start(total)`` reports the start with the number of batches once the step knows it; the
    lifecycle reports it (with 0) itself if the step never does.
    """

    def __init__(self, step: ComputeStep, callback: Optional[RunCallback]) -> None:
        self.step = step
        self.callback = callback
        self.started = False

    def start(self, total: int = 0) -> None:
        if not self.started:
            self.started = True
            self._emit("on_step_start", self.step, total)

    def _emit(self, event: str, *args: Any) -> None:
        if self.callback is None:
            return
        try:
            getattr(self.callback, event)(*args)
        except Exception:  # noqa: BLE001 - a listener must never fail a run or mask the step's own error
            logger.exception("run callback %r failed in %s", self.callback, event)


class ComputeStep:
    """A runnable step bound to a ``DataStore``.

    Every entry point (``run_full``, ``run_changelist``, ``run_idx``) goes through one lifecycle
    (``lifecycle``): the step's run lock (``datapipe.meta.locks``), then ``on_step_start``, the work,
    and exactly one of ``on_step_success`` / ``on_step_error`` (the error is re-raised). Subclasses
    implement the work in ``_run_full`` and, where they support it, ``_run_changelist`` / ``_run_idx``.
    """

    def __init__(
        self,
        name: str,
        input_dts: Sequence[ComputeInput],
        output_dts: Sequence[ComputeOutput],
        labels: Optional[Labels] = None,
        executor_config: Optional[ExecutorConfig] = None,
    ) -> None:
        self._name = name
        self.input_dts = list(input_dts)
        self.output_dts = list(output_dts)
        self._labels = list(labels or [])
        self.executor_config = executor_config
        # the key columns ``run_idx`` takes (batch steps); None for steps that do not work by key
        self.transform_schema: Optional[DataSchema] = None

    @property
    def name(self) -> str:
        return self._name

    def get_name(self) -> str:
        return self._name

    @property
    def labels(self) -> Labels:
        return self._labels

    def get_labels(self) -> Labels:
        return self._labels

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def get_status(self, ds: DataStore) -> StepStatus:
        return StepStatus(name=self.name, total_idx_count=0, changed_idx_count=0)

    # ------------------------------------------------------------------ entry points

    def run_full(
        self, ds: DataStore, run_config: Optional[RunConfig] = None, executor: Optional[Executor] = None
    ) -> None:
        """Process everything that changed since the last run."""
        run_config = RunConfig.add_labels(run_config, {"step_name": self.name})
        with self.lifecycle(ds, run_config) as run:
            self._run_full(ds, run_config, executor, run)

    def run_changelist(
        self,
        ds: DataStore,
        change_list: ChangeList,
        run_config: Optional[RunConfig] = None,
        executor: Optional[Executor] = None,
    ) -> ChangeList:
        """Process what ``change_list`` touches; return the changes made."""
        run_config = RunConfig.add_labels(run_config, {"step_name": self.name})
        with self.lifecycle(ds, run_config) as run:
            return self._run_changelist(ds, change_list, run_config, executor, run)

    def run_idx(self, ds: DataStore, idx: IndexDF, run_config: Optional[RunConfig] = None) -> ChangeList:
        """Process exactly the keys in ``idx``, whether they changed or not."""
        run_config = RunConfig.add_labels(run_config, {"step_name": self.name})
        with self.lifecycle(ds, run_config) as run:
            return self._run_idx(ds, idx, run_config, run)

    @contextmanager
    def lifecycle(self, ds: DataStore, run_config: Optional[RunConfig]) -> Iterator[StepRun]:
        """Hold the step's run lock and report start, then success or error, around the block."""
        run = StepRun(self, run_config.callback if run_config is not None else None)
        try:
            with step_lock(ds.meta_dbconn, self.name):
                yield run
        except Exception as e:
            run.start()
            run._emit("on_step_error", self, e)
            raise
        run.start()
        run._emit("on_step_success", self)

    # ------------------------------------------------------------------ what subclasses implement

    def _run_full(self, ds: DataStore, run_config: RunConfig, executor: Optional[Executor], run: StepRun) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement _run_full")

    def _run_changelist(
        self,
        ds: DataStore,
        change_list: ChangeList,
        run_config: RunConfig,
        executor: Optional[Executor],
        run: StepRun,
    ) -> ChangeList:
        """By default a step without inputs ignores change lists (nothing of it can change)."""
        return ChangeList()

    def _run_idx(self, ds: DataStore, idx: IndexDF, run_config: RunConfig, run: StepRun) -> ChangeList:
        raise NotImplementedError(f"{type(self).__name__} cannot run for given keys")

    def reset_metadata(self, ds: DataStore) -> None:
        """Forget what was processed, so the next run processes everything."""

    def fill_metadata(self, ds: DataStore) -> None:
        """Mark everything as processed without running the step."""


class PipelineStep(ABC):
    """A declared step; ``build_compute`` binds it to a ``DataStore`` and ``Catalog``."""

    @abstractmethod
    def build_compute(self, ds: DataStore, catalog: Catalog) -> List[ComputeStep]:
        """Return the runnable steps this declaration expands to (usually one)."""


@dataclass
class Pipeline:
    """The declared steps of a pipeline, in the order they run.

    Args:
        steps: ``BatchTransform``, ``BatchGenerate``, ``UpdateExternalTable``,
            ``DatatableTransform``, ... A step should come after the steps writing its inputs.
    """

    steps: List[PipelineStep] = field(default_factory=list)


def describe_declared(step: PipelineStep) -> str:
    """``step 'name'`` or ``BatchTransform(func_name)`` for error messages about a declared step."""
    name = getattr(step, "name", None)
    if name:
        return f"step {name!r}"
    func = getattr(step, "func", None)
    return f"{type(step).__name__}({getattr(func, '__name__', '')})"


def build_compute(ds: DataStore, catalog: Catalog, pipeline: Pipeline) -> List[ComputeStep]:
    """Bind every declared step of ``pipeline`` to ``ds`` and ``catalog``: the runnable steps.

    Creates missing metadata tables when ``ds`` was made with ``create_meta_table=True``. Logs
    a warning (once per process) for a step input that no transform key ties to its rows.

    Returns:
        The ``ComputeStep``s, in pipeline order, for ``run_steps``.

    Raises:
        KeyError: a step refers to a table that is not in the catalog (names the step).
        ValueError: duplicate step names, or a step whose declaration is inconsistent.
    """
    steps: List[ComputeStep] = []
    for declared in pipeline.steps:
        try:
            steps.extend(declared.build_compute(ds, catalog))
        except KeyError as e:  # an unknown table: say which step refers to it
            raise KeyError(f"{describe_declared(declared)}: {e.args[0] if e.args else e}") from e
    seen: Dict[str, int] = {}
    for step in steps:
        seen[step.name] = seen.get(step.name, 0) + 1
    dups = sorted(n for n, c in seen.items() if c > 1)
    if dups:
        raise ConfigError(f"duplicate step names {dups}: give the steps distinct name= arguments")
    return steps


class DatapipeApp:
    """A pipeline bound to its data store: what the ``datapipe`` command line loads.

    Args:
        ds: the ``DataStore`` (the metadata database).
        catalog: the pipeline's tables.
        pipeline: the pipeline's steps.

    Attributes:
        steps: the runnable steps (``build_compute(ds, catalog, pipeline)``).

    Example:
        ```python
        app = DatapipeApp(ds, catalog, pipeline)   # in app.py; then: datapipe --pipeline app.py run
        result = run_steps(app.ds, app.steps)      # or from Python
        ```
    """

    def __init__(self, ds: DataStore, catalog: Catalog, pipeline: Pipeline) -> None:
        self.ds = ds
        self.catalog = catalog
        self.pipeline = pipeline
        self.steps = build_compute(ds, catalog, pipeline)


def _callback(run_config: Optional[RunConfig]) -> RunCallback:
    if run_config is not None and run_config.callback is not None:
        return run_config.callback
    return CompositeRunCallback([])


def run_steps(
    ds: DataStore,
    steps: Sequence[ComputeStep],
    run_config: Optional[RunConfig] = None,
    executor: Optional[Executor] = None,
    fail_fast: Optional[bool] = None,
) -> RunResult:
    """Run every step in order, each processing only the keys whose inputs changed.

    Args:
        ds: the data store holding the metadata.
        steps: the steps to run, usually ``build_compute(...)`` or ``DatapipeApp.steps``.
        run_config: filters, labels, a run callback; ``None`` for defaults.
        executor: where batches run; ``None`` runs them one after another in this process.
        fail_fast: ``True`` re-raises the first exception of a step function instead of
            recording the batch as failed and going on; ``None`` keeps ``run_config.fail_fast``
            (default: the ``DATAPIPE_FAIL_FAST`` environment variable, off).

    Returns:
        A ``RunResult``: per step the keys processed, output rows changed and deleted, failed
        keys with their exceptions and tracebacks, and seconds. Check ``result.ok`` or call
        ``result.raise_for_failures()``: a failed batch does not raise by default.

    Raises:
        Exception: under ``fail_fast``, the step function's exception; always, errors of the
            metadata database (the run stops, nothing processed so far is lost).
    """
    run_config, collector = with_result_collector(run_config, fail_fast)
    cb = _callback(run_config)
    cb.on_run_start(steps)
    try:
        for step in steps:
            logger.info("running step %s", step.name)
            step.run_full(ds, run_config=run_config, executor=executor)
    except BaseException as e:
        cb.on_run_error(e)
        raise
    cb.on_run_success()
    return collector.result()


def run_pipeline(
    ds: DataStore,
    catalog: Catalog,
    pipeline: Pipeline,
    run_config: Optional[RunConfig] = None,
    fail_fast: Optional[bool] = None,
) -> RunResult:
    """Build the pipeline's steps and run them (``run_steps``); returns the ``RunResult``."""
    return run_steps(ds, build_compute(ds, catalog, pipeline), run_config, fail_fast=fail_fast)


def run_steps_changelist(
    ds: DataStore,
    steps: Sequence[ComputeStep],
    changelist: ChangeList,
    run_config: Optional[RunConfig] = None,
    executor: Optional[Executor] = None,
) -> ChangeList:
    """Run steps only for the keys in ``changelist``, following the changes downstream.

    Like datapipe 0.15, it goes on until no step has anything left: a step whose output feeds an
    earlier step (a cycle) gets another pass with the changes it has not seen yet, so the result
    equals full runs. Each step sees every change once. Returns every change made, the initial
    ones included.
    """
    events: List[ChangeList] = [changelist]  # change lists in the order they were made
    seen = [0] * len(steps)  # per step: how many of ``events`` it has processed
    cb = _callback(run_config)
    cb.on_run_start(steps)
    try:
        while any(n < len(events) for n in seen):
            for i, step in enumerate(steps):
                unseen = ChangeList()
                for change in events[seen[i] :]:
                    unseen.extend(change)
                seen[i] = len(events)
                if unseen.empty():
                    continue
                produced = step.run_changelist(ds, unseen, run_config=run_config, executor=executor)
                if not produced.empty():
                    events.append(produced)
    except BaseException as e:
        cb.on_run_error(e)
        raise
    cb.on_run_success()
    current = ChangeList()
    for change in events:
        current.extend(change)
    return current


def run_changelist(
    ds: DataStore,
    catalog: Catalog,
    pipeline: Pipeline,
    changelist: ChangeList,
    run_config: Optional[RunConfig] = None,
) -> ChangeList:
    """Build the pipeline's steps and run them for the keys in ``changelist`` only (``run_steps_changelist``)."""
    return run_steps_changelist(ds, build_compute(ds, catalog, pipeline), changelist, run_config)


def resolve_inputs(ds: DataStore, catalog: Catalog, inputs: Iterable[Any]) -> List[ComputeInput]:
    result = []
    for inp in inputs:
        if isinstance(inp, InputSpec):
            join = "inner" if isinstance(inp, Required) else "full"
            result.append(ComputeInput(catalog.resolve(ds, inp.table), join, inp.keys))
        else:
            result.append(ComputeInput(catalog.resolve(ds, inp)))
    return result


def resolve_outputs(ds: DataStore, catalog: Catalog, outputs: Iterable[Any]) -> List[ComputeOutput]:
    result = []
    for out in outputs:
        if isinstance(out, OutputSpec):
            result.append(ComputeOutput(catalog.resolve(ds, out.table), out.keys))
        else:
            result.append(ComputeOutput(catalog.resolve(ds, out)))
    return result


def step_name(func: Any, kind: str, inputs: Sequence[Any], outputs: Sequence[Any], base: Optional[str] = None) -> str:
    """The name of a step declared without ``name=``, equal to datapipe 0.15's.

    ``f"{base}_{h}"``: ``base`` is the function's ``__name__`` (unless given) and ``h`` the 10 hex
    digits of ``shake_128(step_class + base + input names + output names)``, where ``step_class``
    is 0.15's compute-step class for the declaration ``kind`` (``STEP_CLASS_015``). The name is
    stable across processes, and it names the step's metadata table (``<name>_meta``), which is why
    it must not change: a different name would mean a fresh table and a full reprocessing.
    """
    import hashlib

    if base is None:
        base = getattr(func, "__name__", type(func).__name__)
    parts = [STEP_CLASS_015.get(kind, kind), base, *[c.name for c in inputs], *[c.name for c in outputs]]
    return f"{base}_{hashlib.shake_128(''.join(parts).encode()).hexdigest(5)}"


#: Declaration -> the compute-step class name datapipe 0.15 hashes into the step name (checked
#: against 0.15 itself: its ``BatchGenerate`` and ``UpdateExternalTable`` compile to a
#: ``DatatableTransformStep``, so that is the class in their names).
STEP_CLASS_015 = {
    "BatchTransform": "BatchTransformStep",
    "DatatableBatchTransform": "DatatableBatchTransformStep",
    "BatchGenerate": "DatatableTransformStep",
    "DatatableTransform": "DatatableTransformStep",
    "UpdateExternalTable": "DatatableTransformStep",
}


def labels_match(step: ComputeStep, labels: Sequence[Tuple[str, str]]) -> bool:
    return all(label in step.labels for label in labels)
