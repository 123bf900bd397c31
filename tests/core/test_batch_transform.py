import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, ComputeStep, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.step.batch_transform import BatchTransform, DatatableBatchTransform
from datapipe.store.database import TableStoreDB
from datapipe.testing import assert_datatable_equal, assert_df_equal
from datapipe.types import InputSpec, OutputSpec, Required


def cols(*keys, data=("a",), key_type=Integer):
    return [Column(k, key_type, primary_key=True) for k in keys] + [Column(c, String) for c in data]


def rows(ids, prefix="v", key="id"):
    return pd.DataFrame({key: list(ids), "a": [f"{prefix}{i}" for i in ids]})


def bang(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(a=df["a"] + "!")


class Recorder(RunCallback):
    def __init__(self):
        self.errors = []
        self.progress = []

    def on_step_error(self, step, error):
        self.errors.append((step.name, str(error)))

    def on_step_progress(self, step, completed, total, **stats):
        self.progress.append((completed, total))


def test_one_to_one_incremental(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    calls = []

    def func(df):
        calls.append(sorted(df["id"]))
        return bang(df)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"], chunk_size=4)]))
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(rows(range(10)))
    cb = Recorder()
    run_steps(ds, steps, RunConfig(callback=cb))
    assert_datatable_equal(out, bang(rows(range(10))))
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert cb.progress == [(1, 3), (2, 3), (3, 3)]

    calls.clear()
    run_steps(ds, steps)
    assert calls == []  # nothing changed, nothing processed

    inp.store_chunk(rows([3], prefix="w"))
    inp.store_chunk(rows([11]))
    run_steps(ds, steps)
    assert calls == [[3, 11]]
    expected = bang(pd.concat([rows([i for i in range(10) if i != 3]), rows([3], "w"), rows([11])]))
    assert_datatable_equal(out, expected)
    assert steps[0].get_status(ds).changed_idx_count == 0
    assert steps[0].get_status(ds).total_idx_count == 11


def test_input_changed_then_changed_back(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"])]))
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(rows(range(3)))
    run_steps(ds, steps)
    inp.store_chunk(rows([1], "changed"))
    inp.store_chunk(rows([1]))
    assert steps[0].meta.get_changed_idx_count(ds) == 1
    run_steps(ds, steps)
    assert_datatable_equal(out, bang(rows(range(3))))


def test_one_to_many_and_output_replacement(ds, make_catalog):
    catalog = make_catalog(inp=cols("id", data=("n",)), out=cols("id", "k"))
    inp_schema_df = pd.DataFrame({"id": [1, 2], "n": ["3", "2"]})

    def explode(df):
        return pd.DataFrame(
            [{"id": r.id, "k": k, "a": f"{r.id}-{k}"} for r in df.itertuples() for k in range(int(r.n))]
        )

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(explode, ["inp"], ["out"])]))
    assert steps[0].transform_keys == ["id"]
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(inp_schema_df)
    run_steps(ds, steps)
    assert len(out.get_data()) == 5
    inp.store_chunk(pd.DataFrame({"id": [1], "n": ["1"]}))  # id 1 now yields one row: two must go
    run_steps(ds, steps)
    expected = pd.DataFrame({"id": [1, 2, 2], "k": [0, 0, 1], "a": ["1-0", "2-0", "2-1"]})
    assert_df_equal(out.get_data(), expected, index_cols=["id", "k"])


def test_many_to_one_aggregation(ds, make_catalog):
    catalog = make_catalog(items=cols("group_id", "item_id", data=("v",)), totals=cols("group_id", data=("n",)))

    def count(df):
        return df.groupby("group_id", as_index=False).size().rename(columns={"size": "n"}).astype({"n": str})

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(count, ["items"], ["totals"])]))
    assert steps[0].transform_keys == ["group_id"]
    items, totals = ds.get_table("items"), ds.get_table("totals")
    items.store_chunk(pd.DataFrame({"group_id": [1, 1, 2], "item_id": [1, 2, 1], "v": ["x", "y", "z"]}))
    run_steps(ds, steps)
    assert_df_equal(totals.get_data(), pd.DataFrame({"group_id": [1, 2], "n": ["2", "1"]}), ["group_id"])
    items.store_chunk(pd.DataFrame({"group_id": [1], "item_id": [3], "v": ["w"]}))
    items.delete_by_idx(pd.DataFrame({"group_id": [2], "item_id": [1]}))
    run_steps(ds, steps)
    assert_df_equal(totals.get_data(), pd.DataFrame({"group_id": [1], "n": ["3"]}), ["group_id"])


