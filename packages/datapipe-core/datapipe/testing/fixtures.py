"""Opt-in pytest fixtures: ``pytest_plugins = ["datapipe.testing.fixtures"]`` in a top-level conftest.py.

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

Missing services skip (or, under ``CI=true``, fail) through ``start_or_skip``, which store test
suites with servers of their own use too.
"""

from __future__ import annotations

import os
from typing import Iterator, TypeVar

import pytest

from datapipe.testing.services import PostgresServer, RedisServer, ServiceUnavailable, create_database, in_ci

Server = TypeVar("Server", PostgresServer, RedisServer)


def start_or_skip(server: Server, what: str) -> Server:
    """``server.start()``, or skip the test when the service cannot run here (fail under ``CI=true``)."""
    try:
        return server.start()
    except ServiceUnavailable as e:
        server.stop()
        message = f"{what} is not available: {e}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    if os.environ.get("POSTGRES_URL"):
        yield os.environ["POSTGRES_URL"]
        return
    server = start_or_skip(PostgresServer(), "PostgreSQL")
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
    server = start_or_skip(RedisServer(), "Redis")
    yield server.url
    server.stop()
