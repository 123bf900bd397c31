"""Datapipe plugin module of datapipe-milvus (entry point ``datapipe: milvus``).

The store class is given as a ``"module:attr"`` string, so pymilvus is imported only when a
Milvus store is actually created.
"""

from __future__ import annotations

from typing import Dict

from datapipe.hookspecs import Factory, hookimpl


@hookimpl
def datapipe_table_stores() -> Dict[str, Factory]:
    """Store kind ``milvus``: ``datapipe_milvus.MilvusStore``."""
    return {"milvus": "datapipe_milvus.store:MilvusStore"}
