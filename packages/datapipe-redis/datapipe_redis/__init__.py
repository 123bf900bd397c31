"""Redis backend for Datapipe: ``from datapipe_redis import RedisStore``.

``RedisStore`` is imported lazily, so loading this package's plugin (which Datapipe does when it
lists plugins or looks up a store kind) does not import ``redis``.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.16.0"
__all__ = ["RedisStore"]

if TYPE_CHECKING:
    from datapipe_redis.store import RedisStore


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from datapipe_redis.store import RedisStore

        return RedisStore
    raise AttributeError(f"module 'datapipe_redis' has no attribute {name!r}")
