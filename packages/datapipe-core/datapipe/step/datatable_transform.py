"""DatatableTransform: a step that gets whole ``DataTable`` objects and does its own I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from datapipe.compute import (
    Catalog,
    ComputeInput,
    ComputeOutput,
    ComputeStep,
    PipelineStep,
    StepRun,
    resolve_inputs,
    resolve_outputs,
    step_name,
)
from datapipe.datatable import DataStore
from datapipe.executor import Executor
from datapipe.meta.sql_meta import Watermarks
from datapipe.meta.versions import take_snapshot
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, Labels

DatatableTransformFunc = Callable[..., None]


class DatatableTransformStep(ComputeStep):
    """Runs ``func(ds, input_dts, output_dts, run_config, kwargs)``; with ``check_for_changes``
    only when an input changed since the last successful run.

    "Changed" means: an input holds a row whose version is not visible in the snapshot taken
    before the last successful run started (``datapipe.meta.versions``).
    """

    def __init__(
        self,
        ds: DataStore,
        name: str,
        func: DatatableTransformFunc,
        input_dts: List[ComputeInput],
        output_dts: List[ComputeOutput],
        check_for_changes: bool = True,
        kwargs: Optional[Dict[str, Any]] = None,
        labels: Optional[Labels] = None,
    ) -> None:
        super().__init__(name, input_dts, output_dts, labels)
        self.func = func
        self.check_for_changes = check_for_changes
        self.kwargs = kwargs or {}
        self.watermarks = Watermarks(ds.meta_dbconn, name, ds.create_meta_table)

    def _run_full(self, ds: DataStore, run_config: RunConfig, executor: Optional[Executor], run: StepRun) -> None:
        snapshot = take_snapshot(ds.meta_dbconn)
        if self.check_for_changes and self.input_dts and not self._changed():
            return
        run.start(1)
        self.func(ds, [ci.dt for ci in self.input_dts], [co.dt for co in self.output_dts], run_config, self.kwargs)
        self.watermarks.set({ci.name: snapshot for ci in self.input_dts})

    def _run_changelist(
        self,
        ds: DataStore,
        change_list: ChangeList,
        run_config: RunConfig,
        executor: Optional[Executor],
        run: StepRun,
    ) -> ChangeList:
        """A whole-table function cannot run for some keys: it runs whenever an input changed."""
        self._run_full(ds, run_config, executor, run)
        return ChangeList()

    def _changed(self) -> bool:
        seen = self.watermarks.get()
        return any(ci.dt.meta.has_unseen(seen.get(ci.name)) for ci in self.input_dts)

    def reset_metadata(self, ds: DataStore) -> None:
        self.watermarks.reset()


@dataclass
class DatatableTransform(PipelineStep):
    """Declare a step whose function works on whole tables and does its own reading and writing.

    For work that does not fit key-by-key batches (a global aggregate, a model trained on a
    whole table). The step keeps no per-key state: it runs when any input changed since its
    last successful run, or on every run with ``check_for_changes=False``.

    Args:
        func: called as ``func(ds, input_dts, output_dts, run_config, kwargs)`` with the
            ``DataStore``, the input and output ``DataTable``s, the ``RunConfig`` and
            ``kwargs``. It writes the outputs itself (``output_dts[0].store_chunk(df)``).
        inputs: the tables read (names, ``Table``s, ORM classes).
        outputs: the tables written.
        check_for_changes: run only when an input changed (default); ``False`` runs every time.
        kwargs: passed to ``func``.
        labels: ``[("key", "value"), ...]`` tags for CLI selection.
        name: the step's name; by default derived from ``func`` and the tables, as in 0.15.

    Example:
        ```python
        def category_stats(ds, input_dts, output_dts, run_config, kwargs):
            products = input_dts[0].get_data()
            stats = products.groupby("category", as_index=False)["price"].mean()
            output_dts[0].store_chunk(stats)

        DatatableTransform(category_stats, inputs=["products"], outputs=["stats"])
        ```
    """

    func: DatatableTransformFunc
    inputs: List[Any]
    outputs: List[Any]
    check_for_changes: bool = True
    kwargs: Optional[Dict[str, Any]] = None
    labels: Optional[Labels] = None
    name: Optional[str] = None

    def build_compute(self, ds: DataStore, catalog: Catalog) -> List[ComputeStep]:
        inputs = resolve_inputs(ds, catalog, self.inputs)
        outputs = resolve_outputs(ds, catalog, self.outputs)
        name = self.name or step_name(self.func, "DatatableTransform", inputs, outputs)
        return [
            DatatableTransformStep(
                ds, name, self.func, inputs, outputs, self.check_for_changes, self.kwargs, self.labels
            )
        ]
