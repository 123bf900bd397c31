"""QdrantStore / QdrantShardedStore behaviour beyond the conformance kit: vectors, point ids,
similarity search, sharding, errors, pickling and plugin registration."""

from __future__ import annotations

import json
import pickle
import uuid
from typing import List

import numpy as np
import pandas as pd
import pytest
from qdrant_client import models
from sqlalchemy import JSON, Column, Integer, String

from datapipe.plugins import create_table_store, list_plugins
from datapipe.store.table_store import StoreError
from datapipe.testing.services import free_port
from datapipe.types import IndexDF
from datapipe_qdrant import CollectionParams, QdrantShardedStore, QdrantStore
from datapipe_qdrant.convert import KEY_NAMESPACE

# Exactly representable in float32, so vectors compare equal after the round trip.
VECTORS = np.array(
    [[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 1.0], [0.0, 0.125, 0.0, 2.0]],
    dtype="float32",
)


def schema(key_type=Integer) -> List[Column]:
    return [
        Column("id", key_type, primary_key=True),
        Column("text", String),
        Column("category", String),
        Column("embedding", JSON),
    ]


def frame(keys) -> pd.DataFrame:
    n = len(keys)
    return pd.DataFrame(
        {
            "id": keys,
            "text": [f"doc {k}" for k in keys],
            "category": ["a" if i % 2 else "b" for i in range(n)],
            "embedding": [VECTORS[i % len(VECTORS)] for i in range(n)],
        }
    )


def make_store(url: str, name: str, key_type=Integer, **kwargs) -> QdrantStore:
    params = kwargs.pop("collection_params", CollectionParams(size=4, distance="Dot"))
    return QdrantStore(name, url, schema(key_type), "id", "embedding", params, **kwargs)


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("id").reset_index(drop=True)


@pytest.mark.parametrize("key_type,keys", [(Integer, [3, 1, 7, 10, 2]), (String, ["x", "y", "zé", "w", "1"])])
def test_vectors_roundtrip_and_search(qdrant_url, collection_name, key_type, keys):
    store = make_store(qdrant_url, collection_name, key_type)
    df = frame(keys)
    store.insert_rows(df)
    got = by_id(store.read_rows())
    want = by_id(df)
    for col in ("id", "text", "category"):
        assert got[col].tolist() == want[col].tolist()
    for g, w in zip(got["embedding"], want["embedding"]):
        assert isinstance(g, list) and g == w.tolist()
    # lists in, lists out as well
    store.insert_rows(df.assign(embedding=[v.tolist() for v in df["embedding"]]))
    assert len(store.read_rows()) == len(df)

    hits = store.search(VECTORS[2] * 3, limit=2)
    assert list(hits.columns) == ["id", "text", "category", "score"]
    assert hits["id"].iloc[0] == keys[2]
    assert hits["score"].iloc[0] >= hits["score"].iloc[1]
    hits = store.search(
        VECTORS[2],
        limit=5,
        query_filter=models.Filter(must=[models.FieldCondition(key="category", match=models.MatchValue(value="b"))]),
        with_vectors=True,
    )
    assert set(hits["category"]) == {"b"} and hits["embedding"].iloc[0] == VECTORS[2].tolist()


def test_named_vector_and_payload_index(qdrant_url, collection_name):
    params = CollectionParams(vectors={"embedding": models.VectorParams(size=4, distance=models.Distance.EUCLID)})
    store = make_store(qdrant_url, collection_name, collection_params=params, index_schema={"category": "keyword"})
    df = frame([1, 2, 3])
    store.insert_rows(df)
    got = by_id(store.read_rows(IndexDF(pd.DataFrame({"id": [2, 3, 99]}))))
    assert got["id"].tolist() == [2, 3]
    assert got["embedding"].tolist() == [VECTORS[1].tolist(), VECTORS[2].tolist()]
    assert store.search(VECTORS[0] + 0.01, limit=1)["id"].tolist() == [1]
    info = store.client.get_collection(collection_name)
    assert "embedding" in info.config.params.vectors
    if qdrant_url.startswith("http"):  # embedded Qdrant accepts but does not keep payload indexes
        assert "category" in info.payload_schema


