"""The stores and executors that ship with datapipe-core, registered like any plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

from datapipe.hookspecs import Factory, hookimpl
from datapipe.run_callback import RunCallback

if TYPE_CHECKING:
    import click


@hookimpl
def datapipe_table_stores() -> Dict[str, Factory]:
    return {
        "sql": "datapipe.store.database:TableStoreDB",
        "filedir": "datapipe.store.filedir:TableStoreFiledir",
        "jsonline": "datapipe.store.pandas:TableStoreJsonLine",
        "excel": "datapipe.store.pandas:TableStoreExcel",
    }


@hookimpl
def datapipe_executors() -> Dict[str, Factory]:
    return {
        "single_thread": "datapipe.executor:SingleThreadExecutor",
        "ray": "datapipe.executor.ray:RayExecutor",
    }


@hookimpl
def datapipe_run_callbacks() -> List[RunCallback]:
    return []


@hookimpl
def datapipe_cli(cli: click.Group) -> None:
    """``datapipe ui`` (the web view; Starlette is imported only when it runs)."""
    from datapipe.ui.command import ui

    cli.add_command(ui)
