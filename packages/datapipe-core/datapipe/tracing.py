"""OpenTelemetry spans for runs, steps and batches (``pip install datapipe-core[otel]``).

``OtelRunCallback`` is a ``RunCallback`` that opens a ``datapipe.run`` span per run, a
``datapipe.step`` span per step (child of the run) and a ``datapipe.batch`` span per finished
batch (child of the step; it covers the time since the step's previous batch finished, which
is the batch's processing time in the single-thread executor and its completion interval under
parallel executors). Failed batches are recorded as exceptions on the step span.

Without ``opentelemetry`` installed nothing is imported and ``otel_available()`` is False; the
``datapipe`` CLI adds this callback only when it is. Without a configured SDK the spans are
OpenTelemetry's non-recording no-ops.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

from datapipe.run_callback import RunCallback, StepLike

try:  # pragma: no branch
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - the optional dependency is absent
    trace = None  # type: ignore[assignment]


def otel_available() -> bool:
    """True when ``opentelemetry-api`` is importable."""
    return trace is not None


class OtelRunCallback(RunCallback):
    """Emits OpenTelemetry spans for a run; ``tracer`` defaults to ``trace.get_tracer("datapipe")``."""

    def __init__(self, tracer: Optional[Any] = None) -> None:
        if trace is None:
            raise ImportError("OtelRunCallback needs OpenTelemetry: pip install 'datapipe-core[otel]'")
        self.tracer = tracer if tracer is not None else trace.get_tracer("datapipe")
        self._run: Optional[Any] = None
        self._steps: Dict[str, Any] = {}
        self._last: Dict[str, int] = {}

    def _context(self, span: Optional[Any]) -> Any:
        return trace.set_span_in_context(span) if span is not None else None

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        self._run = self.tracer.start_span(
            "datapipe.run", attributes={"datapipe.steps": [s.name for s in steps]}
        )
        self._steps = {}

    def on_step_start(self, step: StepLike, total: int = 0) -> None:
        self._steps[step.name] = self.tracer.start_span(
            "datapipe.step",
            context=self._context(self._run),
            attributes={"datapipe.step": step.name, "datapipe.batches.total": total},
        )
        self._last[step.name] = time.time_ns()

    def on_step_progress(self, step: StepLike, completed: int, total: int, **stats: Any) -> None:
        parent = self._steps.get(step.name)
        now = time.time_ns()
        attributes = {"datapipe.step": step.name, "datapipe.batch": completed}
        attributes.update({f"datapipe.{k}": int(v) for k, v in stats.items() if isinstance(v, (int, float))})
        span = self.tracer.start_span(
            "datapipe.batch",
            context=self._context(parent),
            start_time=self._last.get(step.name, now),
            attributes=attributes,
        )
        span.end(end_time=now)
        self._last[step.name] = now

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        span = self._steps.get(step.name)
        if span is not None:
            span.record_exception(error)

    def on_step_success(self, step: StepLike) -> None:
        span = self._steps.pop(step.name, None)
        if span is not None:
            span.end()

    def on_run_success(self) -> None:
        self._end(None)

    def on_run_error(self, error: BaseException) -> None:
        self._end(error)

    def _end(self, error: Optional[BaseException]) -> None:
        for span in self._steps.values():  # steps interrupted by the error
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()
        self._steps = {}
        if self._run is not None:
            if error is not None:
                self._run.record_exception(error)
                self._run.set_status(Status(StatusCode.ERROR, str(error)))
            self._run.end()
            self._run = None
