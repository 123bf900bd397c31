"""What a run did: the value ``run_steps`` and ``run_pipeline`` return.

A failing batch does not stop a run (unless ``fail_fast``): its keys are recorded as failed
and retried next time. So that a caller can still see and act on the failure, the step that
records it attaches two things to the exception before reporting it to the run callback
(``attach_failure``): the batch's keys and the formatted traceback. Both survive pickling, so
an executor that runs batches elsewhere (Ray) hands them back with the exception.

``RunResultCollector`` is a ``RunCallback`` that ``run_steps`` always attaches; at the end of
the run it turns its counts into a ``RunResult``::

    result = run_steps(ds, steps)
    for step in result.failed_steps:
        print(step.name, step.failed_key_count, step.errors[0].message)
        print(step.errors[0].traceback)
    result.raise_for_failures()   # or: run_steps(..., fail_fast=True)
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from datapipe.run_callback import CompositeRunCallback, RunCallback, StepLike
from datapipe.run_config import RunConfig
from datapipe.run_stats import RunStats

MAX_ERRORS = 5  # errors kept per step; the count of failed keys is always exact
MAX_KEYS = 5  # failing keys kept per error
MAX_FRAMES = 8  # frames of the user's code shown without --debug

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def attach_failure(error: BaseException, keys: Optional[pd.DataFrame]) -> None:
    """Attach the batch ``keys`` (first few, and their count) and the traceback text to ``error``."""
    try:
        if keys is not None:
            error.datapipe_keys = keys.head(MAX_KEYS).reset_index(drop=True)  # type: ignore[attr-defined]
            error.datapipe_key_count = len(keys)  # type: ignore[attr-defined]
        error.datapipe_traceback = "".join(traceback.format_exception(error))  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception type that refuses attributes: keep what it has
        pass


def user_frames(error: BaseException) -> str:
    """The traceback of ``error`` from the first frame outside Datapipe on (the user's function)."""
    tb = error.__traceback__
    frames = traceback.extract_tb(tb) if tb is not None else traceback.StackSummary()
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(_PACKAGE_DIR)]
    if not own:
        return ""
    first = list(frames).index(own[0])
    lines = traceback.format_list(list(frames)[first:])
    if len(lines) > MAX_FRAMES:  # keep the user's function and where it finally raised
        skipped = len(lines) - MAX_FRAMES + 1
        lines = lines[:2] + [f"  ... {skipped} frame(s) ...\n"] + lines[-(MAX_FRAMES - 3) :]
    return "".join(lines)


@dataclass
class StepFailure:
    """One failed batch: the exception text, some of the batch's keys, and tracebacks."""

    message: str
    keys: pd.DataFrame
    key_count: int
    traceback: str = ""
    user_traceback: str = ""

    @classmethod
    def from_exception(cls, error: BaseException) -> StepFailure:
        keys = getattr(error, "datapipe_keys", None)
        full = getattr(error, "datapipe_traceback", "") or "".join(traceback.format_exception(error))
        return cls(
            message=f"{type(error).__name__}: {error}",
            keys=keys if isinstance(keys, pd.DataFrame) else pd.DataFrame(),
            key_count=int(getattr(error, "datapipe_key_count", 0)),
            traceback=full,
            user_traceback=user_frames(error) or _user_part(full),
        )


def _user_part(full: str) -> str:
    """The frames of a formatted traceback (e.g. from another process) that are outside Datapipe."""
    lines = full.splitlines(keepends=True)
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("File ") and _PACKAGE_DIR not in stripped:
            frames = [ln for ln in lines[n:] if ln.startswith("  ")]
            return "".join(frames)
    return ""


