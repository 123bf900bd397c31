"""Qdrant backend for Datapipe: ``QdrantStore``, ``QdrantShardedStore`` and ``CollectionParams``.

Installing ``datapipe-qdrant`` registers the store kinds ``qdrant`` and ``qdrant_sharded`` with
Datapipe's plugin registry (entry point group ``datapipe``).
"""

from datapipe_qdrant.params import CollectionParams
from datapipe_qdrant.store import QdrantShardedStore, QdrantStore

__all__ = ["CollectionParams", "QdrantShardedStore", "QdrantStore"]
