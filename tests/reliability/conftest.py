"""Fixtures of the reliability suite. ``RELIABILITY_RECORDS`` / ``RELIABILITY_KILLS`` scale the crash test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # crash_pipeline / killer / compare, also for the forkserver

RECORDS = int(os.environ.get("RELIABILITY_RECORDS", "5000"))
KILLS = int(os.environ.get("RELIABILITY_KILLS", "50"))


def redis_store_available() -> bool:
    try:
        import datapipe_redis  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgres"])
def meta_url_factory(request: pytest.FixtureRequest, tmp_path: Path):
    """Returns a function making fresh, empty metadata-database URLs of one kind."""
    counter = iter(range(1000))
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path}/db{next(counter)}.sqlite"
    from datapipe.testing.services import create_database

    server = request.getfixturevalue("postgres_server_url")
    return lambda: create_database(server)
