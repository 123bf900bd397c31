"""Datapipe plugin of datapipe-redis (entry point ``datapipe: redis``): registers the ``redis`` store kind."""

from typing import Dict

from datapipe.hookspecs import Factory, hookimpl


@hookimpl
def datapipe_table_stores() -> Dict[str, Factory]:
    """Called once when Datapipe first looks up store kinds; the string is imported only when used."""
    return {"redis": "datapipe_redis.store:RedisStore"}
