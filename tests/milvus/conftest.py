"""Milvus test fixtures: one embedded Milvus Lite database file per test session (starting Milvus
Lite takes a few seconds), a fresh collection name per test."""

from __future__ import annotations

import itertools
import uuid
from typing import Iterator

import pytest

from datapipe_milvus.client import close_clients

_counter = itertools.count()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus Lite file URI (embedded Milvus, no server needed)."""
    yield str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    close_clients()


@pytest.fixture
def collection_name() -> str:
    return f"t{next(_counter)}_{uuid.uuid4().hex[:8]}"
