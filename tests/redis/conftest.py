"""Fixtures for the Redis backend tests: store makers, a password-protected server and a one-node cluster."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import Callable, Iterator, List

import pytest
from sqlalchemy import Column

from datapipe.testing.fixtures import start_or_skip
from datapipe.testing.services import RedisServer, free_port
from datapipe_redis import RedisStore

StoreMaker = Callable[[List[Column]], RedisStore]


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of the test's own (e.g. so command counts are not disturbed by anyone else)."""
    server = start_or_skip(RedisServer(), "Redis")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_password_server() -> Iterator[RedisServer]:
    """A server that requires the password ``s3cret-pw``."""
    server = start_or_skip(RedisServer("--requirepass", "s3cret-pw"), "Redis")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A one-node Redis Cluster owning every hash slot (``REDIS_CLUSTER_URL`` overrides)."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    import redis

    server = RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    # The cluster bus listens on port+10000: pick a port where that is valid and free (any Redis version).
    while server.port + 10000 > 65535 or not _port_free(server.port + 10000):
        server.port = free_port()
    server = start_or_skip(server, "Redis")
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        deadline = time.monotonic() + 20
        while client.cluster("info")["cluster_state"] != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node Redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        yield server.url
    finally:
        client.close()
        server.stop()


def _maker(url: str, **kwargs: object) -> StoreMaker:
    run = uuid.uuid4().hex[:8]
    counter = itertools.count()

    def make(data_sql_schema: List[Column]) -> RedisStore:
        return RedisStore(url, f"test-{run}-{next(counter)}", data_sql_schema, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def redis_store_maker(redis_url: str) -> StoreMaker:
    """``make(schema)`` -> a fresh, empty ``RedisStore`` (a new hash name) on the test server."""
    return _maker(redis_url)


@pytest.fixture
def redis_cluster_store_maker(redis_cluster_url: str) -> StoreMaker:
    return _maker(redis_cluster_url, cluster_mode=True)
