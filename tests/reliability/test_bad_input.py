"""Bad input: each case fails with a message naming step, table and problem, and stored data survives.

Every batch-level case is checked twice: recorded as a failed batch (the default), and raised
under ``fail_fast``. Either way the output table's data and metadata are exactly what they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, Float, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.run_config import RunConfig
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.testing import assert_datatable_equal, assert_df_equal

N = 6


def inp_schema():
    return [Column("id", Integer, primary_key=True), Column("a", String)]


def out_schema():
    return [Column("id", Integer, primary_key=True), Column("a", String), Column("x", Float)]


def good(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"id": df["id"], "a": df["a"] + "!", "x": df["id"] * 0.5})


@dataclass
class Env:
    dbconn: DBConn
    ds: DataStore
    catalog: Catalog

    def steps(self, func: Callable[..., Any], outputs: Sequence[str] = ("out",)):
        pipe = Pipeline([BatchTransform(func, ["inp"], list(outputs), name="bad_step", chunk_size=100)])
        return build_compute(self.ds, self.catalog, pipe)

    def snapshot(self, table: str = "out"):
        dt = self.ds.get_table(table)
        meta = dt.get_metadata().drop(columns=["process_ts"]).sort_values("id").reset_index(drop=True)
        return dt.get_data().sort_values("id").reset_index(drop=True), meta


@pytest.fixture
def env(dbconn) -> Env:
    """``inp`` (N rows) already processed into ``out`` by ``good``; then ``inp`` changes, so every key is pending."""
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", inp_schema(), create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", out_schema(), create_table=True)),
            "out2": Table(TableStoreDB(dbconn, "out2", out_schema(), create_table=True)),
        }
    )
    e = Env(dbconn, ds, catalog)
    inp = ds.get_table("inp") if "inp" in ds.tables else catalog.get_datatable(ds, "inp")
    inp.store_chunk(pd.DataFrame({"id": range(N), "a": [f"x{i}" for i in range(N)]}))
    run_steps(ds, e.steps(good))
    inp.store_chunk(pd.DataFrame({"id": range(N), "a": [f"y{i}" for i in range(N)]}))
    return e


def _check_bad_batch(env: Env, func: Callable[..., Any], *expected: str, outputs: Sequence[str] = ("out",)) -> None:
    """``func`` fails the batch with a message containing ``expected``; data and metadata are unchanged."""
    before = env.snapshot()
    steps = env.steps(func, outputs)
    run_steps(env.ds, steps)  # recorded, not raised
    meta = steps[0].meta.get_metadata()
    assert len(meta) == N and not meta["is_success"].astype(bool).any()
    for text in meta["error"]:
        for part in ("bad_step", *expected):
            assert part in text, f"{part!r} not in recorded error {text!r}"
    after = env.snapshot()
    assert_df_equal(after[0], before[0])
    assert_df_equal(after[1], before[1])
    with pytest.raises(Exception) as info:  # noqa: PT011 - the message is what matters
        run_steps(env.ds, steps, RunConfig(fail_fast=True))
    for part in ("bad_step", *expected):
        assert part in str(info.value), f"{part!r} not in {info.value!r}"
    assert_df_equal(env.snapshot()[0], before[0])
    # and a fixed function repairs everything on the next run
    fixed = env.steps(good)
    run_steps(env.ds, fixed)
    expected_out = pd.DataFrame({"id": range(N), "a": [f"y{i}!" for i in range(N)], "x": np.arange(N) * 0.5})
    assert_datatable_equal(env.ds.get_table("out"), expected_out)
    assert fixed[0].meta.get_counts()["failed"] == 0


def test_function_returns_non_dataframe(env):
    _check_bad_batch(env, lambda df: {"id": [1]}, "returned dict", "'out'")


def test_function_returns_wrong_number_of_frames(env):
    _check_bad_batch(env, lambda df: (good(df), good(df)), "returned 2 DataFrame(s) for 1 output(s)", "'out'")


def test_function_returns_too_few_frames_for_two_outputs(env):
    _check_bad_batch(env, lambda df: (good(df),), "returned 1 DataFrame(s) for 2 output(s)", "'out'", "'out2'",
                     outputs=["out", "out2"])


def test_result_missing_key_column(env):
    _check_bad_batch(env, lambda df: good(df).drop(columns=["id"]), "table 'out'", "missing primary key column")


def test_result_with_null_keys(env):
    def func(df):
        out = good(df).astype({"id": "float64"})
        out.loc[0, "id"] = None
        return out

    _check_bad_batch(env, func, "table 'out'", "null values in primary key column(s) ['id']")


def test_result_with_duplicate_keys(env):
    _check_bad_batch(env, lambda df: pd.concat([good(df), good(df).head(1)]), "table 'out'", "duplicate primary keys")


def test_result_with_strings_in_float_column(env):
    _check_bad_batch(env, lambda df: good(df).assign(x="abc"), "'out'", "column 'x'", "FLOAT")


def test_result_with_numbers_in_string_column(env):
    _check_bad_batch(env, lambda df: good(df).assign(a=df["id"] * 10), "'out'", "column 'a'", "VARCHAR")


def test_result_with_unknown_column(env):
    _check_bad_batch(env, lambda df: good(df).assign(extra=1), "'out'", "unknown column(s) ['extra']")


def test_string_longer_than_column_length(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    short = [Column("id", Integer, primary_key=True), Column("a", String(8))]
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", inp_schema(), create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", short, create_table=True)),
        }
    )
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda df: df, ["inp"], ["out"], name="bad_step")]))
    catalog.get_datatable(ds, "inp").store_chunk(pd.DataFrame({"id": [1, 2], "a": ["short", "x" * 9]}))
    with pytest.raises(ValueError, match=r"column 'a' .*VARCHAR\(8\).* 1 value\(s\) longer than 8"):
        run_steps(ds, steps, RunConfig(fail_fast=True))
    assert len(ds.get_table("out").get_data()) == 0


# ---------------------------------------------------------------- valid but unusual input is stored faithfully


def test_nan_and_inf_floats_round_trip(env):
    values = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308]

    def func(df):
        return pd.DataFrame({"id": df["id"], "a": df["a"], "x": values[: len(df)]})

    steps = env.steps(func)
    run_steps(env.ds, steps, RunConfig(fail_fast=True))
    stored = env.ds.get_table("out").get_data().sort_values("id")
    x = stored["x"].astype(float).to_numpy()
    assert np.isnan(x[0]) and x[1] == math.inf and x[2] == -math.inf and list(x[3:]) == [0.0, 0.0, 1e308]
    # a rerun with the same output changes nothing (NaN hashes equal to NaN)
    before = env.snapshot()
    env.ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(N), "a": [f"z{i}" for i in range(N)]}))
    run_steps(env.ds, env.steps(lambda df: func(df).assign(a=[f"y{i}" for i in df["id"]])))
    after = env.snapshot()
    assert list(after[1]["update_ts"]) == list(before[1]["update_ts"])


def test_very_long_strings_round_trip(env):
    big = "é" * 1_000_000 + "end"
    steps = env.steps(lambda df: good(df).assign(a=big))
    run_steps(env.ds, steps, RunConfig(fail_fast=True))
    stored = env.ds.get_table("out").get_data()
    assert (stored["a"] == big).all() and len(stored) == N


def test_unicode_keys(dbconn):
    keys = ["ключ", "日本語", "🙂🚀", "e\u0301", "مرحبا", "a b", "quote'\"", "semi;colon", "back\\slash"]
    schema = [Column("name", String, primary_key=True), Column("v", Integer)]
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", schema, create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", schema, create_table=True)),
        }
    )
    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(lambda df: df.assign(v=df["v"] + 1), ["inp"], ["out"], chunk_size=4)])
    )
    inp = catalog.get_datatable(ds, "inp")
    inp.store_chunk(pd.DataFrame({"name": keys, "v": range(len(keys))}))
    run_steps(ds, steps, RunConfig(fail_fast=True))
    out = ds.get_table("out")
    assert_df_equal(out.get_data(), pd.DataFrame({"name": keys, "v": range(1, len(keys) + 1)}), ["name"])
    inp.delete_by_idx(pd.DataFrame({"name": ["🙂🚀"]}))
    run_steps(ds, steps, RunConfig(fail_fast=True))
    assert sorted(out.get_data()["name"]) == sorted(k for k in keys if k != "🙂🚀")
    assert steps[0].meta.get_changed_idx_count(ds) == 0


@pytest.mark.parametrize("empty", [pd.DataFrame(), pd.DataFrame(columns=["id", "a", "x"])], ids=["bare", "columns"])
def test_empty_frames_delete_the_batch_outputs_only(env, empty):
    """An empty result means "no rows for these keys": their old outputs go, other keys' stay."""
    run_steps(env.ds, env.steps(good), RunConfig(filters={"id": [0, 1, 2]}))
    empty_steps = env.steps(lambda df: empty)
    run_steps(env.ds, empty_steps, RunConfig(fail_fast=True))  # processes the pending keys 3, 4, 5
    out = env.ds.get_table("out")
    assert sorted(out.get_data()["id"]) == [0, 1, 2]
    assert sorted(out.get_metadata()["id"]) == [0, 1, 2]
    assert empty_steps[0].meta.get_counts() == {"processed": N, "failed": 0}