def test_cross_join_of_two_inputs(ds, make_catalog):
    catalog = make_catalog(
        models=cols("model_id", data=("w",)),
        images=cols("image_id", data=("px",)),
        preds=cols("model_id", "image_id", data=("p",)),
    )
    calls = []

    def predict(models, images):
        calls.append(len(models) * len(images))
        res = models.merge(images, how="cross")
        return res.assign(p=res["w"] + "*" + res["px"])[["model_id", "image_id", "p"]]

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(predict, ["models", "images"], ["preds"])]))
    assert steps[0].transform_keys == ["model_id", "image_id"]
    models, images, preds = ds.get_table("models"), ds.get_table("images"), ds.get_table("preds")
    models.store_chunk(pd.DataFrame({"model_id": [1, 2], "w": ["m1", "m2"]}))
    images.store_chunk(pd.DataFrame({"image_id": [10, 20, 30], "px": ["a", "b", "c"]}))
    run_steps(ds, steps)
    assert len(preds.get_data()) == 6

    # a change to one model re-queues exactly its pairs
    models.store_chunk(pd.DataFrame({"model_id": [2], "w": ["m2b"]}))
    assert steps[0].meta.get_changed_idx_count(ds) == 3
    run_steps(ds, steps)
    data = preds.get_data().set_index(["model_id", "image_id"])
    assert data.loc[(2, 20), "p"] == "m2b*b" and data.loc[(1, 20), "p"] == "m1*b"

    # a new image joins every model; a deleted image removes its predictions
    images.store_chunk(pd.DataFrame({"image_id": [40], "px": ["d"]}))
    images.delete_by_idx(pd.DataFrame({"image_id": [10]}))
    run_steps(ds, steps)
    got = preds.get_data()
    assert sorted(got["image_id"].unique()) == [20, 30, 40]
    assert len(got) == 6


def test_cross_join_both_sides_deleted(ds, make_catalog):
    catalog = make_catalog(
        models=cols("model_id", data=("w",)),
        images=cols("image_id", data=("px",)),
        preds=cols("model_id", "image_id", data=("p",)),
    )

    def predict(models, images):
        res = models.merge(images, how="cross")
        return res.assign(p=res["w"] + res["px"])[["model_id", "image_id", "p"]]

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(predict, ["models", "images"], ["preds"])]))
    models, images, preds = ds.get_table("models"), ds.get_table("images"), ds.get_table("preds")
    models.store_chunk(pd.DataFrame({"model_id": [1, 2], "w": ["a", "b"]}))
    images.store_chunk(pd.DataFrame({"image_id": [1, 2], "px": ["x", "y"]}))
    run_steps(ds, steps)
    models.delete_by_idx(pd.DataFrame({"model_id": [2]}))
    images.delete_by_idx(pd.DataFrame({"image_id": [2]}))
    run_steps(ds, steps)
    assert_df_equal(
        preds.get_data(), pd.DataFrame({"model_id": [1], "image_id": [1], "p": ["ax"]}), ["model_id", "image_id"]
    )


