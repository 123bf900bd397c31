"""Per-run options passed down to every step and store call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional

from datapipe.settings import settings

if TYPE_CHECKING:
    from datapipe.run_callback import RunCallback

LabelDict = Dict[str, Any]


@dataclass
class RunConfig:
    """What a run should do.

    Args:
        filters: restrict batch steps to keys whose columns equal the given values
            (``{"user_id": 7}``; a list value means "any of"). A filtered run does not advance
            the steps' change watermarks.
        labels: attached to log records and spans (the step name is added per step).
        fail_fast: re-raise the first error of a step function instead of recording the batch
            as failed and going on. Default: ``DATAPIPE_FAIL_FAST`` (off).
        callback: a ``RunCallback`` receiving progress and lifecycle events.
    """

    filters: LabelDict = field(default_factory=dict)
    labels: LabelDict = field(default_factory=dict)
    fail_fast: bool = field(default_factory=lambda: settings.fail_fast)
    callback: Optional[RunCallback] = None

    @classmethod
    def add_labels(cls, rc: Optional[RunConfig], labels: LabelDict) -> RunConfig:
        if rc is None:
            return RunConfig(labels=dict(labels))
        return RunConfig(
            filters=rc.filters, labels={**rc.labels, **labels}, fail_fast=rc.fail_fast, callback=rc.callback
        )
