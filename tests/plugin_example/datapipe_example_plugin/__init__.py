"""Example third-party Datapipe plugin: an in-memory store kind and an inline executor."""

from datapipe_example_plugin.executor import InlineExecutor
from datapipe_example_plugin.store import ExampleMemoryStore

__all__ = ["ExampleMemoryStore", "InlineExecutor"]
