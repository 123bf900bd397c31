"""MilvusStore behaviour beyond the conformance kit: vectors, search, keys, errors, pickling, plugin."""

from __future__ import annotations

import pickle
from typing import List

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import JSON, Column, Integer, String

from datapipe.plugins import create_table_store, list_plugins
from datapipe.store.table_store import StoreError
from datapipe.testing.services import free_port
from datapipe.types import IndexDF
from datapipe_milvus import MilvusStore

# Exactly representable in float32, so vectors compare equal after the round trip.
VECTORS = np.array(
    [[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 1.0], [0.0, 0.125, 0.0, 2.0]],
    dtype="float32",
)


def schema(key_type=Integer) -> List[Column]:
    return [
        Column("id", key_type, primary_key=True),
        Column("text", String(200)),
        Column("category", String),
        Column("embedding", JSON),
    ]


def frame(keys) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": keys,
            "text": [f"doc {k}" for k in keys],
            "category": ["a" if i % 2 else "b" for i in range(len(keys))],
            "embedding": [VECTORS[i % len(VECTORS)] for i in range(len(keys))],
        }
    )


def make_store(uri: str, name: str, key_type=Integer, **kwargs) -> MilvusStore:
    kwargs.setdefault("metric_type", "IP")
    return MilvusStore(uri, name, schema(key_type), embedding_field="embedding", dim=4, **kwargs)


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("id").reset_index(drop=True)


@pytest.mark.parametrize(
    "key_type,keys", [(Integer, [3, -1, 7, 2**40, 2]), (String, ["x", 'q"uote', "zé", "b\\s", "1"])]
)
def test_vectors_roundtrip_and_search(milvus_uri, collection_name, key_type, keys):
    store = make_store(milvus_uri, collection_name, key_type)
    df = frame(keys)
    store.insert_rows(df)
    got = by_id(store.read_rows())
    want = by_id(df)
    for col in ("id", "text", "category"):
        assert got[col].tolist() == want[col].tolist()
    for g, w in zip(got["embedding"], want["embedding"]):
        assert isinstance(g, list) and g == w.tolist()
    # lists in, lists out as well; re-inserting replaces
    store.insert_rows(df.assign(embedding=[v.tolist() for v in df["embedding"]], text="again"))
    assert sorted(store.read_rows()["text"]) == ["again"] * len(keys)
    assert sorted(store.read_rows(IndexDF(df[["id"]].iloc[[1, 3]]))["id"]) == sorted(df["id"].iloc[[1, 3]])

    hits = store.search(VECTORS[2] * 3, limit=2)
    assert list(hits.columns) == ["id", "text", "category", "score"]
    assert hits["id"].iloc[0] == keys[2]
    assert hits["score"].iloc[0] >= hits["score"].iloc[1]
    hits = store.search(VECTORS[2], limit=5, filter='category == "b"', with_vectors=True)
    assert set(hits["category"]) == {"b"} and hits["embedding"].iloc[0] == VECTORS[2].tolist()

    store.delete_rows(IndexDF(df[["id"]].iloc[[0, 2]]))
    assert sorted(store.read_rows()["id"]) == sorted(df["id"].iloc[[1, 3, 4]])


@pytest.mark.parametrize("metric,index", [("L2", "FLAT"), ("COSINE", "IVF_FLAT")])
def test_metric_and_index(milvus_uri, collection_name, metric, index):
    params = {"nlist": 4} if index == "IVF_FLAT" else {}
    store = make_store(milvus_uri, collection_name, metric_type=metric, index_type=index, index_params=params)
    store.insert_rows(frame([1, 2, 3, 4, 5]))
    assert store.search(VECTORS[3] + 0.01, limit=1)["id"].tolist() == [4]
    index_info = store.client.describe_index(collection_name, index_name="embedding")
    assert index_info["index_type"] == index and index_info["metric_type"] == metric


def test_bad_input_is_rejected_and_nothing_is_written(milvus_uri, collection_name):
    store = make_store(milvus_uri, collection_name)
    store.insert_rows(frame([1]))
    with pytest.raises(ValueError, match=f"{collection_name}.*dimension 2.*expects 4"):
        store.insert_rows(frame([2, 3]).assign(embedding=[[1.0, 2.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="null vectors"):
        store.insert_rows(frame([2, 3]).assign(embedding=[None, VECTORS[0]]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['category'\]"):
        store.insert_rows(frame([2]).drop(columns=["category"]))
    with pytest.raises(ValueError, match="null values in primary key"):
        store.insert_rows(frame([2, 3]).assign(id=[2, None]))
    with pytest.raises(ValueError, match="duplicate primary keys"):
        store.insert_rows(frame([2, 2]))
    assert store.read_rows()["id"].tolist() == [1]


def test_configuration_errors(milvus_uri, collection_name):
    with pytest.raises(ValueError, match="dim .* is required"):
        MilvusStore(milvus_uri, collection_name, schema(), embedding_field="embedding")
    with pytest.raises(ValueError, match="embedding_field 'vec' is not in the schema"):
        MilvusStore(milvus_uri, collection_name, schema(), embedding_field="vec", dim=4)
    with pytest.raises(ValueError, match="not valid Milvus field names"):
        MilvusStore(milvus_uri, collection_name, schema() + [Column("bad-name", String)], "embedding", 4)
    with pytest.raises(ValueError, match="ending in '.db'"):
        MilvusStore("/tmp/some/dir", collection_name, schema(), "embedding", 4)


def test_server_errors_name_store_collection_and_address_without_token(collection_name):
    port = free_port()
    store = MilvusStore(
        f"http://127.0.0.1:{port}",
        collection_name,
        schema(),
        "embedding",
        4,
        token="root:very-secret-pw",
        client_kwargs={"timeout": 3},
    )
    with pytest.raises(StoreError) as err:
        store.insert_rows(frame([1]))
    message = str(err.value)
    assert "MilvusStore" in message and repr(collection_name) in message
    assert f"http://127.0.0.1:{port}" in message
    assert "very-secret-pw" not in message


def test_pickle_and_second_store_share_the_lite_server(milvus_uri, collection_name):
    store = make_store(milvus_uri, collection_name)
    store.insert_rows(frame([1, 2]))
    clone = pickle.loads(pickle.dumps(store))
    clone.insert_rows(frame([3]))
    other = make_store(milvus_uri, collection_name)
    assert sorted(other.read_rows()["id"]) == [1, 2, 3]
    assert clone.client is store.client


def test_plugin_registration(milvus_uri, collection_name):
    info = {p.distribution: p for p in list_plugins()}
    assert info["datapipe-milvus"].store_kinds == ["milvus"] and info["datapipe-milvus"].error is None
    store = create_table_store(
        "milvus", uri=milvus_uri, name=collection_name, schema=schema(), embedding_field="embedding", dim=4
    )
    assert isinstance(store, MilvusStore)
    store.insert_rows(frame([1]))
    assert store.read_rows()["id"].tolist() == [1]
