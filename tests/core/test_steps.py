"""BatchGenerate, UpdateExternalTable, DatatableTransform and run_changelist."""

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String, text

from datapipe.compute import Pipeline, build_compute, run_changelist, run_steps, run_steps_changelist
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.step.batch_generate import BatchGenerate, do_batch_generate
from datapipe.step.batch_transform import BatchTransform
from datapipe.step.datatable_transform import DatatableTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.testing import assert_datatable_equal, assert_idx_equal
from datapipe.types import ChangeList


def cols(*keys, data=("a",)):
    return [Column(k, Integer, primary_key=True) for k in keys] + [Column(c, String) for c in data]


def rows(ids, prefix="v"):
    return pd.DataFrame({"id": list(ids), "a": [f"{prefix}{i}" for i in ids]})


def bang(df):
    return df.assign(a=df["a"] + "!")


def test_batch_generate_deletes_stale_rows(ds, make_catalog):
    catalog = make_catalog(gen=cols("id"))
    state = {"ids": range(5)}

    def generate():
        ids = list(state["ids"])
        for start in range(0, len(ids), 2):
            yield rows(ids[start : start + 2])

    steps = build_compute(ds, catalog, Pipeline([BatchGenerate(generate, outputs=["gen"])]))
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("gen"), rows(range(5)))
    state["ids"] = [1, 3, 7]
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("gen"), rows([1, 3, 7]))


def test_batch_generate_error_keeps_rows(ds, make_catalog):
    catalog = make_catalog(gen=cols("id"))
    fail = {"on": False}

    def generate():
        yield rows([1])
        if fail["on"]:
            raise RuntimeError("source down")
        yield rows([2])

    steps = build_compute(ds, catalog, Pipeline([BatchGenerate(generate, outputs=["gen"])]))
    run_steps(ds, steps)
    fail["on"] = True
    with pytest.raises(RuntimeError, match="source down"):
        run_steps(ds, steps, RunConfig(fail_fast=True))
    assert_datatable_equal(ds.get_table("gen"), rows([1, 2]))
    errors = []

    class Errors(RunCallback):
        def on_step_error(self, step, error):
            errors.append(str(error))

    run_steps(ds, steps, RunConfig(callback=Errors()))  # without fail_fast: reported like a failed batch
    assert errors == ["source down"]
    assert_datatable_equal(ds.get_table("gen"), rows([1, 2]))


def test_batch_generate_two_outputs_and_wrong_shape(ds, make_catalog):
    catalog = make_catalog(a=cols("id"), b=cols("id"))

    def two():
        yield rows([1]), rows([2])

    do_batch_generate(two, ds, [catalog.get_datatable(ds, n) for n in "ab"])
    assert list(ds.get_table("b").get_data()["id"]) == [2]

    def one():
        yield rows([1])

    with pytest.raises(ValueError, match=r"yielded 1 DataFrame\(s\) for 2 output"):
        do_batch_generate(one, ds, [ds.get_table("a"), ds.get_table("b")], RunConfig(fail_fast=True))
    do_batch_generate(one, ds, [ds.get_table("a"), ds.get_table("b")])  # logged, like a failed batch
    assert list(ds.get_table("a").get_data()["id"]) == [1]


def test_update_external_table_tracks_writes_behind_our_back(ds, make_catalog, dbconn):
    catalog = make_catalog(ext=cols("id"), out=cols("id"))
    pipeline = Pipeline([UpdateExternalTable(output="ext"), BatchTransform(bang, ["ext"], ["out"])])
    steps = build_compute(ds, catalog, pipeline)

    def execute(sql):
        with dbconn.con.begin() as con:
            con.execute(text(sql))

    execute("INSERT INTO ext (id, a) VALUES (1, 'x'), (2, 'y'), (3, 'z')")
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": [1, 2, 3], "a": ["x!", "y!", "z!"]}))
    update_ts = ds.get_table("ext").get_metadata().set_index("id")["update_ts"]

    execute("UPDATE ext SET a = 'changed' WHERE id = 2")
    execute("DELETE FROM ext WHERE id = 3")
    execute("INSERT INTO ext (id, a) VALUES (4, 'w')")
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": [1, 2, 4], "a": ["x!", "changed!", "w!"]}))
    meta = ds.get_table("ext").get_metadata().set_index("id")
    assert meta.loc[1, "update_ts"] == update_ts[1]  # untouched row keeps its timestamp
    # the scan only updated metadata: the external table itself is as the other writer left it
    with dbconn.con.connect() as con:
        assert sorted(r[0] for r in con.execute(text("SELECT id FROM ext"))) == [1, 2, 4]


def test_datatable_transform_runs_only_on_change(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), total=cols("id", data=("n",)))
    calls = []

    def summarize(ds, input_dts, output_dts, run_config, kwargs):
        calls.append(1)
        n = input_dts[0].get_size()
        output_dts[0].store_chunk(pd.DataFrame({"id": [0], "n": [str(n * kwargs["mult"])]}))

    steps = build_compute(
        ds, catalog, Pipeline([DatatableTransform(summarize, ["inp"], ["total"], kwargs={"mult": 10})])
    )
    ds.get_table("inp").store_chunk(rows(range(3)))
    run_steps(ds, steps)
    run_steps(ds, steps)
    assert len(calls) == 1
    ds.get_table("inp").store_chunk(rows([9]))
    run_steps(ds, steps)
    assert len(calls) == 2
    assert ds.get_table("total").get_data()["n"].tolist() == ["40"]


def test_run_changelist_follows_changes_downstream(ds, make_catalog):
    catalog = make_catalog(a=cols("id"), b=cols("id"), c=cols("id"))
    pipeline = Pipeline([BatchTransform(bang, ["a"], ["b"]), BatchTransform(bang, ["b"], ["c"])])
    steps = build_compute(ds, catalog, pipeline)
    a = ds.get_table("a")
    a.store_chunk(rows(range(5)))
    run_steps(ds, steps)

    a.store_chunk(rows([1, 2], prefix="w"))
    a.store_chunk(rows([3], prefix="untouched"))  # changed, but not in the change list
    changed = a.store_chunk(rows([1, 2], prefix="x"))
    result = run_changelist(ds, catalog, pipeline, ChangeList.create("a", changed))
    assert_idx_equal(result.changes["c"], pd.DataFrame({"id": [1, 2]}))
    c = ds.get_table("c").get_data().set_index("id")["a"]
    assert c[1] == "x1!!" and c[2] == "x2!!" and c[3] == "v3!!"

    a.delete_by_idx(pd.DataFrame({"id": [4]}))
    result = run_steps_changelist(ds, steps, ChangeList.create("a", pd.DataFrame({"id": [4]})))
    assert_idx_equal(result.changes["c"], pd.DataFrame({"id": [4]}))
    assert 4 not in set(ds.get_table("c").get_data()["id"])


def test_run_idx(ds, make_catalog):
    catalog = make_catalog(a=cols("id"), b=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["a"], ["b"])]))
    ds.get_table("a").store_chunk(rows(range(3)))
    changes = steps[0].run_idx(ds, pd.DataFrame({"id": [1]}))
    assert list(changes.changes["b"]["id"]) == [1]
    assert list(ds.get_table("b").get_data()["id"]) == [1]
