"""Fixtures for the Redis backend tests: store makers, a password-protected server and a one-node cluster."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Callable, Iterator, List, Optional

import pytest
from sqlalchemy import Column

from datapipe.tests.services import ServiceUnavailable, free_port, in_ci
from datapipe_redis import RedisStore

StoreMaker = Callable[[List[Column]], RedisStore]


class ExtraRedisServer:
    """A throwaway ``redis-server`` with extra arguments (``--requirepass``, cluster mode)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="datapipe-redis-test-")
        self.args = list(args)
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ExtraRedisServer:
        import redis

        binary = shutil.which("redis-server")
        if not binary:
            raise ServiceUnavailable("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Wait until the server answers (a readiness poll with a deadline, not a fixed sleep).
        deadline = time.monotonic() + 10
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        while True:
            if self.proc.poll() is not None:
                raise ServiceUnavailable(f"redis-server exited with code {self.proc.returncode}")
            try:
                client.ping()
                break
            except redis.exceptions.AuthenticationError:
                break  # up, and wants a password
            except redis.exceptions.ResponseError as e:
                if "NOAUTH" in str(e):
                    break
                raise
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"redis-server did not answer on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_or_skip(server: ExtraRedisServer) -> ExtraRedisServer:
    try:
        return server.start()
    except ServiceUnavailable as e:
        server.stop()
        if in_ci():
            pytest.fail(f"Redis is not available: {e} (CI=true: a missing service is a failure, not a skip)")
        pytest.skip(f"Redis is not available: {e}")


@pytest.fixture
def private_redis() -> Iterator[ExtraRedisServer]:
    """A server of the test's own (e.g. so command counts are not disturbed by anyone else)."""
    server = _start_or_skip(ExtraRedisServer())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_password_server() -> Iterator[ExtraRedisServer]:
    """A server that requires the password ``s3cret-pw``."""
    server = _start_or_skip(ExtraRedisServer("--requirepass", "s3cret-pw"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A one-node Redis Cluster owning every hash slot (``REDIS_CLUSTER_URL`` overrides)."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    import redis

    server = ExtraRedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    # The cluster bus listens on port+10000: pick a port where that is valid and free (any Redis version).
    while server.port + 10000 > 65535 or not _port_free(server.port + 10000):
        server.port = free_port()
    server = _start_or_skip(server)
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
