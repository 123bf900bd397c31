"""Behaviours of datapipe 0.15 that pipelines moving over rely on (issue 11, part A).

Each test states the 0.15 behaviour it checks; metadata tests run on SQLite and PostgreSQL
(the ``ds``/``dbconn`` fixtures).
"""

import pickle
from typing import Any, List, Tuple

import cloudpickle
import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import (
    Catalog,
    Pipeline,
    Table,
    build_compute,
    run_steps,
    run_steps_changelist,
)
from datapipe.datatable import DataStore
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.step.batch_generate import BatchGenerate, do_batch_generate
from datapipe.step.batch_transform import BatchTransform, DatatableBatchTransform
from datapipe.step.datatable_transform import DatatableTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.store.database import TableStoreDB
from datapipe.tests.util import assert_datatable_equal, assert_df_equal, assert_ts_contains
from datapipe.types import ChangeList, OutputSpec


def cols(*keys: str, data: Tuple[str, ...] = ("v",), key_type: Any = Integer) -> List[Column]:
    return [Column(k, key_type, primary_key=True) for k in keys] + [Column(c, Integer) for c in data]


# ---------------------------------------------------------------- transform_keys=[]


def test_empty_transform_keys_run_one_global_batch(ds, make_catalog):
    catalog = make_catalog(item=cols("id"), total=[Column("name", String, primary_key=True), Column("n", Integer)])
    calls = []

    def count_all(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(df))
        return pd.DataFrame({"name": ["all"], "n": [int(df["v"].sum())]})

    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(count_all, ["item"], ["total"], transform_keys=[], chunk_size=2)])
    )
    item = catalog.get_datatable(ds, "item")
    item.store_chunk(pd.DataFrame({"id": range(5), "v": [1] * 5}))
    run_steps(ds, steps)
    assert calls == [5]  # one batch over every row, whatever chunk_size says
    assert_datatable_equal(ds.get_table("total"), pd.DataFrame({"name": ["all"], "n": [5]}))
    run_steps(ds, steps)
    assert calls == [5]  # nothing changed: not called
    item.store_chunk(pd.DataFrame({"id": [9], "v": [10]}))
    item.delete_by_idx(pd.DataFrame({"id": [0]}))
    run_steps(ds, steps)
    assert calls == [5, 5]
    assert_datatable_equal(ds.get_table("total"), pd.DataFrame({"name": ["all"], "n": [14]}))
    assert steps[0].meta.get_changed_idx_count(ds) == 0


# ---------------------------------------------------------------- assert_ts_contains


def test_assert_ts_contains_takes_a_table_store(dbconn):
    store = TableStoreDB(dbconn, "t", cols("id"), create_table=True)
    store.insert_rows(pd.DataFrame({"id": [1, 2, 3], "v": [10, 20, 30]}))
    assert assert_ts_contains(store, pd.DataFrame({"id": [1, 3], "v": [10, 30]}))
    with pytest.raises(AssertionError):
        assert_ts_contains(store, pd.DataFrame({"id": [1], "v": [11]}))


# ---------------------------------------------------------------- step names


def test_step_names_equal_those_of_015(ds, make_catalog):
    """Names observed by running datapipe-core 0.15.0's build_compute on the same declarations."""
    catalog = make_catalog(item=cols("id"), a=cols("id"), b=cols("id"), ab=cols("id", "k"))

    def gen() -> Any:
        yield pd.DataFrame({"id": [1], "v": [1]})

    def f(item: pd.DataFrame, a: pd.DataFrame) -> Any:
        return item, item

    def g(ds: Any, idx: Any, input_dts: Any, run_config: Any, kwargs: Any) -> Any:
        return input_dts[0].get_data(idx)

    def h(ds: Any, input_dts: Any, output_dts: Any, run_config: Any, kwargs: Any) -> None:
        pass

    def double(df: pd.DataFrame) -> pd.DataFrame:
        return df

    pipeline = Pipeline(
        [
            BatchGenerate(gen, outputs=["item"]),
            UpdateExternalTable("item"),
            BatchTransform(f, ["item", "a"], [OutputSpec("ab", keys={"id": "id"}), "b"], transform_keys=["id"]),
            DatatableBatchTransform(g, ["a"], ["b"]),
            DatatableTransform(h, ["a"], ["b"]),
            BatchTransform(double, ["item"], ["a"]),
        ]
    )
    names = [s.name for s in build_compute(ds, catalog, pipeline)]
    assert names == [
        "gen_6e349de61b",
        "update_item_75abd0d249",
        "f_c250facf9f",
        "g_e3a1315197",
        "h_fcba226927",
        "double_52d0b7fb19",
    ]


