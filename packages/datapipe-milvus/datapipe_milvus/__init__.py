"""Milvus backend for Datapipe: ``MilvusStore`` (Milvus server or embedded Milvus Lite).

Installing ``datapipe-milvus`` registers the store kind ``milvus`` with Datapipe's plugin
registry (entry point group ``datapipe``).
"""

from datapipe_milvus.store import MilvusStore

__all__ = ["MilvusStore"]
