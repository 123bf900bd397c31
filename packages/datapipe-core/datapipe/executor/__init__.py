"""Executors decide *where* the batches of a step run.

A step computes which keys need processing and hands the executor an iterator of key
batches plus the function that processes one batch. ``SingleThreadExecutor`` runs them in
order in this process; ``datapipe.executor.ray.RayExecutor`` runs them as Ray tasks.
Further executors are contributed by plugins (``datapipe_executors`` hook).

A batch is two halves: *prepare* (take the snapshot, read the inputs, call the function) and
*write* (the unit of work: outputs, their metadata and the step's state, committed together). A
step whose ``process_fn`` is a ``BatchProcessor`` exposes the halves, so an executor may run them
in different places. Batches may be prepared before earlier ones are written: each batch records a
snapshot taken before it reads (its own, or in a full run its page's), so whatever an earlier batch
commits after a later one read is seen as a change by the next run (``datapipe.meta.versions``).

A write may be left *in flight* (``PreparedBatch.in_flight``): on PostgreSQL a first run's unit of
work is sent through its ``COMMIT`` in pipeline mode and its outcome read only by ``finish``.
``SingleThreadExecutor`` then prepares the next batch (on other connections) before finishing this
one, so the client reads and computes batch k+1 while the server writes batch k. A write that is
not in flight is finished at once, as before.

(Writing batch k on a writer thread while batch k+1 is prepared was tried and measured: with the
GIL, the writer waits for the interpreter between statements, so client and server work did not
overlap; it cost about 10 % more client CPU for no gain, and was removed.)

A ``BatchProcessor`` may split *prepare* once more, for executors that prepare in another process:
``compute`` (snapshot, read, call the function; writes nothing, returns a picklable outcome that
carries any error) and ``resume`` (turn that outcome into the ``PreparedBatch`` in the process
that writes, recording a failure there). ``RayExecutor`` uses this on SQLite: tasks compute, the
driver writes, so one process writes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Tuple

from datapipe.run_callback import StepLike
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, IndexDF

if TYPE_CHECKING:
    from datapipe.datatable import DataStore

logger = logging.getLogger("datapipe.executor")

ProcessFn = Callable[["DataStore", IndexDF, Optional[RunConfig]], ChangeList]


class PreparedBatch(ABC):
    """A batch whose outputs are computed and not yet written."""

    @abstractmethod
    def write(self) -> None:
        """Write the batch in one unit of work (it touches only the database and its own state); raises
        whatever the write raises, and nothing is then committed. The unit of work may still be in
        flight on return (``in_flight``); ``finish`` learns its outcome."""

    @property
    def in_flight(self) -> bool:
        """True after a ``write`` that returned before the database confirmed it (``finish`` waits for
        the outcome); an executor may prepare other batches meanwhile. False by default."""
        return False

    @abstractmethod
    def finish(self, error: Optional[Exception]) -> ChangeList:
        """Called by the executor, exactly once, after ``write`` returned (``error`` None) or raised.

        Waits for a write still in flight; records a failure (the batch's keys, the error) and returns
        the batch's changes; raises only under ``fail_fast`` or when the metadata store is unusable,
        like ``ProcessFn``.
        """


PrepareFn = Callable[["DataStore", IndexDF, Optional[RunConfig]], PreparedBatch]
ComputeFn = Callable[["DataStore", IndexDF, Optional[RunConfig]], Any]
ResumeFn = Callable[["DataStore", Any, Optional[RunConfig]], PreparedBatch]


def write_prepared(prepared: PreparedBatch) -> Optional[Exception]:
    """Run ``prepared.write()``; return the exception it raised (None when it succeeded)."""
    try:
        prepared.write()
    except Exception as error:  # noqa: BLE001 - handed to ``finish``, which records or re-raises it
        return error
    return None


class BatchProcessor:
    """A ``ProcessFn`` that also exposes a batch's two halves (see the module docstring).

    Calling it processes one batch (prepare, then write, in this thread); executors that know it
    may call ``prepare`` and run the writes themselves. ``compute`` and ``resume``, when given, are
    ``prepare`` in two halves, ``prepare(ds, idx, rc) == resume(ds, compute(ds, idx, rc), rc)``:
    ``compute`` writes nothing and returns a picklable outcome, ``resume`` runs where the batch is
    written (see the module docstring). Picklable when its functions are.
    """

    def __init__(self, prepare: PrepareFn, compute: Optional[ComputeFn] = None,
                 resume: Optional[ResumeFn] = None) -> None:
        self.prepare = prepare
        self.compute = compute
        self.resume = resume

    def split(self) -> Optional[Tuple[ComputeFn, ResumeFn]]:
        """``(compute, resume)`` when this processor has them, else None."""
        if self.compute is None or self.resume is None:
            return None
        return self.compute, self.resume

    def __call__(self, ds: DataStore, idx: IndexDF, run_config: Optional[RunConfig] = None) -> ChangeList:
        prepared = self.prepare(ds, idx, run_config)
        return prepared.finish(write_prepared(prepared))


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
    total = changes.key_count()
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
        done = 0

        def report(batch: ChangeList, rows: int) -> None:
            nonlocal done
            done += 1
            changes.extend(batch)
            if callback is not None:
                callback.on_step_progress(step, done, idx_count, rows=rows, **batch_stats(batch))

        if not isinstance(process_fn, BatchProcessor):
            for idx in idx_gen:
                report(process_fn(ds, idx, run_config), len(idx))
            return changes
        in_flight: Optional[Tuple[PreparedBatch, int]] = None
        try:
            for idx in idx_gen:
                prepared = process_fn.prepare(ds, idx, run_config)  # while the previous batch is written
                if in_flight is not None:
                    previous, in_flight = in_flight, None
                    report(previous[0].finish(None), previous[1])
                error = write_prepared(prepared)
                if error is None and prepared.in_flight:
                    in_flight = (prepared, len(idx))
                else:
                    report(prepared.finish(error), len(idx))
            if in_flight is not None:
                previous, in_flight = in_flight, None
                report(previous[0].finish(None), previous[1])
        finally:
            if in_flight is not None:  # stopped by an error: still learn (and record) the batch's outcome
                _finish_quietly(in_flight[0])
        return changes


def _finish_quietly(prepared: PreparedBatch) -> None:
    """Finish a batch in flight while another error propagates; its own error is only logged."""
    try:
        prepared.finish(None)
    except Exception as e:  # noqa: BLE001 - the error already propagating is the one to report
        logger.warning("a batch written while the run stopped failed as well: %s: %s", type(e).__name__, e)
