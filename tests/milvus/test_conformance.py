"""The core's store conformance kit against MilvusStore on embedded Milvus Lite (tables without
vectors: the kit's schemas have no vector column; vectors are covered in test_vectors.py)."""

from __future__ import annotations

import itertools
import uuid
from typing import Callable, Iterator

import pytest

from datapipe.testing.kit import AbstractBaseStoreTests
from datapipe.types import DataSchema
from datapipe_milvus import MilvusStore


class TestMilvusStoreConformance(AbstractBaseStoreTests):
    supported_types = ("int", "float", "str", "bool", "datetime", "json", "bytes")
    supported_key_types = ("int", "str", "float", "datetime")
    supports_composite_keys = True
    large_batch_size = 5_000

    @pytest.fixture
    def store_maker(self, milvus_uri: str) -> Iterator[Callable[[DataSchema], MilvusStore]]:
        counter = itertools.count()
        prefix = uuid.uuid4().hex[:8]
        made = []

        def make(schema: DataSchema) -> MilvusStore:
            name = f"conf_{prefix}_{next(counter)}"
            store = MilvusStore(milvus_uri, name, schema, embedding_field=None, batch_size=700)
            made.append(store)
            return store

        yield make
        for store in made:
            store.client.drop_collection(store.name)
