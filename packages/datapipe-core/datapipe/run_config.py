"""Per-run options passed down to every step and store call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import numpy as np
import pandas as pd

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


def filter_rows(df: pd.DataFrame, filters: Union[LabelDict, List[LabelDict], None]) -> pd.DataFrame:
    """The rows of ``df`` matching ``filters``: ``{column: value}`` (a list value means "any of"), or a
    list of such dicts (any of them). Filter columns that ``df`` lacks are ignored, as in the change query."""
    if not filters:
        return df
    alternatives = [filters] if isinstance(filters, dict) else list(filters)
    keep = np.zeros(len(df), dtype=bool)
    for flt in alternatives:
        match = np.ones(len(df), dtype=bool)
        for column, value in flt.items():
            if column not in df.columns:
                continue
            values = list(value) if isinstance(value, (list, tuple, set, pd.Series)) else [value]
            match &= df[column].isin(values).to_numpy()
        keep |= match
    return df if keep.all() else df[keep]
