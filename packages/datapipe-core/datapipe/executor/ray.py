"""Run the batches of a step as Ray tasks (``pip install datapipe-core[ray]``).

    from datapipe.executor.ray import RayExecutor
    run_steps(ds, steps, executor=RayExecutor())          # local Ray, or RAY_ADDRESS
    datapipe --executor ray run                             # the same from the CLI

Batches of keys become Ray tasks (one batch each, or several: see below) with the step's
``ExecutorConfig`` resources (``cpu`` -> ``num_cpus``, default 1; ``gpu`` -> ``num_gpus``; ``memory``
bytes); at most ``parallelism`` batches are in flight (100 when None), and key batches are pulled from
the step's iterator only as their task can be submitted. The step and the ``DataStore`` are shipped
once per step run (one object in the Ray object store, so the step's tables and the store share one
``DBConn`` and keep the one-transaction durability) and unpickled once per worker process.

Who writes (``writes=``): with ``"workers"`` each task processes its batch completely, writes
included, as in the single-thread path. With ``"driver"`` (for a ``BatchProcessor`` with the
``compute`` / ``resume`` halves, as every batch step's is) a task only snapshots, reads and
computes (``compute``) and returns the outcome; the driver writes outcomes (outputs, step metadata,
or the failure with its keys) as tasks finish, while the workers compute the next batches. One
process writes, so writers never queue on SQLite's database lock. ``"auto"`` (the default) picks
``"driver"`` when the step's metadata database is SQLite and ``"workers"`` otherwise (PostgreSQL
takes concurrent writers; see ``benchmarks/README.md`` for the measurements).

Several batches per task (``batches_per_task=``): Ray spends about a millisecond of its own per task
(submitting it, scheduling it, returning its result), which cheap batches feel: 500 batches of 20 rows
ran slower through Ray than in one thread (0.84-0.91x on PostgreSQL). By default (``None``) a task
holds one batch until a task has reported how long its batches took, then as many as fill about
``TASK_SECONDS`` of work (at most ``MAX_BATCHES_PER_TASK``, and at most a quarter of ``parallelism``,
so that several tasks stay in flight); ``parallelism`` still bounds the batches in flight. Until that
first report at most ``PROBE_TASKS_PER_SLOT`` one-batch tasks per task slot (the cluster's CPUs over
the task's ``num_cpus``) are out, so that sizing starts with the first report rather than after
``parallelism`` one-batch tasks (half of a 200-batch run). A task processes its batches one after the
other, each exactly as alone (its own transaction, failure record and progress report); an integer
fixes the number. Measured on 2 CPUs (``benchmarks/README.md``): the 500 cheap batches 1.12-1.27x
faster than in one thread, 200 batches of 20 ms of Python 1.79-1.88x.

A failing batch is recorded in the metadata (by the worker, or by the driver) exactly as in the
single-thread path and reported to the run callback on the driver; progress is reported on the
driver as batches finish. If a task or a driver-side write raises (``fail_fast``, or the metadata store is
unusable), the tasks still in flight are cancelled and the error is re-raised on the driver.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Tuple

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
# Batches in flight when ExecutorConfig.parallelism is None.
DEFAULT_PARALLELISM = 100
WRITES = ("auto", "driver", "workers")
# Batches per task when RayExecutor(batches_per_task=None): about this many seconds of work per task.
TASK_SECONDS = 0.1
MAX_BATCHES_PER_TASK = 32
# One-batch tasks in flight per task slot until the first task reports its batches' time.
PROBE_TASKS_PER_SLOT = 2


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


def _run_batches(
    token: str, ref: List[Any], idxs: List[IndexDF], run_config: RunConfig
) -> Tuple[List[Tuple[ChangeList, Dict[str, int], List[BaseException]]], float]:
    """The Ray task: process the batches one after the other; per batch its changes, stats and batch
    errors, and the seconds the batches took."""
    ds, process_fn = _payload(token, ref)
    started = time.perf_counter()
    results = []
    for idx in idxs:
        collector = _ErrorCollector()
        rc = RunConfig(filters=run_config.filters, labels=run_config.labels, fail_fast=run_config.fail_fast,
                       callback=collector)
        changes = process_fn(ds, idx, rc)
        results.append((changes, batch_stats(changes), collector.errors))
    return results, time.perf_counter() - started


def _compute_batches(token: str, ref: List[Any], idxs: List[IndexDF], run_config: RunConfig) -> Tuple[List[Any], float]:
    """The Ray task when the driver writes: read and compute the batches, return their outcomes to write
    and the seconds they took."""
    ds, process_fn = _payload(token, ref)
    started = time.perf_counter()
    outcomes = [process_fn.compute(ds, idx, run_config) for idx in idxs]
    return outcomes, time.perf_counter() - started


class _TaskSizer:
    """How many batches the next task takes (``RayExecutor(batches_per_task=...)``, module docstring)."""

    def __init__(self, fixed: Optional[int], parallelism: int, slots: Optional[int] = None) -> None:
        self.fixed = fixed
        self.limit = max(1, parallelism // 4) if fixed is None else min(fixed, parallelism)
        self.probe_tasks = PROBE_TASKS_PER_SLOT * slots if slots else parallelism
        self.seconds = 0.0
        self.batches = 0

    def holds(self, tasks_in_flight: int) -> bool:
        """Whether the next task must wait: sizing by time, nothing reported yet, ``probe_tasks`` out."""
        return self.fixed is None and not self.batches and tasks_in_flight >= self.probe_tasks

    def record(self, seconds: float, batches: int) -> None:
        """A task of ``batches`` batches took ``seconds`` (in the worker)."""
        self.seconds += seconds
        self.batches += batches

    def next_size(self) -> int:
        if self.fixed is not None:
            return self.limit
        if not self.batches:
            return 1
        per_batch = max(self.seconds / self.batches, 1e-6)
        return max(1, min(int(TASK_SECONDS / per_batch), MAX_BATCHES_PER_TASK, self.limit))


def _take(batches: Iterator[IndexDF], n: int) -> List[IndexDF]:
    group = []
    for idx in batches:
        group.append(idx)
        if len(group) == n:
            break
    return group


class RayExecutor(Executor):
    """Runs batches as Ray tasks on a local Ray (started on first use) or a cluster.

    ``address``: a Ray address (``"auto"``, ``"ray://host:10001"``); default ``RAY_ADDRESS`` or a new
    local Ray. ``init_kwargs`` are passed to ``ray.init`` (e.g. ``num_cpus``). When Ray is already
    initialised in this process it is used as is. ``writes``: ``"workers"``, ``"driver"`` or
    ``"auto"`` (driver on SQLite metadata), see the module docstring. ``batches_per_task``: batches
    per Ray task, or None (the default) to size tasks by the time their batches take.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        init_kwargs: Optional[Dict[str, Any]] = None,
        writes: str = "auto",
        batches_per_task: Optional[int] = None,
    ) -> None:
        if writes not in WRITES:
            raise ValueError(f"RayExecutor(writes={writes!r}): use one of {', '.join(WRITES)}")
        if batches_per_task is not None and (not isinstance(batches_per_task, int) or batches_per_task < 1):
            raise ValueError(f"RayExecutor(batches_per_task={batches_per_task!r}): use a positive integer, or None "
                             "to size tasks by the time their batches take")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.init_kwargs = dict(init_kwargs or {})
        self.writes = writes
        self.batches_per_task = batches_per_task

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
        task_options = self.task_options(config)
        task = ray.remote(_run_batches if resume is None else _compute_batches).options(**task_options)
        sizer = _TaskSizer(self.batches_per_task, parallelism, self._task_slots(task_options))

        changes = ChangeList()
        in_flight: Dict[Any, List[int]] = {}  # task -> rows of each of its batches
        done = 0

        def batches_in_flight() -> int:
            return sum(len(rows) for rows in in_flight.values())

        def collect(wait_for_all: bool, room: int = 1) -> None:
            nonlocal done
            while in_flight and (wait_for_all or batches_in_flight() + room > parallelism
                                 or sizer.holds(len(in_flight))):
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                batch_rows = in_flight.pop(ready[0])
                try:
                    results, seconds = ray.get(ready[0])
                    sizer.record(seconds, len(batch_rows))
                    for result, rows in zip(results, batch_rows):
                        if resume is not None:  # write here, while the workers compute the next batches
                            prepared = resume(ds, result, run_config)
                            batch = prepared.finish(write_prepared(prepared))
                            stats, errors = batch_stats(batch), []
                        else:
                            batch, stats, errors = result
                        done += 1
                        changes.extend(batch)
                        if callback is not None:
                            for error in errors:
                                callback.on_step_error(step, error)
                            callback.on_step_progress(step, done, idx_count, rows=rows, **stats)
                except ray.exceptions.RayTaskError as e:
                    self._cancel(in_flight)
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                except BaseException:
                    self._cancel(in_flight)
                    raise

        batches = iter(idx_gen)
        tasks = 0
        while True:
            size = sizer.next_size()
            collect(wait_for_all=False, room=size)  # the keys are pulled only when their task can go out
            group = _take(batches, size)
            if not group:
                break
            in_flight[task.remote(token, ref, group, worker_rc)] = [len(idx) for idx in group]
            tasks += 1
        collect(wait_for_all=True)
        logger.debug("step %s: %d batches in %d Ray tasks", getattr(step, "name", step), done, tasks)
        return changes

    @staticmethod
    def _task_slots(task_options: Dict[str, Any]) -> Optional[int]:
        """How many tasks of these options the cluster runs at once, by CPUs (None when unbounded or unknown)."""
        cpus = task_options["num_cpus"]
        if not cpus:
            return None
        total = ray.cluster_resources().get("CPU", 0)
        return max(1, int(total // cpus)) if total else None

    @staticmethod
    def _cancel(in_flight: Dict[Any, List[int]]) -> None:
        for pending in list(in_flight):
            try:
                ray.cancel(pending)
            except Exception:  # noqa: BLE001 - best effort
                logger.debug("could not cancel a Ray task", exc_info=True)
        in_flight.clear()
