"""A pipeline module that fails while being imported (for the CLI error tests)."""

raise RuntimeError("the pipeline module is broken on purpose")