@dataclass
class StepResult:
    """What one step did in one run.

    ``processed`` keys handed to the step, ``changed`` and ``deleted`` output rows,
    ``failed_batches`` and ``failed_keys`` (keys of failed batches), ``seconds``, and the
    first few ``errors``.
    """

    name: str
    processed: int = 0
    changed: int = 0
    deleted: int = 0
    failed_batches: int = 0
    failed_keys: int = 0
    seconds: float = 0.0
    errors: List[StepFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_batches == 0


@dataclass
class RunResult:
    """Per-step results of a run, in run order; ``result["step_name"]`` looks one up."""

    steps: List[StepResult] = field(default_factory=list)

    def __getitem__(self, name: str) -> StepResult:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step {name!r} in this run; steps: {[s.name for s in self.steps]}")

    @property
    def ok(self) -> bool:
        """True when no batch failed."""
        return all(s.ok for s in self.steps)

    @property
    def failed_steps(self) -> List[StepResult]:
        return [s for s in self.steps if not s.ok]

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.steps)

    def raise_for_failures(self) -> None:
        """Raise ``RunFailed`` naming every step with failed batches (does nothing when ``ok``)."""
        if not self.ok:
            raise RunFailed(self)

    def __str__(self) -> str:
        parts = [
            f"{s.name}: {s.processed} processed, {s.changed} changed, {s.deleted} deleted"
            + (f", {s.failed_keys} failed" if s.failed_keys else "")
            for s in self.steps
        ]
        return "; ".join(parts) or "no steps"


class RunFailed(Exception):
    """Raised by ``RunResult.raise_for_failures``; ``result`` holds the details."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        detail = "; ".join(
            f"{s.name}: {s.failed_keys} key(s) failed, e.g. {s.errors[0].message if s.errors else '?'}"
            for s in result.failed_steps
        )
        super().__init__(f"failed batches in {detail}")


class RunResultCollector(RunStats):
    """``RunStats`` that also keeps the failing keys and tracebacks; ``result()`` builds the ``RunResult``."""

    def __init__(self) -> None:
        super().__init__()
        self.order: List[str] = []
        self.step_errors: Dict[str, List[StepFailure]] = {}
        self.failed_keys: Dict[str, int] = {}

    def on_run_start(self, steps: Sequence[StepLike]) -> None:
        super().on_run_start(steps)
        self.order = [s.name for s in steps]
        self.step_errors = {}
        self.failed_keys = {}

    def on_step_error(self, step: StepLike, error: BaseException) -> None:
        super().on_step_error(step, error)
        found = StepFailure.from_exception(error)
        self.failed_keys[step.name] = self.failed_keys.get(step.name, 0) + found.key_count
        errors = self.step_errors.setdefault(step.name, [])
        if len(errors) < MAX_ERRORS:
            errors.append(found)

    def result(self) -> RunResult:
        names = self.order + [n for n in self.steps if n not in self.order]
        steps = []
        for name in names:
            s = self.steps.get(name)
            if s is None:
                steps.append(StepResult(name))
                continue
            steps.append(
                StepResult(
                    name=name,
                    processed=s.rows,
                    changed=s.changed,
                    deleted=s.deleted,
                    failed_batches=s.failed,
                    failed_keys=self.failed_keys.get(name, 0),
                    seconds=s.seconds,
                    errors=list(self.step_errors.get(name, [])),
                )
            )
        return RunResult(steps)


def format_failures(result: RunResult, debug: bool = False, max_keys: int = MAX_KEYS) -> str:
    """The failed steps of ``result`` as text: keys, exception and traceback (full with ``debug``)."""
    out: List[str] = []
    for s in result.failed_steps:
        out.append(f"step {s.name}: {s.failed_keys} key(s) failed in {s.failed_batches} batch(es)")
        for e in s.errors[:1] if not debug else s.errors:
            if len(e.keys):
                shown = ", ".join(_key_text(r) for r in e.keys.head(max_keys).to_dict("records"))
                more = f" (and {e.key_count - min(len(e.keys), max_keys)} more)" if e.key_count > max_keys else ""
                out.append(f"  keys: {shown}{more}")
            out.append(f"  {e.message}")
            tb = e.traceback if debug else e.user_traceback
            if tb:
                title = "traceback" if debug else "traceback (your code)"
                out.append(f"  {title}:")
                out.extend("    " + line for line in tb.rstrip().splitlines())
    return "\n".join(out)


def _key_text(record: Dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in record.items()) + "}"


def with_result_collector(
    run_config: Optional[RunConfig], fail_fast: Optional[bool] = None
) -> Tuple[RunConfig, RunResultCollector]:
    """A copy of ``run_config`` whose callback also feeds a new ``RunResultCollector``."""
    collector = RunResultCollector()
    base = run_config if run_config is not None else RunConfig()
    callbacks: List[RunCallback] = [collector] if base.callback is None else [collector, base.callback]
    changes: Dict[str, Any] = {"callback": CompositeRunCallback(callbacks)}
    if fail_fast is not None:
        changes["fail_fast"] = fail_fast
    return dataclasses.replace(base, **changes), collector
