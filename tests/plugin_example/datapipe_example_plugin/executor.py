"""``InlineExecutor``: runs each batch in the calling thread and counts the batches it ran."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from datapipe.executor import Executor, ExecutorConfig, ProcessFn
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, IndexDF

if TYPE_CHECKING:
    from datapipe.compute import ComputeStep
    from datapipe.datatable import DataStore


class InlineExecutor(Executor):
    """Like the core's single-thread executor; ``batches_run`` shows it was the one used."""

    def __init__(self) -> None:
        self.batches_run = 0

    def run_process_batch(
        self,
        step: ComputeStep,
        ds: DataStore,
        idx_count: int,
        idx_gen: Iterable[IndexDF],
        process_fn: ProcessFn,
        run_config: Optional[RunConfig] = None,
        executor_config: Optional[ExecutorConfig] = None,
    ) -> ChangeList:
        changes = ChangeList()
        for idx in idx_gen:
            changes.extend(process_fn(ds, idx, run_config))
            self.batches_run += 1
        return changes
