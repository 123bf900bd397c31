"""Run the batches of a step as Ray tasks (``pip install datapipe-core[ray]``).

    from datapipe.executor.ray import RayExecutor
    run_steps(ds, steps, executor=RayExecutor())          # local Ray, or RAY_ADDRESS
    datapipe --executor ray run                             # the same from the CLI

Each batch of keys becomes one Ray task with the step's ``ExecutorConfig`` resources
(``cpu`` -> ``num_cpus``, default 1; ``gpu`` -> ``num_gpus``; ``memory`` bytes); at most ``parallelism``
tasks are in flight (100 when None), and key batches are pulled from the step's iterator only as slots free
up. The step and the ``DataStore`` are shipped once per step run (one object in the Ray object
store, so the step's tables and the store share one ``DBConn`` and keep the one-transaction
durability) and unpickled once per worker process.

Who writes (``writes=``): with ``"workers"`` each task processes its batch completely, writes
included, as in the single-thread path. With ``"driver"`` (for a ``BatchProcessor`` with the
``compute`` / ``resume`` halves, as every batch step's is) a task only snapshots, reads and
computes (``compute``) and returns the outcome; the driver writes outcomes (outputs, step metadata,
or the failure with its keys) as tasks finish, while the workers compute the next batches. One
process writes, so writers never queue on SQLite's database lock. ``"auto"`` (the default) picks
``"driver"`` when the step's metadata database is SQLite and ``"workers"`` otherwise (PostgreSQL
takes concurrent writers; see ``benchmarks/README.md`` for the measurements).

A failing batch is recorded in the metadata (by the worker, or by the driver) exactly as in the
single-thread path and reported to the run callback on the driver; progress is reported on the
driver as batches finish. If a task or a driver-side write raises (``fail_fast``, or the metadata store is
unusable), the tasks still in flight are cancelled and the error is re-raised on the driver.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

import cloudpickle

from datapipe.executor import BatchProcessor, Executor, ExecutorConfig, ProcessFn, batch_stats, write_prepared
from datapipe.run_callback import RunCallback, StepLike
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, IndexDF

try:
    import ray
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("RayExecutor needs Ray: pip install 'datapipe-core[ray]'") from e

if TYPE_CHECKING:
    from datapipe.datatable import DataStore

logger = logging.getLogger("datapipe.executor.ray")

# Per worker process: payload token -> (ds, process_fn), so a step is unpickled once per worker.
_PAYLOADS: OrderedDict[str, Tuple[Any, Any]] = OrderedDict()
_MAX_CACHED = 4
# Tasks in flight when ExecutorConfig.parallelism is None.
DEFAULT_PARALLELISM = 100
WRITES = ("auto", "driver", "workers")


class _ErrorCollector(RunCallback):
    """Stands in for the driver's callback inside a task: keeps the batch errors to send back."""

    def __init__(self) -> None:
        self.errors: List[BaseException] = []

    def on_step_error(self, step: Any, error: BaseException) -> None:
        self.errors.append(_picklable(error))