def test_point_ids_are_deterministic(qdrant_url, collection_name):
    ints = make_store(qdrant_url, collection_name)
    ints.insert_rows(frame([5, 2**40, -3]))
    found = ints.client.retrieve(collection_name, ids=[5, 2**40])
    assert sorted(r.id for r in found) == [5, 2**40]
    negative = str(uuid.uuid5(KEY_NAMESPACE, json.dumps([-3])))
    assert [r.payload["id"] for r in ints.client.retrieve(collection_name, ids=[negative])] == [-3]

    strs = make_store(qdrant_url, collection_name + "_s", String)
    strs.insert_rows(frame(["a", "b"]))
    expected_id = str(uuid.uuid5(KEY_NAMESPACE, json.dumps(["a"])))
    assert [r.payload["id"] for r in strs.client.retrieve(collection_name + "_s", ids=[expected_id])] == ["a"]
    # a second store object on the same collection addresses the same points
    again = make_store(qdrant_url, collection_name + "_s", String)
    again.insert_rows(frame(["a"]).assign(text="changed"))
    assert by_id(strs.read_rows())["text"].tolist() == ["changed", "doc b"]


def test_bad_input_is_rejected_and_nothing_is_written(qdrant_url, collection_name):
    store = make_store(qdrant_url, collection_name)
    store.insert_rows(frame([1]))
    bad_dim = frame([2, 3]).assign(embedding=[[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match=f"{collection_name}.*dimension 2.*expects 4"):
        store.insert_rows(bad_dim)
    with pytest.raises(ValueError, match="null vectors"):
        store.insert_rows(frame([2, 3]).assign(embedding=[None, VECTORS[0]]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['category'\]"):
        store.insert_rows(frame([2]).drop(columns=["category"]))
    with pytest.raises(ValueError, match="null values in primary key"):
        store.insert_rows(frame([2, 3]).assign(id=[2, None]))
    with pytest.raises(ValueError, match="duplicate primary keys"):
        store.insert_rows(frame([2, 2]))
    assert store.read_rows()["id"].tolist() == [1]


def test_configuration_errors(collection_name):
    with pytest.raises(ValueError, match="embedding_field 'vec' is not in the schema"):
        QdrantStore(collection_name, ":memory:", schema(), "id", "vec", CollectionParams(size=4))
    with pytest.raises(ValueError, match="collection_params must define the vectors"):
        QdrantStore(collection_name, ":memory:", schema(), "id", "embedding", CollectionParams())
    with pytest.raises(ValueError, match=r"primary key column\(s\) \['nope'\]"):
        QdrantStore(collection_name, ":memory:", schema(), "nope", "embedding", CollectionParams(size=4))
    with pytest.raises(ValueError, match="must be primary-key columns"):
        QdrantShardedStore("c_{category}", ":memory:", schema(), "id", "embedding", CollectionParams(size=4))


def test_server_errors_name_store_collection_and_address_without_api_key(collection_name):
    port = free_port()
    store = QdrantStore(
        collection_name,
        f"http://127.0.0.1:{port}",
        schema(),
        "id",
        "embedding",
        CollectionParams(size=4),
        api_key="very-secret-key",
        client_kwargs={"timeout": 5},
    )
    for action in (lambda: store.insert_rows(frame([1])), lambda: store.read_rows(), store.read_rows):
        with pytest.raises(StoreError) as err:
            action()
        message = str(err.value)
        assert "QdrantStore" in message and repr(collection_name) in message
        assert f"http://127.0.0.1:{port}" in message
        assert "very-secret-key" not in message
    clone = pickle.loads(pickle.dumps(store))
    assert clone.api_key == "very-secret-key" and clone._server_client is None


def test_pickled_store_shares_the_embedded_client(qdrant_url, collection_name):
    if qdrant_url.startswith("http"):
        pytest.skip("embedded modes only")
    store = make_store(qdrant_url, collection_name)
    store.insert_rows(frame([1, 2]))
    clone = pickle.loads(pickle.dumps(store))
    # a second store on the same local path must not open the path again (qdrant-client would refuse)
    other = make_store(qdrant_url, collection_name + "_other")
    other.insert_rows(frame([9]))
    clone.insert_rows(frame([3]))
    assert sorted(store.read_rows()["id"]) == [1, 2, 3]
    assert clone.client is store.client is other.client


def test_sharded_store(qdrant_url, collection_name):
    pattern = collection_name + "_tenant_{tenant}"
    cols = [Column("tenant", Integer, primary_key=True)] + schema(String)
    params = CollectionParams(size=4, distance="Dot")
    store = QdrantShardedStore(pattern, qdrant_url, cols, ["tenant", "id"], "embedding", params)
    assert store.primary_keys == ["tenant", "id"]
    df = pd.concat([frame(["a", "b", "c"]).assign(tenant=t) for t in (1, 2, 3)], ignore_index=True)
    store.insert_rows(df)
    names = {c.name for c in store.client.get_collections().collections}
    assert {f"{collection_name}_tenant_{t}" for t in (1, 2, 3)} <= names
    point_id = str(uuid.uuid5(KEY_NAMESPACE, json.dumps([2, "b"], separators=(",", ":"))))
    assert len(store.client.retrieve(f"{collection_name}_tenant_2", ids=[point_id])) == 1

    idx = pd.DataFrame({"tenant": [1, 3, 3, 2], "id": ["a", "b", "zz", "c"]})
    got = store.read_rows(IndexDF(idx)).sort_values(["tenant", "id"])
    assert list(zip(got["tenant"], got["id"])) == [(1, "a"), (2, "c"), (3, "b")]
    assert len(store.read_rows()) == 9
    chunks = list(store.read_rows_meta_pseudo_df(chunksize=2))
    assert all(len(c) <= 2 for c in chunks) and sum(len(c) for c in chunks) == 9

    store.delete_rows(IndexDF(pd.DataFrame({"tenant": [1, 3], "id": ["a", "b"]})))
    rest = store.read_rows()
    assert len(rest) == 7 and (1, "a") not in set(zip(rest["tenant"], rest["id"]))
    hits = store.search({"tenant": 2}, VECTORS[1], limit=1)
    assert hits[["tenant", "id"]].values.tolist() == [[2, "b"]]
    clone = pickle.loads(pickle.dumps(store))
    assert len(clone.read_rows()) == 7


def test_plugin_registration(collection_name):
    info = {p.distribution: p for p in list_plugins()}
    assert info["datapipe-qdrant"].store_kinds == ["qdrant", "qdrant_sharded"]
    assert info["datapipe-qdrant"].error is None
    store = create_table_store(
        "qdrant",
        name=collection_name,
        url=":memory:",
        schema=schema(),
        pk_field="id",
        embedding_field="embedding",
        collection_params=CollectionParams(size=4),
    )
    assert isinstance(store, QdrantStore)
    sharded = create_table_store(
        "qdrant_sharded",
        name_pattern=collection_name + "_{id}",
        url=":memory:",
        schema=schema(),
        pk_field="id",
        embedding_field="embedding",
        collection_params=CollectionParams(size=4),
    )
    assert isinstance(sharded, QdrantShardedStore)


def test_local_path_store_in_another_process(tmp_path, collection_name):
    """A pickled local-path store works in another process once this one releases the directory,
    and gives a clear StoreError while this process still holds it."""
    import subprocess
    import sys

    from datapipe_qdrant.client import close_embedded_clients

    store = make_store(str(tmp_path / "q"), collection_name)
    store.insert_rows(frame([1, 2, 3]))
    (tmp_path / "store.pkl").write_bytes(pickle.dumps(store))
    script = (
        "import pickle, sys\n"
        "from datapipe.store.table_store import StoreError\n"
        f"store = pickle.loads(open({str(tmp_path / 'store.pkl')!r}, 'rb').read())\n"
        "try:\n"
        "    print(sorted(store.read_rows()['id']))\n"
        "except StoreError as e:\n"
        "    print('StoreError', e)\n"
    )
    held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert held.stdout.startswith("StoreError"), held.stdout + held.stderr
    assert repr(collection_name) in held.stdout and "already accessed" in held.stdout
    close_embedded_clients()
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert free.stdout.strip() == "[1, 2, 3]", free.stdout + free.stderr
