"""End to end: SQL source -> BatchTransform computing vectors -> MilvusStore (Milvus Lite), incrementally,
with the metadata on SQLite and PostgreSQL (the shared suite ``datapipe.testing.vector_kit``)."""

from __future__ import annotations

import pytest

from datapipe.testing.vector_kit import AbstractVectorPipelineTests
from datapipe_milvus import MilvusStore


class TestMilvusPipeline(AbstractVectorPipelineTests):
    @pytest.fixture
    def vector_store_maker(self, milvus_uri, collection_name):
        def make(schema, dim):
            return MilvusStore(
                uri=milvus_uri,
                name=collection_name,
                schema=schema,
                embedding_field="embedding",
                dim=dim,
                metric_type="COSINE",
            )

        return make
