"""Fixtures for the Elasticsearch backend tests.

Store tests need a server: ``ELASTICSEARCH_URL`` (e.g. ``http://localhost:9200`` or
``https://elastic:password@host:9200``); ``ELASTICSEARCH_CA_CERTS`` names a CA bundle for TLS.
Without ``ELASTICSEARCH_URL`` the store test modules are skipped; the unit tests always run.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest
from sqlalchemy import Column

SKIP_REASON = "ELASTICSEARCH_URL is not set: Elasticsearch tests need a running server"


def es_kwargs_from_env() -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"hosts": [os.environ["ELASTICSEARCH_URL"]], "request_timeout": 30}
    if os.environ.get("ELASTICSEARCH_CA_CERTS"):
        kwargs["ca_certs"] = os.environ["ELASTICSEARCH_CA_CERTS"]
    return kwargs


@pytest.fixture(scope="session")
def es_kwargs() -> Dict[str, Any]:
    if not os.environ.get("ELASTICSEARCH_URL"):
        pytest.skip(SKIP_REASON)
    return es_kwargs_from_env()


@pytest.fixture
def es_client(es_kwargs: Dict[str, Any]) -> Iterator[Any]:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(**es_kwargs)
    yield client
    client.close()


@pytest.fixture
def index_names(es_client: Any) -> Iterator[Callable[[], str]]:
    """``new()`` -> a fresh lowercase index name; every index named here is deleted after the test."""
    run = uuid.uuid4().hex[:10]
    counter = itertools.count()
    used: List[str] = []

    def new() -> str:
        name = f"datapipe-test-{run}-{next(counter)}"
        used.append(name)
        return name

    yield new
    for name in used:
        es_client.options(ignore_status=404).indices.delete(index=name)


@pytest.fixture
def elastic_store_maker(es_kwargs: Dict[str, Any], index_names: Callable[[], str]) -> Callable[..., Any]:
    """``make(schema, **kwargs)`` -> a fresh ``ElasticStore`` on a new index."""
    from datapipe_elastic import ElasticStore

    def make(data_sql_schema: List[Column], **kwargs: Any) -> Any:
        return ElasticStore(index_names(), data_sql_schema, es_kwargs, **kwargs)

    return make
