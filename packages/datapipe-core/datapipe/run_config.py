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

    ``filters`` restricts transforms to keys whose columns equal the given values
    (a list value means "any of"); ``labels`` are attached to log records;
    ``fail_fast`` re-raises the first error of a step function;
    ``callback`` receives progress and lifecycle events.
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
