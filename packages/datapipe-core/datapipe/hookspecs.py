"""The extension points of Datapipe, declared with pluggy.

A plugin is a module (or object) with functions named like the specs below, decorated with
``datapipe.hookspecs.hookimpl``, and advertised in its distribution's metadata::

    [project.entry-points.datapipe]
    redis = "datapipe_redis.plugin"

Datapipe loads the entry points of group ``datapipe`` lazily, on the first lookup
(see ``datapipe.plugins``). The core registers its own stores and executors through the
same hooks (``datapipe.builtins``).

Registry values may be classes/factories or ``"module:attribute"`` strings; strings are
imported only when that kind is used, so listing plugins never imports client libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Union

import pluggy

if TYPE_CHECKING:
    import click

    from datapipe.run_callback import RunCallback

PROJECT = "datapipe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Factory = Union[str, Any]


@hookspec
def datapipe_table_stores() -> Dict[str, Factory]:
    """Contribute table-store kinds.

    Called once, the first time a store kind is looked up or plugins are listed.
    Return a mapping of kind name (e.g. ``"redis"``) to a ``TableStore`` subclass, a factory
    callable, or a ``"module:attribute"`` string naming one. ``create_table_store(kind, **params)``
    calls it with the user's keyword arguments. Must not raise; must not import heavy client
    libraries (use the string form).
    """


@hookspec
def datapipe_executors() -> Dict[str, Factory]:
    """Contribute executors.

    Called once, the first time an executor is looked up or plugins are listed.
    Return a mapping of executor name (e.g. ``"ray"``) to an ``Executor`` subclass, a factory,
    or a ``"module:attribute"`` string. ``get_executor(name, **params)`` instantiates it.
    """


@hookspec
def datapipe_run_callbacks() -> List[RunCallback]:
    """Contribute run listeners (progress, metrics, notifications).

    Called at the start of every CLI run (unless ``--no-callbacks``). Return a list of
    ``RunCallback`` instances; they receive every event of the run. Callbacks must not raise:
    exceptions are logged and ignored.
    """


@hookspec
def datapipe_cli(cli: click.Group) -> None:
    """Add sub-commands to the ``datapipe`` command line.

    Called once when the CLI is built, with the root ``click.Group``; call ``cli.add_command``
    (or decorate with ``@cli.command()``). Return value is ignored. An exception here is
    reported for that plugin and does not stop the CLI.
    """
