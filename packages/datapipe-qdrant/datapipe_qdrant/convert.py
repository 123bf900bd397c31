"""Conversions between DataFrame columns and Qdrant payloads / point ids.

Column values go through the core's schema-driven JSON codec (``datapipe.store.json_codec``),
so they read back with the dtypes the SQL store would return: integers, floats, booleans and
strings as JSON values, datetimes as ISO-8601 text, bytes as base64, JSON columns as JSON.
"""

from __future__ import annotations

import uuid
from typing import Any, List, Sequence

from datapipe.store.vectors import encode_values, key_uuid, records_frame, vectors_to_lists

__all__ = ["KEY_NAMESPACE", "encode_values", "point_ids", "records_frame", "vectors_to_lists"]

# Point ids of non-integer keys: uuid5(KEY_NAMESPACE, compact JSON of the key tuple).
KEY_NAMESPACE = uuid.UUID("2f5bd8c4-6c1e-5d6c-9e0a-6b1f3a9d7c21")
_MAX_UINT64 = 2**64 - 1


def point_ids(key_values: Sequence[List[Any]], int_passthrough: bool) -> List[Any]:
    """Deterministic Qdrant point ids for rows whose encoded key values are ``key_values`` (one list per key).

    With a single integer key (``int_passthrough``), values in ``[0, 2**64)`` are used as they are;
    every other key (strings, composite keys, negative integers, floats, datetimes) maps to
    ``uuid5(KEY_NAMESPACE, json.dumps([v1, v2, ...], separators=(",", ":"), ensure_ascii=False))``
    where the values are the encoded payload values (datetimes as ISO strings).
    """
    if int_passthrough and len(key_values) == 1:
        return [v if 0 <= v <= _MAX_UINT64 else key_uuid(KEY_NAMESPACE, [v]) for v in key_values[0]]
    return [key_uuid(KEY_NAMESPACE, row) for row in zip(*key_values)]