def _picklable(error: BaseException) -> BaseException:
    try:
        cloudpickle.loads(cloudpickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - fall back to the text of an exception that does not pickle
        return RuntimeError(f"{type(error).__name__}: {error}")


def _payload(token: str, ref: List[Any]) -> Tuple[Any, Any]:
    if token not in _PAYLOADS:
        _PAYLOADS[token] = ray.get(ref[0])
        while len(_PAYLOADS) > _MAX_CACHED:
            _, (old_ds, _fn) = _PAYLOADS.popitem(last=False)
            _dispose(old_ds)
    return _PAYLOADS[token]


def _dispose(ds: Any) -> None:
    """Close the connection pool of an evicted payload's metadata database (best effort)."""
    try:
        ds.meta_dbconn.con.dispose()
    except Exception:  # noqa: BLE001
        logger.debug("could not dispose an evicted DataStore", exc_info=True)


def _run_batch(
    token: str, ref: List[Any], idx: IndexDF, run_config: RunConfig
) -> Tuple[ChangeList, Dict[str, int], List[BaseException]]:
    """The Ray task: process one batch, return its changes, stats and the batch errors."""
    ds, process_fn = _payload(token, ref)
    collector = _ErrorCollector()
    rc = RunConfig(filters=run_config.filters, labels=run_config.labels, fail_fast=run_config.fail_fast,
                   callback=collector)
    changes = process_fn(ds, idx, rc)
    return changes, batch_stats(changes), collector.errors


def _compute_batch(token: str, ref: List[Any], idx: IndexDF, run_config: RunConfig) -> Any:
    """The Ray task when the driver writes: read and compute one batch, return the outcome to write."""
    ds, process_fn = _payload(token, ref)
    return process_fn.compute(ds, idx, run_config)


class RayExecutor(Executor):
    """Runs batches as Ray tasks on a local Ray (started on first use) or a cluster.

    ``address``: a Ray address (``"auto"``, ``"ray://host:10001"``); default ``RAY_ADDRESS`` or a new
    local Ray. ``init_kwargs`` are passed to ``ray.init`` (e.g. ``num_cpus``). When Ray is already
    initialised in this process it is used as is. ``writes``: ``"workers"``, ``"driver"`` or
    ``"auto"`` (driver on SQLite metadata), see the module docstring.
    """

    def __init__(
        self, address: Optional[str] = None, init_kwargs: Optional[Dict[str, Any]] = None, writes: str = "auto"
    ) -> None:
        if writes not in WRITES:
            raise ValueError(f"RayExecutor(writes={writes!r}): use one of {', '.join(WRITES)}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.init_kwargs = dict(init_kwargs or {})
        self.writes = writes

    def driver_writes(self, ds: DataStore, process_fn: ProcessFn) -> bool:
        """Whether this run's tasks only compute and the driver writes (see the module docstring)."""
        if not isinstance(process_fn, BatchProcessor) or process_fn.split() is None or self.writes == "workers":
            return False
        return self.writes == "driver" or bool(ds.meta_dbconn.is_sqlite)

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        kwargs: Dict[str, Any] = {"ignore_reinit_error": True, **self.init_kwargs}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs.setdefault("include_dashboard", False)
        logger.info("starting Ray (%s)", self.address or "local")
        ray.init(**kwargs)

    @staticmethod
    def task_options(config: ExecutorConfig) -> Dict[str, Any]:
        """Ray task options for an ``ExecutorConfig``."""
        options: Dict[str, Any] = {"num_cpus": config.cpu if config.cpu is not None else 1, "max_retries": 0}
        if config.gpu:
            options["num_gpus"] = config.gpu
        if config.memory:
            options["memory"] = config.memory
        return options

    def run_process_batch(
        self,
        step: StepLike,
        ds: DataStore,
        idx_count: int,
        idx_gen: Iterable[IndexDF],
        process_fn: ProcessFn,
        run_config: Optional[RunConfig] = None,
        executor_config: Optional[ExecutorConfig] = None,
    ) -> ChangeList:
        self._ensure_ray()
        config = executor_config or ExecutorConfig()
        parallelism = max(1, config.parallelism if config.parallelism is not None else DEFAULT_PARALLELISM)
        run_config = run_config or RunConfig()
        callback = run_config.callback
        worker_rc = RunConfig(filters=run_config.filters, labels=run_config.labels, fail_fast=run_config.fail_fast)
        token = uuid.uuid4().hex
        ref = [ray.put((ds, process_fn))]  # wrapped in a list so Ray passes the reference, not the value
        split = process_fn.split() if isinstance(process_fn, BatchProcessor) else None
        resume = split[1] if split is not None and self.driver_writes(ds, process_fn) else None
        task = ray.remote(_run_batch if resume is None else _compute_batch).options(**self.task_options(config))

        changes = ChangeList()
        in_flight: Dict[Any, int] = {}
        done = 0

        def collect(wait_for_all: bool) -> None:
            nonlocal done
            while in_flight and (wait_for_all or len(in_flight) >= parallelism):
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                rows = in_flight.pop(ready[0])
                try:
                    if resume is not None:  # write here, while the workers compute the next batches
                        prepared = resume(ds, ray.get(ready[0]), run_config)
                        batch = prepared.finish(write_prepared(prepared))
                        stats, errors = batch_stats(batch), []
                    else:
                        batch, stats, errors = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:
                    self._cancel(in_flight)
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                except BaseException:
                    self._cancel(in_flight)
                    raise
                done += 1
                changes.extend(batch)
                if callback is not None:
                    for error in errors:
                        callback.on_step_error(step, error)
                    callback.on_step_progress(step, done, idx_count, rows=rows, **stats)

        for idx in idx_gen:
            collect(wait_for_all=False)
            in_flight[task.remote(token, ref, idx, worker_rc)] = len(idx)
        collect(wait_for_all=True)
        return changes

    @staticmethod
    def _cancel(in_flight: Dict[Any, int]) -> None:
        for pending in list(in_flight):
            try:
                ray.cancel(pending)
            except Exception:  # noqa: BLE001 - best effort
                logger.debug("could not cancel a Ray task", exc_info=True)
        in_flight.clear()
