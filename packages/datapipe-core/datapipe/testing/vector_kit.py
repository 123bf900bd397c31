"""The shared end-to-end suite for vector stores (Qdrant, Milvus, third-party ones).

A vector store test module subclasses ``AbstractVectorPipelineTests`` and provides a fixture
``vector_store_maker`` returning ``make(schema, dim) -> store``, where the store holds the
columns of ``schema`` (``id`` key, ``text``, ``embedding`` as JSON list of floats) and has
``search(vector, limit) -> DataFrame``. The suite runs an incremental pipeline (SQL source ->
``BatchTransform`` computing vectors -> the store) on the ``dbconn`` fixture's metadata database
and checks first run, no-op rerun, edits, inserts and deletions, and search results::

    class TestQdrantPipeline(AbstractVectorPipelineTests):
        @pytest.fixture
        def vector_store_maker(self, qdrant_url, collection_name):
            def make(schema, dim):
                return QdrantStore(name=collection_name, url=qdrant_url, schema=schema, pk_field="id",
                                   embedding_field="embedding", collection_params=CollectionParams(size=dim))
            return make
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np
import pandas as pd
from sqlalchemy import JSON, Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import TableStoreDB
from datapipe.types import IndexDF

DIM = 8
VectorStoreMaker = Callable[[List[Column], int], Any]


def text_vector(text: str) -> List[float]:
    """A deterministic unit vector from the text's bytes (a stand-in for an embedding model)."""
    v = np.zeros(DIM)
    for i, byte in enumerate(text.encode()):
        v[(byte + i) % DIM] += 1 + (byte % 5)
    return (v / np.linalg.norm(v)).tolist()


def vector_schema() -> List[Column]:
    return [Column("id", Integer, primary_key=True), Column("text", String), Column("embedding", JSON)]


class AbstractVectorPipelineTests:
    """Subclass and provide ``vector_store_maker``; see the module docstring."""

    def test_incremental_pipeline_into_vector_store(self, dbconn: Any, vector_store_maker: VectorStoreMaker) -> None:
        ds = DataStore(dbconn, create_meta_table=True)
        source = TableStoreDB(dbconn, "docs", [Column("id", Integer, primary_key=True), Column("text", String)], True)
        store = vector_store_maker(vector_schema(), DIM)
        seen: List[int] = []

        def embed(docs: pd.DataFrame) -> pd.DataFrame:
            seen.extend(docs["id"].tolist())
            vectors = pd.Series([text_vector(t) for t in docs["text"]], index=docs.index, dtype=object)
            return docs.assign(embedding=vectors)

        catalog = Catalog({"docs": Table(source), "vectors": Table(store)})
        steps = build_compute(ds, catalog, Pipeline([BatchTransform(embed, ["docs"], ["vectors"], chunk_size=4)]))
        texts = {i: f"document number {i} about {'cats' if i % 2 else 'dogs'} {'!' * i}" for i in range(10)}
        docs = ds.get_table("docs")
        docs.store_chunk(pd.DataFrame({"id": list(texts), "text": list(texts.values())}))
        run_steps(ds, steps)
        assert sorted(seen) == list(range(10))
        self._check(ds, store, texts)

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
        self._check(ds, store, texts)
        hits = store.search(text_vector("completely rewritten third document"), limit=3)
        assert hits["id"].iloc[0] == 3 and 0 not in set(hits["id"]) and 5 not in set(hits["id"])

    @staticmethod
    def _check(ds: DataStore, store: Any, expected: Dict[int, str]) -> None:
        got = store.read_rows().sort_values("id")
        assert got["id"].tolist() == sorted(expected)
        assert got["text"].tolist() == [expected[i] for i in sorted(expected)]
        for i, vec in zip(got["id"], got["embedding"]):
            np.testing.assert_allclose(vec, text_vector(expected[i]), atol=1e-6)
        assert ds.get_table("vectors").get_size() == len(expected)
        for i in (min(expected), max(expected)):
            assert store.search(text_vector(expected[i]), limit=1)["id"].tolist() == [i]