def test_three_way_cross_join_matches_a_full_recompute_after_random_changes_and_deletions(ds, make_catalog):
    """Each round changes, adds and deletes rows of several inputs at once (a deleted triple may have lost two of
    its parts); the incremental run must then leave exactly the rows a recompute from scratch gives."""
    catalog = make_catalog(
        a=cols("x", data=("va",)), b=cols("y", data=("vb",)), c=cols("z", data=("vc",)),
        out=cols("x", "y", "z", data=("v",)),
    )

    def join(a, b, c):
        res = a.merge(b, how="cross").merge(c, how="cross")
        return res.assign(v=res["va"] + res["vb"] + res["vc"])[["x", "y", "z", "v"]]

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(join, ["a", "b", "c"], ["out"], chunk_size=7)]))
    tables = {n: ds.get_table(n) for n in ("a", "b", "c")}
    live = {n: {} for n in tables}  # what each input holds: key -> value
    rng = np.random.default_rng(5)
    for n, col in zip(tables, ("x", "y", "z")):
        live[n] = {i: f"{n}{i}." for i in range(4)}
        tables[n].store_chunk(pd.DataFrame({col: list(live[n]), f"v{n}": list(live[n].values())}))
    for round_ in range(12):
        run_steps(ds, steps)
        frames = {n: pd.DataFrame({k: list(live[n]), f"v{n}": list(live[n].values())})
                  for n, k in zip(tables, ("x", "y", "z"))}
        expected = join(frames["a"], frames["b"], frames["c"])
        got = ds.get_table("out").get_data()
        assert_df_equal(got, expected, ["x", "y", "z"])
        for n, col in zip(tables, ("x", "y", "z")):
            keys = sorted(live[n])
            gone = [k for k in keys if rng.random() < 0.25]
            changed = [k for k in keys if k not in gone and rng.random() < 0.25]
            added = [max(keys, default=0) + 1] if rng.random() < 0.5 else []
            for k in changed + added:
                live[n][k] = f"{n}{k}.{round_}"
            for k in gone:
                del live[n][k]
            if gone:
                tables[n].delete_by_idx(pd.DataFrame({col: gone}))
            if changed + added:
                tables[n].store_chunk(pd.DataFrame({col: changed + added,
                                                    f"v{n}": [live[n][k] for k in changed + added]}))


def test_required_input_is_inner_join(ds, make_catalog):
    catalog = make_catalog(images=cols("id"), labels=cols("id"), out=cols("id", data=("a", "label")))
    seen = []

    def join(images, labels):
        seen.append(sorted(images["id"]))
        merged = images.merge(labels.rename(columns={"a": "label"}), on="id", how="left")
        return merged.fillna({"label": ""})

    pipeline = Pipeline([BatchTransform(join, [Required("images"), "labels"], ["out"])])
    steps = build_compute(ds, catalog, pipeline)
    images, labels, out = ds.get_table("images"), ds.get_table("labels"), ds.get_table("out")
    images.store_chunk(rows([1, 2]))
    labels.store_chunk(rows([2, 3], prefix="L"))
    assert steps[0].meta.get_changed_idx_count(ds) == 2  # key 3 has no image
    run_steps(ds, steps)
    assert sorted(out.get_data()["id"]) == [1, 2]
    images.delete_by_idx(pd.DataFrame({"id": [2]}))
    run_steps(ds, steps)
    assert sorted(out.get_data()["id"]) == [1]


def test_key_mapping_with_input_and_output_spec(ds, make_catalog):
    catalog = make_catalog(users=cols("user_id"), profiles=cols("uid"))

    def copy(users):
        return users.rename(columns={"user_id": "uid"}).assign(a=lambda d: d["a"] + "!")

    step = BatchTransform(
        copy,
        [InputSpec("users", keys={"id": "user_id"})],
        [OutputSpec("profiles", keys={"id": "uid"})],
    )
    steps = build_compute(ds, catalog, Pipeline([step]))
    assert steps[0].transform_keys == ["id"]
    users, profiles = ds.get_table("users"), ds.get_table("profiles")
    users.store_chunk(rows([1, 2, 3], key="user_id"))
    run_steps(ds, steps)
    users.delete_by_idx(pd.DataFrame({"user_id": [2]}))
    run_steps(ds, steps)
    assert_df_equal(profiles.get_data(), pd.DataFrame({"uid": [1, 3], "a": ["v1!", "v3!"]}), ["uid"])


def test_delete_propagates_through_two_chained_steps(ds, make_catalog):
    catalog = make_catalog(a=cols("id"), b=cols("id"), c=cols("id"))
    pipeline = Pipeline([BatchTransform(bang, ["a"], ["b"]), BatchTransform(bang, ["b"], ["c"])])
    steps = build_compute(ds, catalog, pipeline)
    a, c = ds.get_table("a"), ds.get_table("c")
    a.store_chunk(rows(range(4)))
    run_steps(ds, steps)
    assert_datatable_equal(c, rows(range(4)).assign(a=lambda d: d["a"] + "!!"))
    a.delete_by_idx(pd.DataFrame({"id": [0, 2]}))
    run_steps(ds, steps)
    assert_datatable_equal(c, rows([1, 3]).assign(a=lambda d: d["a"] + "!!"))


