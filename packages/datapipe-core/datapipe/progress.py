"""Progress display, as a ``RunCallback`` listener.

``RunStats`` (``datapipe.run_stats``) only counts (per step: batches, rows, changed, deleted, failed
batches, seconds). ``RichProgress`` adds a ``rich`` progress bar per step while a run is going, shown only when the
console is a terminal, and prints a summary table when the run ends::

    from datapipe.progress import RichProgress
    run_steps(ds, steps, RunConfig(callback=RichProgress()))

Library users get the same display as the ``datapipe`` command line.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

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

from datapipe.run_callback import StepLike
from datapipe.run_stats import RunStats, StepStats

__all__ = ["RichProgress", "RunStats", "StepStats", "summary_table"]  # RunStats, StepStats: re-exported


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

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        super().on_run_start(steps)
        self._tasks = {}
        if self.show_progress:
            self._progress = self._make_progress()
            self._progress.start()

    def on_step_start(self, step: StepLike, total: int = 0) -> None:
        super().on_step_start(step, total)
        if self._progress is not None:
            self._tasks[step.name] = self._progress.add_task(
                step.name, total=total or None, rows=0, rate=0.0, failed=0
            )

    def _refresh(self, step: StepLike, **extra: Any) -> None:
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

    def on_step_progress(self, step: StepLike, completed: int, total: int, **stats: Any) -> None:
        super().on_step_progress(step, completed, total, **stats)
        self._refresh(step)

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        super().on_step_error(step, error)
        self._refresh(step)

    def on_step_success(self, step: StepLike) -> None:
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
