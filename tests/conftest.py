"""Shared test configuration. Fixtures (dbconn, postgres_url, redis_url) come from the
``datapipe.testing`` pytest plugin that datapipe-core installs."""