def test_failing_batch_is_recorded_and_retried(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    broken = {"on": True}

    def func(df):
        if broken["on"] and 3 in set(df["id"]):
            raise RuntimeError("cannot handle 3")
        return bang(df)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"], chunk_size=2)]))
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(rows(range(6)))
    cb = Recorder()
    run_steps(ds, steps, RunConfig(callback=cb))
    assert sorted(out.get_data()["id"]) == [0, 1, 4, 5]
    assert len(cb.errors) == 1 and "cannot handle 3" in cb.errors[0][1]
    meta = steps[0].meta.get_metadata().set_index("id")
    assert not meta.loc[2, "is_success"] and "RuntimeError: cannot handle 3" in meta.loc[3, "error"]
    assert steps[0].get_status(ds).changed_idx_count == 2  # failed keys stay pending

    run_steps(ds, steps)  # still failing: still recorded, others untouched
    assert sorted(out.get_data()["id"]) == [0, 1, 4, 5]

    broken["on"] = False
    run_steps(ds, steps)
    assert_datatable_equal(out, bang(rows(range(6))))
    assert steps[0].meta.get_metadata()["is_success"].all()


def test_fail_fast_reraises(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))

    def func(df):
        raise KeyError("boom")

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"])]))
    ds.get_table("inp").store_chunk(rows(range(3)))
    with pytest.raises(KeyError, match="boom"):
        run_steps(ds, steps, RunConfig(fail_fast=True))
    assert ds.get_table("out").get_size() == 0


def test_fail_fast_from_environment(ds, make_catalog, monkeypatch):
    from datapipe import settings as settings_module

    monkeypatch.setattr(settings_module.settings, "fail_fast", True)
    assert RunConfig().fail_fast is True


@pytest.mark.parametrize(
    "result, message",
    [
        (lambda df: (df, df), r"returned 2 DataFrame\(s\) for 1 output"),
        (lambda df: "nope", "returned str, expected a DataFrame"),
        (lambda df: df.drop(columns=["id"]), "missing primary key column"),
        (lambda df: pd.concat([df, df]), "duplicate primary keys"),
        (lambda df: df.assign(id=None), "null values in primary key"),
    ],
)
def test_malformed_results_name_the_step(ds, make_catalog, result, message):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(result, ["inp"], ["out"], name="shaper")]))
    ds.get_table("inp").store_chunk(rows(range(3)))
    with pytest.raises((ValueError, TypeError), match=message) as exc:
        run_steps(ds, steps, RunConfig(fail_fast=True))
    assert "shaper" in str(exc.value)
    err = steps[0].meta.get_metadata()["error"].iloc[0]
    assert "shaper" in err and message.split("\\")[0].split("(")[0] in err


def test_injected_arguments_kwargs_and_multiple_outputs(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), even=cols("id"), odd=cols("id"))
    seen = {}

    def split(df, idx, ds, run_config, suffix):
        seen["idx"] = sorted(idx["id"])
        seen["ds"] = ds
        seen["labels"] = run_config.labels
        df = df.assign(a=df["a"] + suffix)
        return df[df["id"] % 2 == 0], df[df["id"] % 2 == 1]

    step = BatchTransform(split, ["inp"], ["even", "odd"], kwargs={"suffix": "?"}, name="split", labels=[("k", "v")])
    steps = build_compute(ds, catalog, Pipeline([step]))
    assert steps[0].labels == [("k", "v")]
    ds.get_table("inp").store_chunk(rows(range(4)))
    run_steps(ds, steps)
    assert seen["idx"] == [0, 1, 2, 3] and seen["ds"] is ds and seen["labels"]["step_name"] == "split"
    assert sorted(ds.get_table("even").get_data()["id"]) == [0, 2]
    assert list(ds.get_table("odd").get_data().sort_values("id")["a"]) == ["v1?", "v3?"]


