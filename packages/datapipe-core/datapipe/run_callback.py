"""Progress and lifecycle listeners.

A ``RunCallback`` receives events from ``run_steps``/``run_pipeline`` and the executors.
Every method is a no-op, so a listener overrides only what it needs. Listeners must not
raise: an exception in a callback is logged and ignored so it cannot fail a run.
"""

from __future__ import annotations

import logging
from typing import Any, List, Protocol, Sequence

logger = logging.getLogger("datapipe.run_callback")


class StepLike(Protocol):
    """What a listener may rely on about a step: its name. Every ``datapipe.compute.ComputeStep`` is one;
    listeners are typed against this protocol so that this module stays below ``datapipe.compute``."""

    @property
    def name(self) -> str: ...


class RunCallback:
    """Listener for run events; subclass it and override the methods you need.

    Pass it as ``RunConfig(callback=...)``, or contribute it from a plugin with the
    ``datapipe_run_callbacks`` hook (the CLI attaches those). ``datapipe.progress.RichProgress``
    is the CLI's progress display; ``datapipe.run_result.RunResultCollector`` builds run results.
    """

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        """Called once before the first step of a run, with every step that will run."""

    def on_step_start(self, step: StepLike, total: int = 0) -> None:
        """Called when a step starts; ``total`` is the number of batches it will process (0 if unknown)."""

    def on_step_progress(self, step: StepLike, completed: int, total: int, **stats: Any) -> None:
        """Called after each batch; ``completed`` of ``total`` batches are done.

        ``stats`` may carry ``rows`` (keys in the batch), ``changed``, ``deleted`` and ``failed``.
        """

    def on_step_success(self, step: StepLike) -> None:
        """Called when a step has processed every batch (failed batches included)."""

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        """Called when a batch of a step fails, or the step itself fails."""

    def on_run_success(self) -> None:
        """Called when every step has finished."""

    def on_run_error(self, error: BaseException) -> None:
        """Called when a run stops because of ``error``."""


class CompositeRunCallback(RunCallback):
    """Forwards every event to each of ``callbacks``; an exception in one does not stop the others."""

    def __init__(self, callbacks: List[RunCallback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for cb in self.callbacks:
            try:
                getattr(cb, method)(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a listener must never fail a run
                logger.exception("run callback %r failed in %s", cb, method)

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        self._each("on_run_start", steps)

    def on_step_start(self, step: StepLike, total: int = 0) -> None:
        self._each("on_step_start", step, total)

    def on_step_progress(self, step: StepLike, completed: int, total: int, **stats: Any) -> None:
        self._each("on_step_progress", step, completed, total, **stats)

    def on_step_success(self, step: StepLike) -> None:
        self._each("on_step_success", step)

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        self._each("on_step_error", step, error)

    def on_run_success(self) -> None:
        self._each("on_run_success")

    def on_run_error(self, error: BaseException) -> None:
        self._each("on_run_error", error)
