"""Earlier path of the throwaway test servers; they live in ``datapipe.testing.services``."""

from datapipe.testing.services import (
    PostgresServer,
    RedisServer,
    ServiceUnavailable,
    _wait_port,
    create_database,
    free_port,
    in_ci,
)

__all__ = ["PostgresServer", "RedisServer", "ServiceUnavailable", "_wait_port", "create_database", "free_port", "in_ci"]
