"""The core's store conformance kit against QdrantStore (payload-only collections: the kit's
schemas have no vector column; vectors are covered in test_vectors.py)."""

from __future__ import annotations

import itertools
import uuid
from typing import Callable, Iterator

import pytest

from datapipe.testing.kit import AbstractBaseStoreTests
from datapipe.types import DataSchema
from datapipe_qdrant import CollectionParams, QdrantStore


class TestQdrantStoreConformance(AbstractBaseStoreTests):
    supported_types = ("int", "float", "str", "bool", "datetime", "json", "bytes")
    supported_key_types = ("int", "str", "float", "datetime")
    supports_composite_keys = True
    large_batch_size = 3_000

    @pytest.fixture
    def store_maker(self, qdrant_url: str) -> Iterator[Callable[[DataSchema], QdrantStore]]:
        if qdrant_url != ":memory:" and not qdrant_url.startswith("http"):
            # qdrant-client's embedded on-disk mode commits every point to SQLite separately (~10 ms each
            # with fsync): keep the large-batch test to 600 rows there (still several requests of 400).
            self.large_batch_size = 600
        counter = itertools.count()
        prefix = uuid.uuid4().hex[:8]
        made = []

        def make(schema: DataSchema) -> QdrantStore:
            store = QdrantStore(
                name=f"conf_{prefix}_{next(counter)}",
                url=qdrant_url,
                schema=schema,
                pk_field=None,
                embedding_field=None,
                collection_params=CollectionParams(),
                batch_size=400,
            )
            made.append(store)
            return store

        yield make
        for store in made:
            store.client.delete_collection(store.name)
