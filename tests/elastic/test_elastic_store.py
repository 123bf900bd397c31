"""ElasticStore against a real Elasticsearch server (``ELASTICSEARCH_URL``); skipped without one."""

from __future__ import annotations

import os

import pytest

if not os.environ.get("ELASTICSEARCH_URL"):
    pytest.skip("ELASTICSEARCH_URL is not set: Elasticsearch tests need a running server", allow_module_level=True)

import pandas as pd  # noqa: E402
from sqlalchemy import Column, Float, Integer, String  # noqa: E402

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps  # noqa: E402
from datapipe.datatable import DataStore  # noqa: E402
from datapipe.step.batch_transform import BatchTransform  # noqa: E402
from datapipe.store.database import TableStoreDB  # noqa: E402
from datapipe.store.table_store import StoreError  # noqa: E402
from datapipe.testing import assert_datatable_equal, assert_df_equal  # noqa: E402
from datapipe.testing.kit import AbstractBaseStoreTests  # noqa: E402
from datapipe_elastic import ElasticStore  # noqa: E402


class TestElasticStore(AbstractBaseStoreTests):
    @pytest.fixture
    def store_maker(self, elastic_store_maker):
        return elastic_store_maker


def schema():
    return [
        Column("image_id", Integer, primary_key=True),
        Column("model", String, primary_key=True),
        Column("score", Float),
        Column("label", String),
    ]


def sample(n: int, offset: int = 0) -> pd.DataFrame:
    ids = list(range(offset, offset + n))
    return pd.DataFrame(
        {
            "image_id": ids,
            "model": [f"m{i % 3}" for i in ids],
            "score": [i / 8 for i in ids],
            "label": [f"label {i}" for i in ids],
        }
    )


def test_documents_are_keyed_by_the_primary_key(elastic_store_maker, es_client):
    store = elastic_store_maker(schema())
    store.insert_rows(sample(2))
    doc = es_client.get(index=store.index, id='[1,"m1"]')
    assert doc["_source"] == {"image_id": 1, "model": "m1", "score": 0.125, "label": "label 1"}
    single = elastic_store_maker([Column("id", String, primary_key=True), Column("v", Integer)])
    single.insert_rows(pd.DataFrame({"id": ["a/b", "c"], "v": [1, 2]}))
    assert es_client.get(index=single.index, id="a/b")["_source"] == {"id": "a/b", "v": 1}


def test_key_name_remapping_on_the_server(elastic_store_maker, es_client):
    store = elastic_store_maker(schema(), key_name_remapping={"image_id": "imageId"})
    store.insert_rows(sample(3))
    assert es_client.get(index=store.index, id='[2,"m2"]')["_source"]["imageId"] == 2
    got = store.read_rows(sample(3)[["image_id", "model"]])
    assert_df_equal(got, sample(3), index_cols=["image_id", "model"])


@pytest.mark.parametrize("form", ["mappings", "full_body"])
def test_mapping_is_used_when_the_index_is_created(elastic_store_maker, es_client, form):
    mappings = {"properties": {"model": {"type": "keyword"}, "label": {"type": "text"}, "score": {"type": "double"}}}
    mapping = mappings if form == "mappings" else {"mappings": mappings, "settings": {"number_of_shards": 1}}
    store = elastic_store_maker(schema(), mapping=mapping)
    store.insert_rows(sample(4))
    props = es_client.indices.get_mapping(index=store.index)[store.index]["mappings"]["properties"]
    assert props["model"]["type"] == "keyword" and props["score"]["type"] == "double"
    assert len(store.read_rows()) == 4


def test_reads_and_deletes_on_a_missing_index(elastic_store_maker, es_client):
    store = elastic_store_maker(schema())
    assert len(store.read_rows()) == 0
    assert len(store.read_rows(sample(2)[["image_id", "model"]])) == 0
    store.delete_rows(sample(2)[["image_id", "model"]])
    assert [len(c) for c in store.read_rows_meta_pseudo_df(10)] == [0]
    assert not es_client.indices.exists(index=store.index)


def test_read_all_pages_in_chunks(elastic_store_maker):
    store = elastic_store_maker(schema())
    df = sample(2500)
    store.insert_rows(df)
    chunks = list(store.read_rows_meta_pseudo_df(chunksize=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert_df_equal(pd.concat(chunks, ignore_index=True), df, index_cols=["image_id", "model"])


def test_bulk_errors_name_the_index(elastic_store_maker):
    store = elastic_store_maker(schema(), mapping={"properties": {"label": {"type": "long"}}})
    with pytest.raises(StoreError, match=rf"ElasticStore table '{store.index}'.*failed"):
        store.insert_rows(sample(2))  # "label 0" is not a long


def test_wrong_credentials_are_masked(es_kwargs, index_names):
    url = es_kwargs["hosts"][0]
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.password:
        pytest.skip("ELASTICSEARCH_URL has no password: the server does not check credentials")
    bad = url.replace(f":{parts.password}@", ":wrong-pw-42@")
    store = ElasticStore(index_names(), schema(), {**es_kwargs, "hosts": [bad]})
    with pytest.raises(StoreError) as err:
        store.insert_rows(sample(1))
    assert "wrong-pw-42" not in str(err.value) and store.index in str(err.value)


# ---------------------------------------------------------------- end to end


def make_doc(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": df["image_id"],
            "model": df["model"],
            "score": df["score"] * 2,
            "label": df["label"].str.upper(),
        }
    )


def test_incremental_pipeline_into_elasticsearch(dbconn, elastic_store_maker, es_client):
    ds = DataStore(dbconn, create_meta_table=True)
    target = elastic_store_maker(schema())
    catalog = Catalog({"src": Table(TableStoreDB(dbconn, "src", schema(), create_table=True)), "docs": Table(target)})
    calls = []

    def transform(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(df))
        return make_doc(df)

    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(transform, inputs=["src"], outputs=["docs"], chunk_size=9)])
    )
    src = ds.get_table("src")
    src.store_chunk(sample(40))
    run_steps(ds, steps)
    assert sum(calls) == 40
    assert_datatable_equal(ds.get_table("docs"), make_doc(sample(40)))

    calls.clear()
    changed = sample(3, offset=5).assign(label=lambda d: d["label"] + " v2")
    src.store_chunk(changed)
    src.delete_by_idx(sample(4, offset=20)[["image_id", "model"]])
    src.store_chunk(sample(2, offset=40))
    run_steps(ds, steps)
    assert sum(calls) == 5, calls
    keep = sample(40)
    keep = keep[~keep["image_id"].isin([5, 6, 7, 20, 21, 22, 23])]
    expected = make_doc(pd.concat([keep, changed, sample(2, offset=40)], ignore_index=True))
    assert_datatable_equal(ds.get_table("docs"), expected)
    es_client.indices.refresh(index=target.index)
    assert es_client.count(index=target.index)["count"] == len(expected)

    calls.clear()
    run_steps(ds, steps)
    assert sum(calls) == 0
