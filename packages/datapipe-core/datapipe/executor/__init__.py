"""Executors decide *where* the batches of a step run.

A step computes which keys need processing and hands the executor an iterator of key
batches plus the function that processes one batch. ``SingleThreadExecutor`` runs them in
order in this process; ``datapipe.executor.ray.RayExecutor`` runs them as Ray tasks.
Further executors are contributed by plugins (``datapipe_executors`` hook).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Optional

from datapipe.run_callback import StepLike
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, IndexDF

if TYPE_CHECKING:
    from datapipe.datatable import DataStore

ProcessFn = Callable[["DataStore", IndexDF, Optional[RunConfig]], ChangeList]


@dataclass
class ExecutorConfig:
    """Resources for one batch task (executors that cannot honour them ignore them).

    Args:
        memory: bytes of memory per batch task.
        cpu: CPUs per batch task (Ray default: 1).
        gpu: GPUs per batch task.
        parallelism: at most this many batches of the step in flight at once (``None``: 100).
    """

    memory: Optional[int] = None
    cpu: Optional[float] = None
    gpu: Optional[float] = None
    parallelism: Optional[int] = 100


# --- batch statistics for progress reporting (issue 5) -----------------------------------------


def batch_stats(changes: ChangeList) -> Dict[str, int]:
    """``changed`` (new or updated) and ``deleted`` output keys of one batch's ``ChangeList``."""
    total = sum(len(idx) for idx in changes.changes.values())
    deleted = changes.deleted_count
    return {"changed": total - deleted, "deleted": deleted}


class Executor(ABC):
    """Runs the batches of one step."""

    @abstractmethod
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
        """Call ``process_fn(ds, idx, run_config)`` for every batch ``idx`` of ``idx_gen``.

        Called once per step run. ``idx_count`` is the number of batches (for progress).
        ``process_fn`` records a failing batch itself and returns an empty ``ChangeList``; it
        raises only under ``fail_fast`` or when the metadata store is unusable, and the
        executor must then stop and re-raise. Returns the union of the batches' change lists.
        The executor reports progress through ``run_config.callback.on_step_progress``.
        """


class SingleThreadExecutor(Executor):
    """Runs batches one after another in the calling process (the default)."""

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
        changes = ChangeList()
        callback = run_config.callback if run_config is not None else None
        for done, idx in enumerate(idx_gen, start=1):
            batch = process_fn(ds, idx, run_config)
            changes.extend(batch)
            if callback is not None:
                callback.on_step_progress(step, done, idx_count, rows=len(idx), **batch_stats(batch))
        return changes
