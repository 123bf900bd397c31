"""Shared test configuration. Fixtures (dbconn, postgres_url, redis_url) come from
``datapipe.testing.fixtures``, enabled for every suite by ``pytest.ini`` (``-p``)."""
