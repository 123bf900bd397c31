"""Joins through transform keys: inputs that hold only some of the transform keys, or more key columns.

Runs on SQLite and PostgreSQL (the ``dbconn`` fixture). The one-to-many input is read by its partial key
in one joined query when its store is an SQL table in the metadata database, otherwise through the
metadata's live keys; both must hand the function exactly the live rows.
"""

from typing import List

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, MetaKey, TableStoreDB
from datapipe.testing import assert_df_equal


def items_schema() -> List[Column]:
    return [Column("item_id", Integer, primary_key=True), Column("w", Integer)]


def anns_schema(meta_key: bool = False) -> List[Column]:
    if meta_key:  # annotations keyed by ann_id alone; item_id declared as a MetaKey column
        return [Column("ann_id", Integer, primary_key=True), Column("item_id", Integer, MetaKey()),
                Column("s", Integer)]
    return [Column("item_id", Integer, primary_key=True), Column("ann_id", Integer, primary_key=True),
            Column("s", Integer)]


def stats_schema() -> List[Column]:
    return [Column("item_id", Integer, primary_key=True), Column("n", Integer), Column("total", Integer)]


def stats(items: pd.DataFrame, anns: pd.DataFrame) -> pd.DataFrame:
    agg = anns.groupby("item_id", as_index=False).agg(n=("ann_id", "size"), total=("s", "sum"))
    df = items.merge(agg, on="item_id", how="outer").fillna(0)
    return df.assign(total=df["total"] + df["w"])[["item_id", "n", "total"]].astype("int64")