# ---------------------------------------------------------------- injected parameters


def test_injected_parameters(ds, make_catalog):
    catalog = make_catalog(src=cols("id"), out=cols("id"))
    got: dict = {}

    def gen(ds: DataStore) -> Any:
        got["gen_ds"] = ds
        yield pd.DataFrame({"id": [1, 2], "v": [1, 2]})

    def tr(df: pd.DataFrame, idx: pd.DataFrame, ds: DataStore, run_config: RunConfig) -> pd.DataFrame:
        got.setdefault("calls", []).append((sorted(idx["id"]), ds, run_config))
        return df

    steps = build_compute(ds, catalog, Pipeline([BatchGenerate(gen, ["src"]), BatchTransform(tr, ["src"], ["out"])]))
    config = RunConfig(labels={"who": "test"})
    run_steps(ds, steps, config)
    assert got["gen_ds"] is ds
    keys, got_ds, got_config = got["calls"][0]
    assert keys == [1, 2] and got_ds is ds and got_config.labels["who"] == "test"
    src = catalog.get_datatable(ds, "src")
    changed = src.store_chunk(pd.DataFrame({"id": [2], "v": [5]}))
    run_steps_changelist(ds, steps[1:], ChangeList.create("src", changed), config)
    assert got["calls"][1][0] == [2] and got["calls"][1][1] is ds
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": [1, 2], "v": [1, 5]}))


# ---------------------------------------------------------------- do_batch_generate errors


def test_batch_generate_error_without_fail_fast_keeps_what_was_yielded(ds, make_catalog):
    catalog = make_catalog(gen=cols("id"))
    dt = catalog.get_datatable(ds, "gen")
    dt.store_chunk(pd.DataFrame({"id": [7, 8], "v": [0, 0]}))  # would be stale after a complete run

    def flaky() -> Any:
        yield pd.DataFrame({"id": [1], "v": [1]})
        raise RuntimeError("source went away")

    do_batch_generate(flaky, ds, [dt], run_config=RunConfig(fail_fast=False))
    assert_datatable_equal(dt, pd.DataFrame({"id": [1, 7, 8], "v": [1, 0, 0]}))
    with pytest.raises(RuntimeError, match="source went away"):
        do_batch_generate(flaky, ds, [dt], run_config=RunConfig(fail_fast=True))
    assert_datatable_equal(dt, pd.DataFrame({"id": [1, 7, 8], "v": [1, 0, 0]}))


# ---------------------------------------------------------------- filters on non-key columns


def test_run_filter_on_a_non_key_column_restricts_input_rows(ds, make_catalog):
    catalog = make_catalog(item=cols("id", data=("grp", "v")), out=cols("id"))
    seen = []

    def plus(df: pd.DataFrame) -> pd.DataFrame:
        seen.append(sorted(df["grp"].unique()))
        return df[["id"]].assign(v=df["v"] + 100)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(plus, ["item"], ["out"])]))
    catalog.get_datatable(ds, "item").store_chunk(pd.DataFrame({"id": [1, 2, 3], "grp": [1, 2, 1], "v": [1, 2, 3]}))
    run_steps(ds, steps, RunConfig(filters={"grp": 1}))
    assert seen == [[1]]
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": [1, 3], "v": [101, 103]}))
    run_steps(ds, steps)  # the unfiltered run processes the rest, and only the rest
    assert seen == [[1], [2]]
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": [1, 2, 3], "v": [101, 102, 103]}))


def test_filtered_batch_generate_deletes_stale_rows_inside_the_filter_only(ds, make_catalog):
    catalog = make_catalog(gen=cols("id", data=("grp", "v")))
    dt = catalog.get_datatable(ds, "gen")
    dt.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4], "grp": [1, 1, 2, 2], "v": [0, 0, 0, 0]}))

    def group_one_only() -> Any:
        yield pd.DataFrame({"id": [1], "grp": [1], "v": [5]})

    do_batch_generate(group_one_only, ds, [dt], run_config=RunConfig(filters={"grp": 1}))
    expected = pd.DataFrame({"id": [1, 3, 4], "grp": [1, 2, 2], "v": [5, 0, 0]})
    assert_datatable_equal(dt, expected)  # 2 (group 1, not yielded) deleted; group 2 kept