def test_function_asking_for_idx_is_called_for_deleted_keys(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    calls = []

    def func(df, idx):
        calls.append((sorted(df["id"]), sorted(idx["id"])))
        return df

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"])]))
    inp = ds.get_table("inp")
    inp.store_chunk(rows([1, 2]))
    run_steps(ds, steps)
    inp.delete_by_idx(pd.DataFrame({"id": [1, 2]}))
    run_steps(ds, steps)
    assert calls[-1] == ([], [1, 2])
    assert ds.get_table("out").get_size() == 0


def test_filters_and_order(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    order = []

    def func(df):
        order.append(sorted(df["id"]))
        return df

    pipeline = Pipeline([BatchTransform(func, ["inp"], ["out"], chunk_size=2, order_by=["id"], order="desc")])
    steps = build_compute(ds, catalog, pipeline)
    ds.get_table("inp").store_chunk(rows(range(5)))
    run_steps(ds, steps, RunConfig(filters={"id": [1, 3]}))
    assert order == [[1, 3]]
    run_steps(ds, steps)  # a filtered run must not hide the rest from the next run
    assert order[1:] == [[2, 4], [0]]  # batches cut from keys in descending order
    assert ds.get_table("out").get_size() == 5


def test_filter_values_are_bound_not_formatted(ds, make_catalog):
    catalog = make_catalog(inp=cols("id", key_type=String), out=cols("id", key_type=String))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"])]))
    payload = "x'; DROP TABLE inp; --"
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": [payload, "plain"], "a": ["1", "2"]}))
    run_steps(ds, steps, RunConfig(filters={"id": payload}))
    assert list(ds.get_table("out").get_data()["id"]) == [payload]
    assert ds.get_table("inp").get_size() == 2


def test_step_filters(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"], filters=[{"id": 1}, {"id": 2}])])
    )
    ds.get_table("inp").store_chunk(rows(range(5)))
    run_steps(ds, steps)
    assert sorted(ds.get_table("out").get_data()["id"]) == [1, 2]


def test_step_names(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"), out2=cols("id"))
    a = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"])]))[0]
    b = build_compute(DataStore(ds.meta_dbconn, True), catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"])]))[0]
    c = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out2"])]))[0]
    assert a.name == b.name and a.name.startswith("bang_") and a.name != c.name
    with pytest.raises(ValueError, match="duplicate step names"):
        build_compute(
            ds,
            catalog,
            Pipeline(
                [BatchTransform(bang, ["inp"], ["out"], name="x"), BatchTransform(bang, ["inp"], ["out2"], name="x")]
            ),
        )


def test_unknown_table_and_missing_keys(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), other=cols("other_id"))
    with pytest.raises(KeyError, match="not in the catalog"):
        build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["nope"], ["inp"])]))
    with pytest.raises(ValueError, match="share no primary key"):
        build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["other"])]))


def test_reset_and_fill_metadata(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    calls = []

    def func(df):
        calls.append(len(df))
        return df

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"])]))
    step: ComputeStep = steps[0]
    ds.get_table("inp").store_chunk(rows(range(3)))
    step.fill_metadata(ds)
    run_steps(ds, steps)
    assert calls == []
    step.reset_metadata(ds)
    run_steps(ds, steps)
    assert calls == [3]


def test_orm_class_as_input(ds, dbconn):
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Source(Base):
        __tablename__ = "orm_source"
        id: Mapped[int] = mapped_column(primary_key=True)
        a: Mapped[str] = mapped_column(String)

    class Target(Base):
        __tablename__ = "orm_target"
        id: Mapped[int] = mapped_column(primary_key=True)
        a: Mapped[str] = mapped_column(String)

    steps = build_compute(ds, Catalog({}), Pipeline([BatchTransform(bang, [Source], [Target])]))
    ds.get_table("orm_source").store_chunk(rows([1, 2]))
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("orm_target"), bang(rows([1, 2])))


def test_datatable_batch_transform(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))

    def func(ds, idx, input_dts, run_config, kwargs):
        return bang(input_dts[0].get_data(idx))

    steps = build_compute(ds, catalog, Pipeline([DatatableBatchTransform(func, ["inp"], ["out"])]))
    ds.get_table("inp").store_chunk(rows(range(3)))
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("out"), bang(rows(range(3))))


