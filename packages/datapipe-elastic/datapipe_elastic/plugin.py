"""Datapipe plugin of datapipe-elastic (entry point ``datapipe: elastic``): registers the ``elastic`` store kind."""

from typing import Dict

from datapipe.hookspecs import Factory, hookimpl


@hookimpl
def datapipe_table_stores() -> Dict[str, Factory]:
    """Called once when Datapipe first looks up store kinds; the string is imported only when used."""
    return {"elastic": "datapipe_elastic.store:ElasticStore"}
