"""Datapipe: durable, incremental batch processing over pandas DataFrames."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("datapipe-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
