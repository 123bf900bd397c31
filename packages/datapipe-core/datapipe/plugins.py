"""Plugin discovery and the name -> implementation registries.

Lookups are lazy: nothing is imported until a kind is asked for. A plugin that fails to load
is recorded with its distribution and error and does not affect the others.

    >>> from datapipe.plugins import create_table_store, get_executor
    >>> store = create_table_store("sql", dbconn=dbconn, name="t", data_sql_schema=schema)
    >>> executor = get_executor("single_thread")
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Dict, List, Optional

import pluggy

from datapipe import hookspecs
from datapipe.errors import PluginError
from datapipe.hookspecs import Factory

logger = logging.getLogger("datapipe.plugins")

ENTRY_POINT_GROUP = "datapipe"

# Where the kinds this project knows of live, for the "pip install ..." hint.
KNOWN_PROVIDERS: Dict[str, str] = {
    "redis": "datapipe-redis",
    "elastic": "datapipe-elastic",
    "qdrant": "datapipe-qdrant",
    "qdrant_sharded": "datapipe-qdrant",
    "milvus": "datapipe-milvus",
    "ray": "datapipe-core[ray]",
    "excel": "datapipe-core[excel]",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    store_kinds: List[str] = field(default_factory=list)
    executors: List[str] = field(default_factory=list)
    error: Optional[str] = None


class PluginRegistry:
    """Loads the ``datapipe`` entry points once and answers lookups by name."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._pm: Optional[pluggy.PluginManager] = None
        self.plugins: List[PluginInfo] = []

    @property
    def pm(self) -> pluggy.PluginManager:
        if self._pm is None:
            self._pm = self._load()
        return self._pm

    def _load(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        eps = list(entry_points(group=self.group))
        if not any(ep.value == "datapipe.builtins" for ep in eps):
            from datapipe import builtins

            pm.register(builtins, name="core")
            self.plugins.append(self._info(pm, builtins, "core", "datapipe-core", "datapipe.builtins"))
        for ep in eps:
            self._load_entry_point(pm, ep)
        return pm

    def _load_entry_point(self, pm: pluggy.PluginManager, ep: EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the others
            logger.warning("datapipe plugin %r from %s failed to load: %s", ep.name, dist, e)
            self.plugins.append(PluginInfo(ep.name, dist, version, ep.value, error=f"{type(e).__name__}: {e}"))
            return
        self.plugins.append(self._info(pm, plugin, ep.name, dist, ep.value, version))

    def _info(
        self, pm: pluggy.PluginManager, plugin: Any, name: str, dist: str, module: str, version: str = ""
    ) -> PluginInfo:
        if not version:
            from datapipe import __version__ as version
        stores = getattr(plugin, "datapipe_table_stores", None)
        execs = getattr(plugin, "datapipe_executors", None)
        try:
            store_kinds = sorted(stores()) if stores else []
            executors = sorted(execs()) if execs else []
        except Exception as e:  # noqa: BLE001
            return PluginInfo(name, dist, version, module, error=f"{type(e).__name__}: {e}")
        return PluginInfo(name, dist, version, module, store_kinds, executors)

    def list_plugins(self) -> List[PluginInfo]:
        self.pm  # noqa: B018 - loading the entry points fills self.plugins
        return list(self.plugins)

    def _merged(self, hook: str) -> Dict[str, Factory]:
        merged: Dict[str, Factory] = {}
        for result in reversed(getattr(self.pm.hook, hook)()):
            merged.update(result or {})
        return merged

    def table_store_kinds(self) -> Dict[str, Factory]:
        return self._merged("datapipe_table_stores")

    def executor_kinds(self) -> Dict[str, Factory]:
        return self._merged("datapipe_executors")

    def run_callbacks(self) -> List[Any]:
        return [cb for result in self.pm.hook.datapipe_run_callbacks() for cb in (result or [])]

    def resolve(self, what: str, name: str, table: Dict[str, Factory]) -> Any:
        if name not in table:
            hint = ""
            if name in KNOWN_PROVIDERS:
                hint = f"; install it with: pip install {KNOWN_PROVIDERS[name]}"
            broken = [f"{p.distribution} ({p.error})" for p in self.plugins if p.error]
            if broken:
                hint += f"; plugins that failed to load: {', '.join(broken)}"
            raise PluginError(f"unknown {what} {name!r}; installed: {', '.join(sorted(table)) or 'none'}{hint}")
        factory = table[name]
        if not isinstance(factory, str):
            return factory
        module, _, attr = factory.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:
            hint = ""
            if name in KNOWN_PROVIDERS and "pip install" not in str(e):  # the error may carry the hint already
                hint = f"; install it with: pip install '{KNOWN_PROVIDERS[name]}'"
            raise PluginError(f"{what} {name!r} could not be imported ({e}){hint}") from e


registry = PluginRegistry()


def list_plugins() -> List[PluginInfo]:
    """Every discovered plugin, including ones that failed to load (``error`` set)."""
    return registry.list_plugins()


def get_table_store_class(kind: str) -> Any:
    return registry.resolve("table store kind", kind, registry.table_store_kinds())


def create_table_store(kind: str, **params: Any) -> Any:
    """Instantiate the store registered as ``kind`` with ``params``.

    Args:
        kind: a registered store kind: ``sql``, ``filedir``, ``jsonline``, ``excel`` from the
            core, ``redis``, ``qdrant``, ``milvus``, ``elastic`` from their packages, or any
            kind a plugin registers (``datapipe plugins list`` shows them).
        **params: the store class's constructor arguments.

    Raises:
        PluginError: unknown kind (the message names the installed kinds and the package to
            install), or the plugin providing it failed to import.

    Example:
        ```python
        store = create_table_store("qdrant", name="docs", url=":memory:", ...)
        ```
    """
    return get_table_store_class(kind)(**params)


def get_executor(name: str, **params: Any) -> Any:
    """Instantiate the executor registered as ``name`` (e.g. ``"single_thread"``, ``"ray"``).

    Raises:
        PluginError: unknown executor, or its package is not installed (names what to install).
    """
    return registry.resolve("executor", name, registry.executor_kinds())(**params)


def get_run_callbacks() -> List[Any]:
    """Run callbacks contributed by plugins."""
    return registry.run_callbacks()


def register_cli_commands(cli: Any) -> List[str]:
    """Let plugins add CLI commands; returns error texts of plugins that failed."""
    errors = []
    for impl in registry.pm.hook.datapipe_cli.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as e:  # noqa: BLE001
            errors.append(f"plugin {impl.plugin_name}: {type(e).__name__}: {e}")
    return errors
