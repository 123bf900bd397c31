"""Run statistics: a ``RunCallback`` that counts what each step of a run did.

``RunStats`` keeps, per step, batches, rows, changed and deleted keys, failed batches and seconds;
``datapipe.progress.RichProgress`` displays them and ``datapipe.run_result`` turns them into the
value ``run_steps`` returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from datapipe.run_callback import RunCallback, StepLike


@dataclass
class StepStats:
    """What one step did in one run."""

    name: str
    total_batches: int = 0
    batches: int = 0
    rows: int = 0
    changed: int = 0
    deleted: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: Optional[float] = None
    errors: List[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.finished if self.finished is not None else time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Rows per second so far."""
        elapsed = self.seconds
        return self.rows / elapsed if elapsed > 0 else 0.0


class RunStats(RunCallback):
    """Collects ``StepStats`` per step of the current run (reset by ``on_run_start``)."""

    def __init__(self) -> None:
        self.steps: Dict[str, StepStats] = {}
        self.error: Optional[BaseException] = None

    def _stats(self, step: StepLike) -> StepStats:
        if step.name not in self.steps:
            self.steps[step.name] = StepStats(step.name)
        return self.steps[step.name]

    @property
    def failed_steps(self) -> List[StepStats]:
        return [s for s in self.steps.values() if s.failed]

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        self.steps = {}
        self.error = None

    def on_step_start(self, step: StepLike, total: int = 0) -> None:
        self.steps[step.name] = StepStats(step.name, total_batches=total)

    def on_step_progress(self, step: StepLike, completed: int, total: int, **stats: Any) -> None:
        s = self._stats(step)
        s.batches = completed
        s.total_batches = max(total, s.total_batches)
        s.rows += int(stats.get("rows", 0))
        s.changed += int(stats.get("changed", 0))
        s.deleted += int(stats.get("deleted", 0))

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        s = self._stats(step)
        s.failed += 1
        if len(s.errors) < 5:
            s.errors.append(f"{type(error).__name__}: {error}")

    def on_step_success(self, step: StepLike) -> None:
        self._stats(step).finished = time.monotonic()

    def on_run_error(self, error: BaseException) -> None:
        self.error = error
        for s in self.steps.values():
            if s.finished is None:
                s.finished = time.monotonic()
