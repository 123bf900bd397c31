"""End to end: SQL source -> BatchTransform computing vectors -> MilvusStore (Milvus Lite), incrementally,
with the metadata on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd
from sqlalchemy import JSON, Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import TableStoreDB
from datapipe.types import IndexDF
from datapipe_milvus import MilvusStore

DIM = 8


def text_vector(text: str) -> List[float]:
    """A deterministic unit vector from the text's bytes (a stand-in for an embedding model)."""
    v = np.zeros(DIM)
    for i, byte in enumerate(text.encode()):
        v[(byte + i) % DIM] += 1 + (byte % 5)
    return (v / np.linalg.norm(v)).tolist()


def test_incremental_pipeline_into_milvus(dbconn, milvus_uri, collection_name):
    ds = DataStore(dbconn, create_meta_table=True)
    source = TableStoreDB(dbconn, "docs", [Column("id", Integer, primary_key=True), Column("text", String)], True)
    store = MilvusStore(
        uri=milvus_uri,
        name=collection_name,
        schema=[Column("id", Integer, primary_key=True), Column("text", String), Column("embedding", JSON)],
        embedding_field="embedding",
        dim=DIM,
        metric_type="COSINE",
    )
    seen: List[int] = []

    def embed(docs: pd.DataFrame) -> pd.DataFrame:
        seen.extend(docs["id"].tolist())
        return docs.assign(embedding=[text_vector(t) for t in docs["text"]])

    catalog = Catalog({"docs": Table(source), "vectors": Table(store)})
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(embed, ["docs"], ["vectors"], chunk_size=4)]))
    texts = {i: f"document number {i} about {'cats' if i % 2 else 'dogs'} {'!' * i}" for i in range(10)}
    docs = ds.get_table("docs")
    docs.store_chunk(pd.DataFrame({"id": list(texts), "text": list(texts.values())}))
    run_steps(ds, steps)
    assert sorted(seen) == list(range(10))

    def check(expected: dict) -> None:
        got = store.read_rows().sort_values("id")
        assert got["id"].tolist() == sorted(expected)
        assert got["text"].tolist() == [expected[i] for i in sorted(expected)]
        for i, vec in zip(got["id"], got["embedding"]):
            np.testing.assert_allclose(vec, text_vector(expected[i]), atol=1e-6)
        assert ds.get_table("vectors").get_size() == len(expected)
        for i in (min(expected), max(expected)):
            assert store.search(text_vector(expected[i]), limit=1)["id"].tolist() == [i]

    check(texts)

    seen.clear()
    run_steps(ds, steps)
    assert seen == [], "a rerun without changes must not call the function"

    texts[3] = "completely rewritten third document"
    texts[7] = "a new text for seven"
    texts[12] = "a brand new document"
    docs.store_chunk(pd.DataFrame({"id": [3, 7, 12], "text": [texts[3], texts[7], texts[12]]}))
    docs.delete_by_idx(IndexDF(pd.DataFrame({"id": [0, 5]})))
    del texts[0], texts[5]
    run_steps(ds, steps)
    assert sorted(seen) == [3, 7, 12], "only changed and new documents are embedded again"
    check(texts)
    hits = store.search(text_vector("completely rewritten third document"), limit=3)
    assert hits["id"].iloc[0] == 3 and 0 not in set(hits["id"]) and 5 not in set(hits["id"])
