"""Progress display and run statistics, as ``RunCallback`` listeners.

``RunStats`` only counts (per step: batches, rows, changed, deleted, failed batches, seconds).
``RichProgress`` adds a ``rich`` progress bar per step while a run is going, shown only when the
console is a terminal, and prints a summary table when the run ends::

    from datapipe.progress import RichProgress
    run_steps(ds, steps, RunConfig(callback=RichProgress()))

Library users get the same display as the ``datapipe`` command line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable

from datapipe.run_callback import RunCallback

if TYPE_CHECKING:
    from datapipe.compute import ComputeStep


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

    def _stats(self, step: ComputeStep) -> StepStats:
        if step.name not in self.steps:
            self.steps[step.name] = StepStats(step.name)
        return self.steps[step.name]

    @property
    def failed_steps(self) -> List[StepStats]:
        return [s for s in self.steps.values() if s.failed]

    def on_run_start(self, steps: Sequence[ComputeStep]) -> None:
        self.steps = {}
        self.error = None

    def on_step_start(self, step: ComputeStep, total: int = 0) -> None:
        self.steps[step.name] = StepStats(step.name, total_batches=total)

    def on_step_progress(self, step: ComputeStep, completed: int, total: int, **stats: Any) -> None:
        s = self._stats(step)
        s.batches = completed
        s.total_batches = max(total, s.total_batches)
        s.rows += int(stats.get("rows", 0))
        s.changed += int(stats.get("changed", 0))
        s.deleted += int(stats.get("deleted", 0))

    def on_step_error(self, step: ComputeStep, error: BaseException) -> None:
        s = self._stats(step)
        s.failed += 1
        if len(s.errors) < 5:
            s.errors.append(f"{type(error).__name__}: {error}")

    def on_step_success(self, step: ComputeStep) -> None:
        self._stats(step).finished = time.monotonic()

    def on_run_error(self, error: BaseException) -> None:
        self.error = error
        for s in self.steps.values():
            if s.finished is None:
                s.finished = time.monotonic()


def summary_table(stats: Sequence[StepStats]) -> RichTable:
    """The end-of-run table: step, processed, changed, deleted, failed, seconds."""
    table = RichTable(title="datapipe run summary", box=box.SIMPLE, title_justify="left")
    table.add_column("step", no_wrap=True)
    for name in ("processed", "changed", "deleted", "failed", "seconds"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in stats:
        failed = f"[red]{s.failed}[/red]" if s.failed else "0"
        table.add_row(s.name, str(s.rows), str(s.changed), str(s.deleted), failed, f"{s.seconds:.2f}")
    return table


class RichProgress(RunStats):
    """A progress bar per step on a terminal (quiet otherwise) and a summary table at the end.

    ``console`` defaults to a stderr console; ``show_progress`` forces the bars on/off
    (default: only when the console is a terminal); ``show_summary`` prints the summary table.
    """

    def __init__(
        self,
        console: Optional[Console] = None,
        show_progress: Optional[bool] = None,
        show_summary: bool = True,
    ) -> None:
        super().__init__()
        self.console = console if console is not None else Console(stderr=True)
        self.show_progress = self.console.is_terminal if show_progress is None else show_progress
        self.show_summary = show_summary
        self._progress: Optional[Progress] = None
        self._tasks: Dict[str, TaskID] = {}

    def _make_progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("batches"),
            TextColumn("{task.fields[rows]} rows"),
            TextColumn("{task.fields[rate]:.0f} rows/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def on_run_start(self, steps: Sequence[ComputeStep]) -> None:
        super().on_run_start(steps)
        self._tasks = {}
        if self.show_progress:
            self._progress = self._make_progress()
            self._progress.start()

    def on_step_start(self, step: ComputeStep, total: int = 0) -> None:
        super().on_step_start(step, total)
        if self._progress is not None:
            self._tasks[step.name] = self._progress.add_task(
                step.name, total=total or None, rows=0, rate=0.0, failed=0
            )

    def _refresh(self, step: ComputeStep, **extra: Any) -> None:
        if self._progress is None or step.name not in self._tasks:
            return
        s = self.steps[step.name]
        self._progress.update(
            self._tasks[step.name],
            completed=s.batches,
            total=s.total_batches if (s.total_batches or s.finished is not None) else None,
            rows=s.rows,
            rate=s.rate,
            failed=s.failed,
            **extra,
        )

    def on_step_progress(self, step: ComputeStep, completed: int, total: int, **stats: Any) -> None:
        super().on_step_progress(step, completed, total, **stats)
        self._refresh(step)

    def on_step_error(self, step: ComputeStep, error: BaseException) -> None:
        super().on_step_error(step, error)
        self._refresh(step)

    def on_step_success(self, step: ComputeStep) -> None:
        super().on_step_success(step)
        s = self.steps[step.name]
        if not s.total_batches:
            s.total_batches = s.batches
        self._refresh(step)

    def _finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.show_summary and self.steps:
            self.console.print(summary_table(list(self.steps.values())))

    def on_run_success(self) -> None:
        super().on_run_success()
        self._finish()

    def on_run_error(self, error: BaseException) -> None:
        super().on_run_error(error)
        self._finish()