# ---------------------------------------------------------------- store_chunk result, key dtypes


def test_store_chunk_returns_deleted_keys_too(ds, make_catalog):
    dt = make_catalog(t=cols("id")).get_datatable(ds, "t")
    dt.store_chunk(pd.DataFrame({"id": [1, 2, 3], "v": [1, 2, 3]}))
    changed = dt.store_chunk(pd.DataFrame({"id": [1, 2], "v": [1, 20]}), processed_idx=pd.DataFrame({"id": [1, 2, 3]}))
    assert sorted(changed["id"]) == [2, 3]  # 2 changed, 3 deleted, 1 unchanged


def test_object_key_column_of_integers_is_converted(ds, make_catalog):
    dt = make_catalog(t=cols("id", "k")).get_datatable(ds, "t")
    exploded = pd.DataFrame({"id": [1, 2], "k": [[10, 11], [12]], "v": [1, 2]}).explode("k")
    assert exploded["k"].dtype == object
    dt.store_chunk(exploded)
    assert_df_equal(
        dt.get_data(), pd.DataFrame({"id": [1, 1, 2], "k": [10, 11, 12], "v": [1, 1, 2]}), index_cols=["id", "k"]
    )
    with pytest.raises(ValueError, match="key column 'k'"):
        dt.store_chunk(pd.DataFrame({"id": [3], "k": ["x"], "v": [3]}).astype({"k": object}))
    assert len(dt.get_data()) == 3


# ---------------------------------------------------------------- run_changelist over a cycle


def _cycle(ds: DataStore, make_catalog: Any, x: str, y: str) -> List[Any]:
    catalog = make_catalog(**{x: cols("id"), y: cols("id")})

    def copy(df: pd.DataFrame) -> pd.DataFrame:
        return df

    def inc(df: pd.DataFrame) -> pd.DataFrame:  # y -> x: count up to 3, then a fixed point
        return df.assign(v=df["v"].clip(upper=2) + 1)

    pipeline = Pipeline([BatchTransform(copy, [x], [y]), BatchTransform(inc, [y], [x])])
    steps = build_compute(ds, catalog, pipeline)
    return steps


def test_changelist_over_a_cycle_equals_full_runs(ds, make_catalog):
    rows = pd.DataFrame({"id": [1, 2, 3], "v": [0, 5, 2]})
    by_changelist = _cycle(ds, make_catalog, "x1", "y1")
    by_full_runs = _cycle(ds, make_catalog, "x2", "y2")
    changed = ds.get_table("x1").store_chunk(rows)
    run_steps_changelist(ds, by_changelist, ChangeList.create("x1", changed))
    ds.get_table("x2").store_chunk(rows)
    for _ in range(4):  # full runs until nothing changes
        run_steps(ds, by_full_runs)
    assert sum(s.meta.get_changed_idx_count(ds) for s in by_full_runs) == 0
    expected = pd.DataFrame({"id": [1, 2, 3], "v": [3, 3, 3]})
    for a, b in (("x1", "x2"), ("y1", "y2")):
        assert_datatable_equal(ds.get_table(b), expected)
        assert_datatable_equal(ds.get_table(a), ds.get_table(b).get_data())
    assert sum(s.meta.get_changed_idx_count(ds) for s in by_changelist) == 0


# ---------------------------------------------------------------- callbacks


class Recorder(RunCallback):
    def __init__(self, raise_in: str = "") -> None:
        self.events: List[Tuple[str, str]] = []
        self.raise_in = raise_in

    def _log(self, event: str, name: str = "") -> None:
        self.events.append((event, name))
        if event == self.raise_in:
            raise RuntimeError(f"callback broke in {event}")

    def on_run_start(self, steps: Any) -> None:
        self._log("run_start")

    def on_step_start(self, step: Any, total: int = 0) -> None:
        self._log("start", step.name)

    def on_step_success(self, step: Any) -> None:
        self._log("success", step.name)

    def on_step_error(self, step: Any, error: BaseException) -> None:
        self._log("error", step.name)

    def on_run_success(self) -> None:
        self._log("run_success")

    def on_run_error(self, error: BaseException) -> None:
        self._log("run_error")