# ---------------------------------------------------------------- pipeline-level mistakes


def test_table_schema_changed_between_runs(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    TableStoreDB(dbconn, "out", out_schema(), create_table=True)
    ds.get_or_create_table("out", TableStoreDB(dbconn, "out", out_schema()))
    ds.get_table("out").store_chunk(pd.DataFrame({"id": [1], "a": ["k"], "x": [1.0]}))
    # next deployment: the declared schema gained a column, the database table did not
    changed = [*out_schema(), Column("extra", String)]
    fresh = DBConn(dbconn.connstr)
    with pytest.raises(ValueError, match=r"'out'.*column\(s\) \['extra'\].*missing in the database"):
        TableStoreDB(fresh, "out", changed, create_table=True)
    # a changed key type is refused too
    retyped = [Column("id", String, primary_key=True), Column("a", String), Column("x", Float)]
    with pytest.raises(ValueError, match=r"'out'.*column 'id'"):
        TableStoreDB(DBConn(dbconn.connstr), "out", retyped, create_table=True)
    assert_df_equal(ds.get_table("out").get_data(), pd.DataFrame({"id": [1], "a": ["k"], "x": [1.0]}))


def test_catalog_references_unknown_table(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog({"inp": Table(TableStoreDB(dbconn, "inp", inp_schema(), create_table=True))})
    pipe = Pipeline([BatchTransform(good, ["inp"], ["nope"], name="bad_step")])
    with pytest.raises(KeyError, match=r"bad_step.*table 'nope' is not in the catalog; known tables: \['inp'\]"):
        build_compute(ds, catalog, pipe)


def test_inputs_with_incompatible_key_types(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "a": Table(TableStoreDB(dbconn, "a", inp_schema(), create_table=True)),
            "b": Table(TableStoreDB(dbconn, "b", [Column("id", String, primary_key=True)], create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", out_schema(), create_table=True)),
        }
    )
    pipe = Pipeline([BatchTransform(good, ["a", "b"], ["out"], name="bad_step")])
    with pytest.raises(ValueError, match=r"step 'bad_step': key 'id' .*'a'.*'b'"):
        build_compute(ds, catalog, pipe)
