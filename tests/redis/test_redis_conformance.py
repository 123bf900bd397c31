"""RedisStore passes the store conformance kit, on a plain server and on a Redis Cluster."""

import pytest

from datapipe.testing.kit import AbstractBaseStoreTests


class TestRedisStore(AbstractBaseStoreTests):
    @pytest.fixture
    def store_maker(self, redis_store_maker):
        return redis_store_maker


class TestRedisClusterStore(AbstractBaseStoreTests):
    large_batch_size = 5_000

    @pytest.fixture
    def store_maker(self, redis_cluster_store_maker):
        return redis_cluster_store_maker
