"""A Datapipe plugin whose entry point cannot be imported (used to test error reporting)."""
