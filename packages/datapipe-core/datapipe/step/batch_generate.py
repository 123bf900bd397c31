"""BatchGenerate: fill tables from a generator function, deleting what it no longer yields."""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import pandas as pd

from datapipe.compute import Catalog, ComputeOutput, ComputeStep, PipelineStep, StepRun, resolve_outputs, step_name
from datapipe.datatable import DataStore, DataTable, TableWrite
from datapipe.executor import Executor
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, Labels, TransformResult

logger = logging.getLogger("datapipe.step.batch_generate")

GenerateFunc = Callable[..., Iterator[TransformResult]]


def do_batch_generate(
    func: GenerateFunc,
    ds: DataStore,
    output_dts: List[DataTable],
    run_config: Optional[RunConfig] = None,
    delete_stale: bool = True,
    kwargs: Optional[Dict[str, Any]] = None,
) -> ChangeList:
    """Store every chunk ``func(**kwargs)`` yields; then delete rows it did not yield this time.

    As in datapipe 0.15: ``func`` receives the ``DataStore`` as ``ds`` when it declares that
    parameter; when the generator raises (or yields a malformed chunk), the chunks stored so far
    are kept and no stale row is deleted, and the error is re-raised only under
    ``run_config.fail_fast`` (otherwise logged); with ``run_config.filters``, stale deletion is
    limited to rows matching the filters.

    Args:
        func: generator function yielding a DataFrame or a tuple of DataFrames per chunk.
        ds: the data store.
        output_dts: the output tables, in the order of the yielded tuples.
        run_config: ``fail_fast`` and ``filters`` as above.
        delete_stale: delete rows of the outputs that were not yielded in this run.
        kwargs: keyword arguments for ``func``.

    Returns:
        The keys that changed (written or deleted), per table.

    Raises:
        Exception: under ``fail_fast``, what ``func`` raised or the ``ValueError`` for a bad chunk
            (the message names the chunk and the table); always, errors of the stores and of the
            metadata database.
    """
    changes, error = generate(func, ds, output_dts, run_config, delete_stale, kwargs)
    if error is not None and (run_config or RunConfig()).fail_fast:
        raise error
    return changes


def generate(
    func: GenerateFunc,
    ds: DataStore,
    output_dts: List[DataTable],
    run_config: Optional[RunConfig] = None,
    delete_stale: bool = True,
    kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[ChangeList, Optional[Exception]]:
    """``do_batch_generate`` returning the generator's error (if any) instead of deciding about it."""
    started = time.time()
    changes = ChangeList()
    kwargs = dict(kwargs or {})
    if "ds" in _parameters(func) and "ds" not in kwargs:
        kwargs["ds"] = ds
    name = getattr(func, "__name__", func)
    chunks: Optional[Iterator[Any]] = None
    for n in itertools.count(1):
        try:
            chunks = chunks or iter(func(**kwargs))
            chunk = next(chunks)
            frames = [chunk] if isinstance(chunk, pd.DataFrame) else list(chunk)
            if len(frames) != len(output_dts):
                raise ValueError(
                    f"generator {name!r} yielded {len(frames)} DataFrame(s) "
                    f"for {len(output_dts)} output(s) {[dt.name for dt in output_dts]} (chunk {n})"
                )
            for frame, dt in zip(frames, output_dts):
                dt.check_chunk(frame, f"generator chunk {n} for table {dt.name!r}")
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - the generator's error or bad data: the caller decides
            logger.error("generator %s failed, stale rows are kept: %s: %s", name, type(e).__name__, e)
            return changes, e
        for frame, dt in zip(frames, output_dts):  # store errors are not the generator's: they propagate
            context = f"generator chunk {n} for table {dt.name!r}"
            # never before ``started``, even if the clock steps back: stale means "not confirmed since start"
            now = max(time.time(), started)
            [(changed, _)] = ds.write([TableWrite(dt, frame, context=context)], now)
            changes.append(dt.name, changed)
    if delete_stale:
        for dt in output_dts:
            changes.append(dt.name, dt.delete_stale_by_process_ts(started, run_config=run_config))
    return changes, None


def _parameters(func: Callable[..., Any]) -> Mapping[str, Any]:
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}


class BatchGenerateStep(ComputeStep):
    def __init__(
        self,
        name: str,
        func: GenerateFunc,
        output_dts: List[ComputeOutput],
        kwargs: Optional[Dict[str, Any]] = None,
        labels: Optional[Labels] = None,
        delete_stale: bool = True,
    ) -> None:
        super().__init__(name, [], output_dts, labels)
        self.func = func
        self.kwargs = kwargs
        self.delete_stale = delete_stale

    def _run_full(self, ds: DataStore, run_config: RunConfig, executor: Optional[Executor], run: StepRun) -> None:
        run.start(1)
        dts = [co.dt for co in self.output_dts]
        _, error = generate(self.func, ds, dts, run_config, self.delete_stale, self.kwargs)
        if error is not None:
            if run_config.fail_fast:
                raise error
            run._emit("on_step_error", self, error)  # like a failed batch: reported, the run goes on


@dataclass
class BatchGenerate(PipelineStep):
    """Declare a step that regenerates ``outputs`` from a generator function on every run.

    Each run calls ``func(**kwargs)`` and stores every chunk it yields (``store_chunk``: only
    new or changed rows count as changes downstream). When the generator finishes, rows of the
    outputs that it did not yield in this run are deleted (``delete_stale``). If it raises,
    nothing is deleted; the error is reported like a failed batch (the run fails under
    ``fail_fast``). A ``func`` that declares a ``ds`` parameter receives the ``DataStore``.

    Args:
        func: a generator function yielding DataFrames (one output) or tuples of DataFrames
            (one per output), each with the output tables' key and data columns.
        outputs: the tables written: catalog names, ``Table`` objects or ORM classes.
        name: the step's name (default: the function name plus a short hash of the tables).
        kwargs: keyword arguments for ``func``.
        labels: ``[("key", "value"), ...]`` tags for CLI selection.
        delete_stale: delete rows not yielded in this run (default). ``False`` only adds and
            updates.

    Example:
        ```python
        def load_products():
            for page in api.pages():
                yield pd.DataFrame(page)      # product_id, name, price

        BatchGenerate(load_products, outputs=["products"])
        ```
    """

    func: GenerateFunc
    outputs: List[Any]
    name: Optional[str] = None
    kwargs: Optional[Dict[str, Any]] = None
    labels: Optional[Labels] = None
    delete_stale: bool = True

    def build_compute(self, ds: DataStore, catalog: Catalog) -> List[ComputeStep]:
        outputs = resolve_outputs(ds, catalog, self.outputs)
        name = self.name or step_name(self.func, "BatchGenerate", [], outputs)
        return [BatchGenerateStep(name, self.func, outputs, self.kwargs, self.labels, self.delete_stale)]
