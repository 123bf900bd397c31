"""A batch whose *write* fails (a result the output table refuses) is recorded with its keys, in
order with the other batches' progress; ``fail_fast`` stops after it (``datapipe.executor``'s halves).

The refusal comes either from Datapipe's checks (duplicate keys, before anything is sent) or from
the database itself (a NOT NULL column): on PostgreSQL a first run's write is then still in flight
while the next batch is prepared, and its failure is learnt afterwards.
"""

from __future__ import annotations

import re
from typing import Any, List

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String
from sqlalchemy.exc import IntegrityError

from datapipe.compute import Pipeline, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.executor import SingleThreadExecutor
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.step.batch_transform import BatchTransform
from datapipe.testing import assert_datatable_equal


def cols(*keys: str, nullable: bool = True) -> List[Column]:
    return [Column(k, Integer, primary_key=True) for k in keys] + [Column("a", String, nullable=nullable)]


def rows(ids: Any) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "a": [f"v{i}" for i in ids]})


class Recorder(RunCallback):
    def __init__(self) -> None:
        self.progress: List[Any] = []
        self.errors: List[str] = []

    def on_step_progress(self, step: Any, completed: int, total: int, **stats: Any) -> None:
        self.progress.append((completed, total, stats["rows"]))

    def on_step_error(self, step: Any, error: BaseException) -> None:
        self.errors.append(str(error))


def shaper(df: pd.DataFrame) -> pd.DataFrame:
    """Doubles the rows of the batch holding key 4 (a malformed result: duplicate keys)."""
    out = df.assign(a=df["a"] + "!")
    return pd.concat([out, out]) if 4 in set(df["id"]) else out


def nulls(df: pd.DataFrame) -> pd.DataFrame:
    """Returns no value for the batch holding key 4, which the output's NOT NULL column refuses."""
    return df.assign(a=None if 4 in set(df["id"]) else df["a"] + "!")


def _pipeline(ds: DataStore, make_catalog: Any, func: Any = shaper) -> Any:
    catalog = make_catalog(inp=cols("id"), out=cols("id", nullable=False))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"], chunk_size=2, name="s")]))
    ds.get_table("inp").store_chunk(rows(range(10)))
    return steps


def _state(ds: DataStore, steps: Any) -> Any:
    meta = steps[0].meta.get_metadata().sort_values("id")
    out = ds.get_table("out").get_data().sort_values("id").reset_index(drop=True)
    return out, meta[["id", "is_success"]].reset_index(drop=True), meta.set_index("id")["error"].notna().to_dict()


REFUSALS = [
    pytest.param(shaper, ValueError, "duplicate primary keys", id="checked"),
    pytest.param(nulls, IntegrityError, "null value|NOT NULL", id="by-the-database"),
]


@pytest.mark.parametrize("func, error, message", REFUSALS)
def test_a_failing_write_is_recorded_with_its_keys_and_progress_stays_in_order(ds, make_catalog, func, error, message):
    steps = _pipeline(ds, make_catalog, func)
    cb = Recorder()
    run_steps(ds, steps, RunConfig(callback=cb), executor=SingleThreadExecutor())
    out, meta, has_error = _state(ds, steps)
    assert_datatable_equal(ds.get_table("out"), rows([0, 1, 2, 3, 6, 7, 8, 9]).assign(a=lambda d: d["a"] + "!"))
    assert meta.set_index("id")["is_success"].to_dict() == {i: i not in (4, 5) for i in range(10)}
    assert {k for k, v in has_error.items() if v} == {4, 5}
    assert cb.progress == [(i, 5, 2) for i in range(1, 6)]
    assert len(cb.errors) == 1 and re.search(message, cb.errors[0])


@pytest.mark.parametrize("func, error, message", REFUSALS)
def test_fail_fast_in_a_write_stops_after_that_batch(ds, make_catalog, func, error, message):
    steps = _pipeline(ds, make_catalog, func)
    with pytest.raises(error, match=message):
        run_steps(ds, steps, RunConfig(fail_fast=True))
    out, meta, _ = _state(ds, steps)
    assert sorted(out["id"]) == [0, 1, 2, 3]  # batches before the failing one landed, none after it
    assert sorted(meta["id"]) == [0, 1, 2, 3, 4, 5] and meta.set_index("id").loc[[4, 5], "is_success"].eq(False).all()


def test_fail_fast_in_the_function_still_lands_the_write_before_it(ds, make_catalog):
    def func(df: pd.DataFrame) -> pd.DataFrame:
        if 4 in set(df["id"]):
            raise KeyError("boom")
        return df.assign(a=df["a"] + "!")

    steps = _pipeline(ds, make_catalog, func)
    with pytest.raises(KeyError, match="boom"):
        run_steps(ds, steps, RunConfig(fail_fast=True))
    out, meta, _ = _state(ds, steps)
    assert sorted(out["id"]) == [0, 1, 2, 3]
    assert meta.set_index("id")["is_success"].to_dict() == {0: True, 1: True, 2: True, 3: True, 4: False, 5: False}
