"""Datapipe plugin module of datapipe-qdrant (entry point ``datapipe: qdrant``).

Store classes are given as ``"module:attr"`` strings, so qdrant-client is imported only
when a Qdrant store is actually created.
"""

from __future__ import annotations

from typing import Dict

from datapipe.hookspecs import Factory, hookimpl


@hookimpl
def datapipe_table_stores() -> Dict[str, Factory]:
    """Store kinds ``qdrant`` (one collection) and ``qdrant_sharded`` (a collection per shard)."""
    return {
        "qdrant": "datapipe_qdrant.store:QdrantStore",
        "qdrant_sharded": "datapipe_qdrant.store:QdrantShardedStore",
    }
