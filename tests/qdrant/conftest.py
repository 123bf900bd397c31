"""Qdrant test fixtures: embedded ``:memory:``, embedded on a local path, and a server from ``QDRANT_URL``."""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Iterator

import pytest

from datapipe_qdrant.client import close_embedded_clients

_counter = itertools.count()


@pytest.fixture(params=["memory", "path", "server"])
def qdrant_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Where a test's Qdrant lives; every variant of a test runs against all three."""
    if request.param == "memory":
        yield ":memory:"
    elif request.param == "path":
        yield str(tmp_path_factory.mktemp("qdrant"))
        close_embedded_clients()
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip("QDRANT_URL is not set")
        yield url


@pytest.fixture
def collection_name() -> str:
    """A collection name no other test uses (the in-memory Qdrant is shared within the process)."""
    return f"t{next(_counter)}_{uuid.uuid4().hex[:8]}"
