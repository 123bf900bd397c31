"""Pytest plugin shipped with datapipe-core (entry point ``pytest11: datapipe``).

Fixtures:

``postgres_server_url``
    session-wide PostgreSQL: ``POSTGRES_URL`` if set, else a throwaway server started from
    ``initdb``/``pg_ctl``. Missing binaries skip the test, except under ``CI=true`` where they fail.
``postgres_url``
    a fresh, empty database on that server for one test.
``dbconn``
    a ``DBConn`` parametrised over ``sqlite`` (a temp file) and ``postgres``.
``redis_url``
    session-wide Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server``.

The store conformance kit is ``datapipe.store.tests.abstract.AbstractBaseStoreTests``, also importable
as ``from datapipe.testing import AbstractBaseStoreTests`` (see that module for how to use it).
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from datapipe.store.tests.abstract import AbstractBaseStoreTests
from datapipe.tests.services import PostgresServer, RedisServer, ServiceUnavailable, create_database, in_ci

__all__ = ["AbstractBaseStoreTests"]


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not available: {error}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    if os.environ.get("POSTGRES_URL"):
        yield os.environ["POSTGRES_URL"]
        return
    server = PostgresServer()
    try:
        server.start()
    except ServiceUnavailable as e:
        server.stop()
        _unavailable("PostgreSQL", e)
    yield server.url
    server.stop()


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    return create_database(postgres_server_url)


@pytest.fixture(params=["sqlite", "postgres"])
def dbconn(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[object]:
    from datapipe.sql.connection import DBConn

    if request.param == "sqlite":
        conn = DBConn(f"sqlite:///{tmp_path}/db.sqlite")
    else:
        conn = DBConn(request.getfixturevalue("postgres_url"))
    yield conn
    conn.con.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer()
    try:
        server.start()
    except ServiceUnavailable as e:
        server.stop()
        _unavailable("Redis", e)
    yield server.url
    server.stop()
