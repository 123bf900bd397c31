"""Conversions between DataFrame columns and Milvus field values.

Column values go through the core's schema-driven JSON codec (``datapipe.store.json_codec``),
so they read back with the dtypes the SQL store would return: integers (INT64), floats (DOUBLE),
booleans (BOOL) and strings (VARCHAR) as they are, datetimes and dates as ISO-8601 text and bytes
as base64 (VARCHAR), JSON columns as JSON.
"""

from __future__ import annotations

import uuid
from typing import Any, List, Sequence

from datapipe.store.vectors import encode_values, key_uuid, records_frame, vectors_to_lists

__all__ = ["KEY_NAMESPACE", "encode_values", "key_strings", "records_frame", "vectors_to_lists"]

# Hidden primary key of non-integer keys: uuid5(KEY_NAMESPACE, compact JSON of the key tuple).
KEY_NAMESPACE = uuid.UUID("7d0c3f52-8a4e-5b1f-9c6d-2e8f4a1b3c5d")


def key_strings(key_values: Sequence[List[Any]]) -> List[str]:
    """The hidden VARCHAR primary key for each row: ``uuid5`` of the compact JSON key tuple.

    A uuid (hex and dashes only) rather than the key text, because pymilvus builds filter
    expressions from primary-key values without escaping quotes and backslashes.
    """
    return [key_uuid(KEY_NAMESPACE, row) for row in zip(*key_values)]


