"""End to end: SQL source -> BatchTransform computing vectors -> QdrantStore, incrementally, with the
metadata on SQLite and PostgreSQL (the shared suite ``datapipe.testing.vector_kit``)."""

from __future__ import annotations

import pytest

from datapipe.testing.vector_kit import AbstractVectorPipelineTests
from datapipe_qdrant import CollectionParams, QdrantStore


class TestQdrantPipeline(AbstractVectorPipelineTests):
    @pytest.fixture
    def vector_store_maker(self, qdrant_url, collection_name):
        def make(schema, dim):
            return QdrantStore(
                name=collection_name,
                url=qdrant_url,
                schema=schema,
                pk_field="id",
                embedding_field="embedding",
                collection_params=CollectionParams(size=dim, distance="Cosine"),
            )

        return make