def test_table_object_as_input(ds, dbconn):
    src = Table(TableStoreDB(dbconn, "tsrc", cols("id"), create_table=True), name="tsrc")
    dst = Table(TableStoreDB(dbconn, "tdst", cols("id"), create_table=True), name="tdst")
    steps = build_compute(ds, Catalog({}), Pipeline([BatchTransform(bang, [src], [dst])]))
    ds.get_table("tsrc").store_chunk(rows([1]))
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("tdst"), bang(rows([1])))


def test_outputs_on_a_second_dbconn_of_the_same_database_commit_with_the_metadata(ds, dbconn):
    from datapipe.store.database import DBConn

    other = DBConn(dbconn.connstr)  # same database, separate DBConn object
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", cols("id"), create_table=True)),
            "o1": Table(TableStoreDB(other, "o1", cols("id"), create_table=True)),
            "o2": Table(TableStoreDB(other, "o2", cols("id"), create_table=True)),
        }
    )
    fail = {"on": True}

    def two(df):
        second = df.assign(id=None) if fail["on"] else df  # null keys make the second write fail
        return df, second

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(two, ["inp"], ["o1", "o2"])]))
    ds.get_table("inp").store_chunk(rows([1, 2]))
    run_steps(ds, steps)
    # the batch failed as a whole: the first output's rows were rolled back with it
    with other.con.connect() as con:
        assert con.exec_driver_sql("SELECT count(*) FROM o1").scalar_one() == 0
    assert ds.get_table("o1").get_size() == 0
    fail["on"] = False
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("o1"), rows([1, 2]))
    assert_datatable_equal(ds.get_table("o2"), rows([1, 2]))


def test_a_step_and_a_table_of_the_same_name_are_refused(ds, make_catalog):
    """Both would keep their metadata in ``<name>_meta``: a clear error, whichever comes first."""
    from datapipe.errors import ConfigError

    catalog = make_catalog(inp=cols("id"), out=cols("id"), later=cols("id"))
    with pytest.raises(ConfigError, match=r"step 'inp': its metadata table 'inp_meta' holds the metadata of a table"):
        build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"], name="inp")]))
    first = BatchTransform(bang, ["inp"], ["out"], name="later")
    second = BatchTransform(bang, ["out"], ["later"], name="copy")
    refused = r"table 'later': its metadata table 'later_meta' holds the metadata of a step"
    with pytest.raises(ConfigError, match=refused):
        build_compute(ds, catalog, Pipeline([first, second]))


def test_an_output_listed_twice_is_refused(ds, make_catalog):
    """One unit of work writes each output once; the same table twice is a configuration error."""
    from datapipe.errors import ConfigError

    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    twice = BatchTransform(lambda df: (df, df), ["inp"], ["out", "out"], name="twice")
    with pytest.raises(ConfigError, match=r"step 'twice': output table\(s\) \['out'\] listed more than once"):
        build_compute(ds, catalog, Pipeline([twice]))


def test_a_batch_reports_its_written_and_deleted_keys_once_each(ds, make_catalog):
    """The changes a batch passes on (``run_changelist``) and counts: every written and deleted key, once."""
    from datapipe.types import ChangeList

    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    seen = []

    class Progress(RunCallback):
        def on_step_progress(self, step, completed, total, **stats):
            seen.append(stats)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda df: df, ["inp"], ["out"], name="copy")]))
    inp = ds.get_table("inp")
    inp.store_chunk(rows(range(4)))
    run_steps(ds, steps, RunConfig(callback=Progress()))
    assert seen[-1]["changed"] == 4 and seen[-1]["deleted"] == 0
    inp.store_chunk(rows([0], prefix="w"))
    inp.delete_by_idx(pd.DataFrame({"id": [3]}))
    changes = steps[0].run_changelist(ds, ChangeList.create("inp", pd.DataFrame({"id": [0, 3]})))
    got = changes.changes["out"].sort_values("id", ignore_index=True)
    assert got["id"].tolist() == [0, 3] and changes.key_count() == 2 and changes.deleted_count == 1