def _every_kind(ds: DataStore, make_catalog: Any, fail: bool = False) -> List[Any]:
    catalog = make_catalog(ext=cols("id"), gen=cols("id"), a=cols("id"), b=cols("id"), c=cols("id"))

    def gen() -> Any:
        yield pd.DataFrame({"id": [1, 2], "v": [1, 2]})

    def tr(df: pd.DataFrame) -> pd.DataFrame:
        if fail:
            raise ValueError("bad batch")
        return df

    def dbt(ds: Any, idx: Any, input_dts: Any, run_config: Any, kwargs: Any) -> Any:
        return input_dts[0].get_data(idx)

    def dt_func(ds: Any, input_dts: Any, output_dts: Any, run_config: Any, kwargs: Any) -> None:
        output_dts[0].store_chunk(input_dts[0].get_data())

    pipeline = Pipeline(
        [
            UpdateExternalTable("ext"),
            BatchGenerate(gen, ["gen"], name="gen"),
            BatchTransform(tr, ["gen"], ["a"], name="tr"),
            DatatableBatchTransform(dbt, ["gen"], ["b"], name="dbt"),
            DatatableTransform(dt_func, ["gen"], ["c"], name="dt"),
        ]
    )
    steps = build_compute(ds, catalog, pipeline)
    steps[0]._name = "ext"  # UpdateExternalTable has no name= in 0.15
    return steps


def test_callbacks_in_order_for_every_step_kind(ds, make_catalog):
    steps = _every_kind(ds, make_catalog)
    rec = Recorder()
    run_steps(ds, steps, RunConfig(callback=rec))
    names = ["ext", "gen", "tr", "dbt", "dt"]
    expected = [("run_start", ""), *[(e, n) for n in names for e in ("start", "success")], ("run_success", "")]
    assert rec.events == expected
    rec.events.clear()
    run_steps(ds, steps, RunConfig(callback=rec))  # nothing to do: still reported, in order
    assert rec.events == expected


def test_a_raising_callback_does_not_mask_the_step_error(ds, make_catalog):
    steps = _every_kind(ds, make_catalog, fail=True)
    rec = Recorder(raise_in="error")
    with pytest.raises(ValueError, match="bad batch"):
        run_steps(ds, steps, RunConfig(callback=rec, fail_fast=True))
    assert rec.events[-3:] == [("start", "tr"), ("error", "tr"), ("run_error", "")]
    rec = Recorder(raise_in="run_error")
    with pytest.raises(ValueError, match="bad batch"):
        run_steps(ds, steps, RunConfig(callback=rec, fail_fast=True))


# ---------------------------------------------------------------- output_specs, pickling


def test_output_specs_are_the_declared_outputs(ds, make_catalog):
    catalog = make_catalog(a=cols("id"), b=cols("bid"), c=cols("id"))
    step = build_compute(
        ds,
        catalog,
        Pipeline([BatchTransform(lambda df: (df, df), ["a"], [OutputSpec("b", keys={"id": "bid"}), "c"])]),
    )[0]
    specs = step.output_specs
    assert [(s.dt.name, s.keys) for s in specs] == [("b", {"id": "bid"}), ("c", None)]


@pytest.mark.parametrize("dumps, loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)])
def test_table_store_db_survives_pickling(dbconn, dumps, loads):
    store = TableStoreDB(dbconn, "t", [*cols("id"), Column("s", String)], create_table=True)
    store.insert_rows(pd.DataFrame({"id": [1, 2], "v": [10, 20], "s": ["a", "b"]}))
    copy = loads(dumps(store))
    assert_df_equal(copy.read_rows(), store.read_rows())
    assert [c.name for c in copy.get_schema()] == ["id", "v", "s"]
    copy.insert_rows(pd.DataFrame({"id": [3], "v": [30], "s": ["c"]}))
    assert len(store.read_rows()) == 3  # the same database, file SQLite included
    copy.dbconn.con.dispose()


def test_table_via_catalog_table_works(ds):
    """``Table(store)`` without a name takes the catalog's (the 0.15 form used in every example)."""
    store = TableStoreDB(ds.meta_dbconn, "t", cols("id"), create_table=True)
    catalog = Catalog({"t": Table(store)})
    assert catalog.get_datatable(ds, "t").name == "t"
