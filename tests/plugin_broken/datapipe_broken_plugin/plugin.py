"""Entry point module that fails on import, like a plugin whose client library is missing."""

raise ImportError("datapipe_broken_plugin needs the package 'not-installed-client', which is not installed")
