"""Runs started from the web view: one at a time, in a background thread, with live events.

``RunManager.start`` refuses a second run while one is going in this server, and refuses a step
whose run lock another process holds (``datapipe.meta.locks.step_is_running``), so a run is
shown, never duplicated. A run is ``run_steps`` with a ``RunCallback`` (``_Recorder``) that turns
every callback into an event dict, appended to ``Run.events`` and handed to each subscriber
(an ``asyncio.Queue`` per server-sent-event stream, fed through its loop, thread-safely).

Events: ``run_start {steps}``, ``step_start {step, total}``, ``step_progress {step, completed,
total, rows, changed, deleted}``, ``step_error {step, error}``, ``step_end {step, ...stats}``,
``run_end {status, error, summary}``. The last finished run of each step (when, how long, rows
changed/deleted, failed batches) is kept in memory for the step page and ``/metrics``: runs made
by other processes are seen through their locks and their effect on the counts, not their history.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from datapipe.compute import ComputeStep, DatapipeApp, run_steps
from datapipe.errors import mask_url
from datapipe.executor import Executor
from datapipe.meta.locks import step_is_running
from datapipe.run_callback import CompositeRunCallback, RunCallback, StepLike
from datapipe.run_config import RunConfig
from datapipe.run_stats import RunStats, StepStats
from datapipe.types import IndexDF

from .views import UiError

HISTORY = 50


@dataclass
class Run:
    id: int
    kind: str  # "run" (the steps' changed keys) or "failed" (one step's failed keys)
    steps: List[str]
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    status: str = "running"  # running | success | failed | error
    error: Optional[str] = None
    events: List[Dict[str, Any]] = field(default_factory=list)
    current_step: Optional[str] = None

    def describe(self, with_events: bool = False) -> Dict[str, Any]:
        d = {
            "id": self.id,
            "kind": self.kind,
            "steps": self.steps,
            "started": self.started,
            "finished": self.finished,
            "status": self.status,
            "error": self.error,
            "current_step": self.current_step,
        }
        if with_events:
            d["events"] = list(self.events)
        return d


def step_summary(s: StepStats) -> Dict[str, Any]:
    return {
        "step": s.name,
        "batches": s.batches,
        "total_batches": s.total_batches,
        "rows": s.rows,
        "changed": s.changed,
        "deleted": s.deleted,
        "failed": s.failed,
        "seconds": round(s.seconds, 3),
    }


class _Recorder(RunCallback):
    """Every callback of a run as an event on ``run`` (see the module docstring)."""

    def __init__(self, run: Run, emit: Callable[[Run, Dict[str, Any]], None]) -> None:
        self.run = run
        self.emit = emit
        self.stats = RunStats()

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        self.stats.on_run_start(steps)
        self.emit(self.run, {"type": "run_start", "steps": [s.name for s in steps]})

    def on_step_start(self, step: StepLike, total: int = 0) -> None:
        self.stats.on_step_start(step, total)
        self.run.current_step = step.name
        self.emit(self.run, {"type": "step_start", "step": step.name, "total": total})

    def on_step_progress(self, step: StepLike, completed: int, total: int, **stats: Any) -> None:
        self.stats.on_step_progress(step, completed, total, **stats)
        s = self.stats.steps[step.name]
        self.emit(self.run, {"type": "step_progress", **step_summary(s), "completed": completed, "total": total})

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        self.stats.on_step_error(step, error)
        self.emit(self.run, {"type": "step_error", "step": step.name, "error": mask_url(_one_line(error))})

    def on_step_success(self, step: StepLike) -> None:
        self.stats.on_step_success(step)
        self.emit(self.run, {"type": "step_end", **step_summary(self.stats.steps[step.name])})

    def on_run_error(self, error: BaseException) -> None:
        self.stats.on_run_error(error)


class _ErrorsOnly(RunCallback):
    """Forwards only batch errors: ``run_idx`` reports a start and an end per call, and a run of
    failed keys makes one call per chunk but is one step run."""

    def __init__(self, target: RunCallback) -> None:
        self.target = target

    def on_step_error(self, step: Any, error: BaseException) -> None:
        self.target.on_step_error(step, error)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class RunManager:
    """Starts runs in a background thread and fans their events out to subscribers."""

    def __init__(
        self, app: DatapipeApp, extra_callbacks: Sequence[RunCallback] = (), executor: Optional[Executor] = None
    ) -> None:
        self.app = app
        self.extra_callbacks = list(extra_callbacks)
        self.executor = executor
        self.runs: Dict[int, Run] = {}
        self.last_step_runs: Dict[str, Dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._active: Optional[Run] = None
        self._thread: Optional[threading.Thread] = None
        self._subscribers: Dict[int, List[Tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}

    # ------------------------------------------------------------------ state

    @property
    def active(self) -> Optional[Run]:
        return self._active

    def running_steps(self) -> List[str]:
        run = self._active
        return [run.current_step] if run is not None and run.current_step else []

    def get(self, run_id: int) -> Run:
        if run_id not in self.runs:
            raise UiError(f"unknown run {run_id}; runs: {sorted(self.runs)}", 404)
        return self.runs[run_id]

    # ------------------------------------------------------------------ starting

    def start(self, steps: Sequence[ComputeStep], kind: str = "run") -> Run:
        """Start a run of ``steps`` (``kind="failed"``: the failed keys of the one step given)."""
        with self._lock:
            if self._active is not None:
                raise UiError(f"run {self._active.id} is still going (steps {self._active.steps}); wait for it", 409)
            busy = [s.name for s in steps if step_is_running(self.app.ds.meta_dbconn, s.name)]
            if busy:
                raise UiError(f"step(s) {busy} are being run by another process; wait for that run to finish", 409)
            run = Run(next(self._ids), kind, [s.name for s in steps])
            self.runs[run.id] = run
            for old in sorted(self.runs)[:-HISTORY]:
                self.runs.pop(old)
            self._active = run
            target = self._run_failed if kind == "failed" else self._run_steps
            self._thread = threading.Thread(target=self._main, args=(run, target, list(steps)), daemon=True)
            self._thread.start()
        return run

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait for the current run's thread (tests and shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _main(self, run: Run, target: Callable[..., None], steps: List[ComputeStep]) -> None:
        recorder = _Recorder(run, self._emit)
        config = RunConfig(callback=CompositeRunCallback([recorder, *self.extra_callbacks]))
        try:
            target(steps, config)
            run.status = "failed" if recorder.stats.failed_steps else "success"
        except BaseException as e:  # noqa: BLE001 - reported to the page, the server goes on
            run.status = "error"
            run.error = mask_url(_one_line(e))
        finally:
            run.finished = time.time()
            run.current_step = None
            summary = [step_summary(s) for s in recorder.stats.steps.values()]
            for s in summary:
                self.last_step_runs[s["step"]] = {**s, "run": run.id, "finished": run.finished, "status": run.status}
            with self._lock:
                self._active = None
            self._emit(run, {"type": "run_end", "status": run.status, "error": run.error, "summary": summary})

    def _run_steps(self, steps: List[ComputeStep], config: RunConfig) -> None:
        run_steps(self.app.ds, steps, run_config=config, executor=self.executor)

    def _run_failed(self, steps: List[ComputeStep], config: RunConfig) -> None:
        """Process the failed keys of ``steps[0]`` again, in batches of its ``chunk_size``."""
        (step,) = steps
        callback = config.callback
        assert callback is not None
        callback.on_run_start(steps)
        idx = step.meta.get_failed_idx()  # type: ignore[attr-defined]
        size = int(getattr(step, "chunk_size", 1000))
        chunks = [IndexDF(idx.iloc[i : i + size].reset_index(drop=True)) for i in range(0, len(idx), size)]
        callback.on_step_start(step, len(chunks))
        per_chunk = RunConfig(callback=_ErrorsOnly(callback))  # one start/success for all chunks: ours
        for n, chunk in enumerate(chunks, 1):
            changes = step.run_idx(self.app.ds, chunk, per_chunk)
            changed = sum(len(v) for v in changes.changes.values())
            deleted = getattr(changes, "deleted_count", 0)
            callback.on_step_progress(step, n, len(chunks), rows=len(chunk), changed=changed - deleted, deleted=deleted)
        callback.on_step_success(step)
        callback.on_run_success()

    # ------------------------------------------------------------------ events

    def _emit(self, run: Run, event: Dict[str, Any]) -> None:
        event = {**event, "run": run.id, "at": time.time()}
        with self._lock:
            run.events.append(event)
            subscribers = list(self._subscribers.get(run.id, []))
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the subscriber's loop is closed
                pass

    def subscribe(self, run_id: int) -> Tuple[List[Dict[str, Any]], asyncio.Queue]:
        """Events so far, and a queue that receives the following ones (call from the event loop)."""
        run = self.get(run_id)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            past = list(run.events)
            self._subscribers.setdefault(run_id, []).append((asyncio.get_running_loop(), queue))
        return past, queue

    def unsubscribe(self, run_id: int, queue: asyncio.Queue) -> None:
        with self._lock:
            subs = self._subscribers.get(run_id, [])
            self._subscribers[run_id] = [(lp, q) for lp, q in subs if q is not queue]
