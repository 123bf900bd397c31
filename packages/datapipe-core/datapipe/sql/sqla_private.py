"""Every use of a private SQLAlchemy API in Datapipe, in one place, each with why.

They exist for speed on the hot paths (reading and writing thousands of rows per batch) and for
custom SQL constructs. SQLAlchemy may change them in any release, so ``pyproject.toml`` caps
SQLAlchemy below the minor release after the tested one (2.1), and ``tests/core/test_sqla_private.py``
fails loudly if one of them disappears; everything else in Datapipe uses public API only.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from sqlalchemy import Column
from sqlalchemy.engine import CursorResult
from sqlalchemy.sql.visitors import InternalTraversal


def has_result_processors(result: CursorResult[Any]) -> Optional[bool]:
    """Whether any column of ``result`` converts the driver's values (None when unknown).

    Private: ``CursorResult._metadata._processors``. When no column has a processor, the driver's
    own tuples can be fetched from ``result.cursor`` directly, skipping SQLAlchemy's ``Row`` objects.
    """
    processors = getattr(result._metadata, "_processors", None)
    return None if processors is None else any(processors)


def bind_processor(sql_type: Any, dialect: Any) -> Optional[Callable[[Any], Any]]:
    """The type's parameter conversion for ``dialect``, cached per dialect.

    Private: ``TypeEngine._cached_bind_processor`` (the public ``bind_processor`` builds a new one
    on every call). Used to convert whole value lists for bulk writes without statement objects.
    """
    return sql_type._cached_bind_processor(dialect)  # type: ignore[no-any-return]


def copy_column(col: Column[Any]) -> Column[Any]:
    """A copy of ``col`` not bound to any table.

    Private: ``Column._copy`` (the public ``Column.copy`` is deprecated in SQLAlchemy 2.0 and warns).
    """
    return col._copy()


def traverse(*fields: Tuple[str, str]) -> List[Tuple[str, Any]]:
    """``_traverse_internals`` of a custom ``ColumnElement``: its fields and how to compare them.

    Private: ``InternalTraversal`` and the ``_traverse_internals`` attribute, which SQLAlchemy's
    statement cache uses to build cache keys of custom constructs (``inherit_cache = True``).
    ``fields`` are ``(attribute, "clauseelement" | "clauseelement_list")``.
    """
    kinds = {
        "clauseelement": InternalTraversal.dp_clauseelement,
        "clauseelement_list": InternalTraversal.dp_clauseelement_list,
    }
    return [(name, kinds[kind]) for name, kind in fields]


def spare_connections(pool: Any) -> Optional[int]:
    """How many more connections ``pool`` can hand out without waiting (None: no limit or unknown).

    Private: ``QueuePool._max_overflow`` (the public API tells the size and how many are checked out
    and overflowing, not the overflow limit). Used to leave a write in flight only when the next
    batch can still get a connection.
    """
    max_overflow = getattr(pool, "_max_overflow", None)
    if max_overflow is None or max_overflow < 0 or not hasattr(pool, "size"):
        return None
    return int(pool.size() + max_overflow - pool.checkedout())