def expected(items: pd.DataFrame, anns: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for item_id in sorted(set(items["item_id"]) | set(anns["item_id"])):
        mine = anns[anns["item_id"] == item_id]
        w = items.loc[items["item_id"] == item_id, "w"].sum()
        rows.append({"item_id": item_id, "n": len(mine), "total": int(mine["s"].sum() + w)})
    return pd.DataFrame(rows, columns=["item_id", "n", "total"])


def build(ds: DataStore, anns_store: TableStoreDB, dbconn: DBConn, chunk_size: int = 2):
    catalog = Catalog(
        {
            "items": Table(TableStoreDB(dbconn, "items", items_schema(), create_table=True)),
            "anns": Table(anns_store),
            "stats": Table(TableStoreDB(dbconn, "stats", stats_schema(), create_table=True)),
        }
    )
    step = BatchTransform(stats, ["items", "anns"], ["stats"], transform_keys=["item_id"], chunk_size=chunk_size)
    return build_compute(ds, catalog, Pipeline([step]))


@pytest.mark.parametrize("where", ["metadata database", "other database"])
@pytest.mark.parametrize("meta_key", [False, True], ids=["composite key", "meta key"])
def test_one_to_many_join_is_incremental_and_reads_live_rows(dbconn, tmp_path, where, meta_key):
    ds = DataStore(dbconn, create_meta_table=True)
    store_conn = dbconn if where == "metadata database" else DBConn(f"sqlite:///{tmp_path}/anns.db")
    anns_store = TableStoreDB(store_conn, "anns", anns_schema(meta_key), create_table=True)
    steps = build(ds, anns_store, dbconn)
    assert steps[0].transform_keys == ["item_id"]
    items_t, anns_t, stats_t = ds.get_table("items"), ds.get_table("anns"), ds.get_table("stats")
    assert (anns_t.get_live_data(pd.DataFrame({"item_id": [1]})) is None) == (where == "other database")

    items = pd.DataFrame({"item_id": [1, 2, 3], "w": [100, 200, 300]})
    anns = pd.DataFrame({"item_id": [1, 1, 1, 2, 2, 4], "ann_id": [1, 2, 3, 4, 5, 6], "s": [1, 2, 3, 4, 5, 6]})
    items_t.store_chunk(items)
    anns_t.store_chunk(anns)
    # a row in the store that the metadata does not know (written behind Datapipe's back) is not live
    anns_store.insert_rows(pd.DataFrame({"item_id": [1], "ann_id": [99], "s": [1000]}))
    run_steps(ds, steps)
    assert_df_equal(stats_t.get_data(), expected(items, anns), ["item_id"])

    # one annotation changes, one is deleted: only their items are recomputed
    calls: List[List[int]] = []
    steps[0].func = lambda i, a: (calls.append(sorted(set(i["item_id"]) | set(a["item_id"]))), stats(i, a))[1]
    anns.loc[anns["ann_id"] == 4, "s"] = 40
    anns_t.store_chunk(anns[anns["ann_id"] == 4])
    anns_t.delete_by_idx(anns[anns["ann_id"] == 1][anns_t.primary_keys])
    anns = anns[anns["ann_id"] != 1]
    run_steps(ds, steps)
    assert sorted(k for c in calls for k in c) == [1, 2]
    assert_df_equal(stats_t.get_data(), expected(items, anns), ["item_id"])

    # every annotation of item 4 deleted (it has no item row): its output goes
    anns_t.delete_by_idx(anns[anns["item_id"] == 4][anns_t.primary_keys])
    anns = anns[anns["item_id"] != 4]
    run_steps(ds, steps)
    assert_df_equal(stats_t.get_data(), expected(items, anns), ["item_id"])


def test_get_live_data_matches_the_metadata_lookup(dbconn):
    """The joined read returns exactly the store rows of the live keys matching the partial key."""
    ds = DataStore(dbconn, create_meta_table=True)
    store = TableStoreDB(dbconn, "anns", anns_schema(), create_table=True)
    steps = build(ds, store, dbconn)
    anns_t = ds.get_table("anns")
    anns = pd.DataFrame({"item_id": [i // 3 for i in range(30)], "ann_id": list(range(30)), "s": list(range(30))})
    anns_t.store_chunk(anns)
    anns_t.delete_by_idx(anns[anns["ann_id"] % 4 == 0][["item_id", "ann_id"]])
    store.insert_rows(pd.DataFrame({"item_id": [2], "ann_id": [100], "s": [7]}))  # not in the metadata
    keys = pd.DataFrame({"item_id": [0, 2, 5, 7, 42]})
    joined = anns_t.get_live_data(keys)
    assert joined is not None
    via_meta = anns_t.get_data(anns_t.meta.get_existing_idx(keys))
    assert_df_equal(joined, via_meta, ["item_id", "ann_id"])
    assert sorted(joined["ann_id"]) == [a for a in range(30) if a // 3 in (0, 2, 5, 7) and a % 4 != 0]
    empty = anns_t.get_live_data(keys.iloc[:0])
    assert empty is not None and len(empty) == 0 and list(empty.columns) == ["item_id", "ann_id", "s"]
    assert steps[0].read_input(1, pd.DataFrame({"item_id": [5]}))["ann_id"].tolist() == [15, 17]


def test_string_columns_pass_through_the_joined_read(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    cols = [Column("doc", String, primary_key=True), Column("part", Integer, primary_key=True), Column("t", String)]
    store = TableStoreDB(dbconn, "parts", cols, create_table=True)
    catalog = Catalog(
        {
            "parts": Table(store),
            "docs": Table(TableStoreDB(dbconn, "docs", [Column("doc", String, primary_key=True),
                                                        Column("text", String)], create_table=True)),
        }
    )

    def join_parts(parts: pd.DataFrame) -> pd.DataFrame:
        parts = parts.sort_values(["doc", "part"])
        return parts.groupby("doc", as_index=False)["t"].agg(" ".join).rename(columns={"t": "text"})

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(join_parts, ["parts"], ["docs"])]))
    assert steps[0].transform_keys == ["doc"]
    ds.get_table("parts").store_chunk(
        pd.DataFrame({"doc": ["a", "a", "b", "it's"], "part": [2, 1, 1, 1], "t": ["world", "hello", "x", "q"]})
    )
    run_steps(ds, steps)
    assert_df_equal(
        ds.get_table("docs").get_data(),
        pd.DataFrame({"doc": ["a", "b", "it's"], "text": ["hello world", "x", "q"]}),
        ["doc"],
    )


def _indexed(dbconn: DBConn, table: str) -> List[List[str]]:
    from sqlalchemy import inspect

    with dbconn.read() as con:
        return [ix["column_names"] for ix in inspect(con).get_indexes(table, schema=dbconn.schema)]


def test_cross_join_indexes_processed_keys_by_the_non_leading_side(dbconn):
    """A change to an image re-queues every processed pair of that image, also pairs whose model is gone
    (the function may still produce rows for them); the lookup goes through an index on ``image_id``."""
    ds = DataStore(dbconn, create_meta_table=True)

    def table(name: str, *keys: str, data: str) -> Table:
        cols = [Column(k, Integer, primary_key=True) for k in keys] + [Column(data, String)]
        return Table(TableStoreDB(dbconn, name, cols, create_table=True))

    catalog = Catalog(
        {"models": table("models", "model_id", data="w"), "images": table("images", "image_id", data="px"),
         "preds": table("preds", "model_id", "image_id", data="p")}
    )

    def predict(models: pd.DataFrame, images: pd.DataFrame, idx: pd.DataFrame) -> pd.DataFrame:
        res = idx.merge(images, on="image_id").merge(models, on="model_id", how="left")
        return res.assign(p=res["px"] + ":" + res["w"].fillna("-"))[["model_id", "image_id", "p"]]

    pipeline = Pipeline([BatchTransform(predict, ["models", "images"], ["preds"], name="predict")])
    steps = build_compute(ds, catalog, pipeline)
    build_compute(ds, catalog, pipeline)  # declaring the step again finds the index in place
    indexed = _indexed(dbconn, "predict_meta")
    assert ["image_id"] in indexed and ["model_id"] not in indexed  # model_id leads the primary key
    assert steps[0].changes.previous_lookups() == [["image_id"]]

    models, images, preds = ds.get_table("models"), ds.get_table("images"), ds.get_table("preds")
    models.store_chunk(pd.DataFrame({"model_id": [1, 2], "w": ["a", "b"]}))
    images.store_chunk(pd.DataFrame({"image_id": [10, 20], "px": ["x", "y"]}))
    run_steps(ds, steps)
    models.delete_by_idx(pd.DataFrame({"model_id": [2]}))
    run_steps(ds, steps)
    want = {(1, 10): "x:a", (1, 20): "y:a", (2, 10): "x:-", (2, 20): "y:-"}
    assert dict(zip(zip(preds.get_data()["model_id"], preds.get_data()["image_id"]), preds.get_data()["p"])) == want

    images.store_chunk(pd.DataFrame({"image_id": [10], "px": ["X"]}))
    assert steps[0].meta.get_changed_idx_count(ds) == 2  # (1, 10) and the processed (2, 10)
    run_steps(ds, steps)
    want.update({(1, 10): "X:a", (2, 10): "X:-"})
    got = preds.get_data()
    assert dict(zip(zip(got["model_id"], got["image_id"]), got["p"])) == want


def test_first_run_builds_the_lookup_index_once_at_the_end(dbconn):
    """During a step's first run its lookup index is absent (built once afterwards, also after a failed
    run); later runs keep it in place while they write."""
    from datapipe.run_config import RunConfig

    ds = DataStore(dbconn, create_meta_table=True)

    def table(name: str, *keys: str) -> Table:
        cols = [Column(k, Integer, primary_key=True) for k in keys] + [Column("v", Integer)]
        return Table(TableStoreDB(dbconn, name, cols, create_table=True))

    catalog = Catalog({"models": table("models", "model_id"), "images": table("images", "image_id"),
                       "preds": table("preds", "model_id", "image_id")})
    seen: List[bool] = []
    fail_on: List[int] = []

    def predict(models: pd.DataFrame, images: pd.DataFrame, idx: pd.DataFrame) -> pd.DataFrame:
        seen.append(["image_id"] in _indexed(dbconn, "predict_meta"))
        if set(idx["image_id"]) & set(fail_on):
            raise RuntimeError("bad image")
        res = idx.merge(images, on="image_id").merge(models, on="model_id")
        return res.assign(v=res["v_x"] * res["v_y"])[["model_id", "image_id", "v"]]

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(predict, ["models", "images"], ["preds"],
                                                                name="predict", chunk_size=2)]))
    assert ["image_id"] in _indexed(dbconn, "predict_meta")
    ds.get_table("models").store_chunk(pd.DataFrame({"model_id": [1, 2], "v": [1, 2]}))
    ds.get_table("images").store_chunk(pd.DataFrame({"image_id": [10, 20, 30], "v": [1, 10, 100]}))

    fail_on.append(30)
    with pytest.raises(RuntimeError, match="bad image"):
        run_steps(ds, steps, run_config=RunConfig(fail_fast=True))
    assert seen and not any(seen)  # absent in every batch of the first run
    assert ["image_id"] in _indexed(dbconn, "predict_meta")  # and back after it failed

    seen.clear()
    fail_on.clear()
    run_steps(ds, steps)  # the metadata holds the keys processed before the failure: not a first run
    assert seen and all(seen)
    got = ds.get_table("preds").get_data().sort_values(["model_id", "image_id"])
    assert got["v"].tolist() == [1, 10, 100, 2, 20, 200]
    assert ["image_id"] in _indexed(dbconn, "predict_meta")
