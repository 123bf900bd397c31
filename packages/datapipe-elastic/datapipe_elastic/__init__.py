"""Elasticsearch backend for Datapipe: ``from datapipe_elastic import ElasticStore``.

``ElasticStore`` is imported lazily, so loading this package's plugin does not import ``elasticsearch``.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.16.0"
__all__ = ["ElasticStore"]

if TYPE_CHECKING:
    from datapipe_elastic.store import ElasticStore


def __getattr__(name: str) -> Any:
    if name == "ElasticStore":
        from datapipe_elastic.store import ElasticStore

        return ElasticStore
    raise AttributeError(f"module 'datapipe_elastic' has no attribute {name!r}")
