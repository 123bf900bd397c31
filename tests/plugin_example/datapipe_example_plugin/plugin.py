"""Entry point module (group ``datapipe``): tells Datapipe which kinds this distribution provides."""

from typing import Dict

from datapipe.hookspecs import Factory, hookimpl


@hookimpl
def datapipe_table_stores() -> Dict[str, Factory]:
    """Store kinds of this plugin; the string form is imported only when the kind is used."""
    return {"example_memory": "datapipe_example_plugin.store:ExampleMemoryStore"}


@hookimpl
def datapipe_executors() -> Dict[str, Factory]:
    """Executors of this plugin."""
    return {"example_inline": "datapipe_example_plugin.executor:InlineExecutor"}
