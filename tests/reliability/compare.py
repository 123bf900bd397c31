"""Compare the final state of two pipeline databases, table by table, data and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import crash_pipeline as cp
import pandas as pd

from datapipe.step.batch_transform import BaseBatchTransformStep


def frame_differences(a: pd.DataFrame, b: pd.DataFrame, columns: List[str]) -> int:
    """Rows present in only one of the frames (comparing every column in ``columns``), plus duplicates."""
    a = a[columns].reset_index(drop=True)
    b = b[columns].reset_index(drop=True)
    for c in columns:  # compare by value, not by the dtype each driver happened to return
        if a[c].dtype != b[c].dtype:
            a[c] = a[c].astype(object)
            b[c] = b[c].astype(object)
    merged = a.merge(b, on=columns, how="outer", indicator=True)
    dups = int(a.duplicated().sum() + b.duplicated().sum())
    return int((merged["_merge"] != "both").sum()) + dups


@dataclass
class Comparison:
    tables: List[str] = field(default_factory=list)
    data_differences: Dict[str, int] = field(default_factory=dict)
    meta_differences: Dict[str, int] = field(default_factory=dict)
    step_problems: Dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.data_differences.values()) + sum(self.meta_differences.values()) + len(self.step_problems)


def compare_pipelines(crashed: cp.Built, reference: cp.Built) -> Comparison:
    """Every table's data and live metadata (keys + hash); every step's pending/failed keys."""
    result = Comparison()
    for name in sorted(crashed.catalog.catalog):
        a = crashed.catalog.get_datatable(crashed.ds, name)
        b = reference.catalog.get_datatable(reference.ds, name)
        result.tables.append(name)
        da, db = a.get_data(), b.get_data()
        result.data_differences[name] = frame_differences(da, db, sorted(db.columns))
        cols = [*a.primary_keys, "hash"]
        result.meta_differences[name] = frame_differences(a.get_metadata(), b.get_metadata(), cols)
        # the metadata describes exactly the stored rows
        result.meta_differences[name] += frame_differences(a.get_metadata(), da, a.primary_keys)
    for step in crashed.steps:
        if not isinstance(step, BaseBatchTransformStep):
            continue
        counts = step.meta.get_counts()
        pending = step.meta.get_changed_idx_count(crashed.ds)
        if counts["failed"] or pending:
            result.step_problems[step.name] = f"{counts['failed']} failed, {pending} pending keys"
    return result
