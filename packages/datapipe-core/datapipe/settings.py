"""Process-wide settings, read from the environment once at import."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


@dataclass
class Settings:
    """Process-wide defaults, read from the environment once at import.

    Attributes:
        fail_fast: ``DATAPIPE_FAIL_FAST`` (``1``/``true``/``yes``/``on``): the default of
            ``RunConfig.fail_fast``; re-raise the first error in a step function instead of
            recording the failed batch and going on.
        key_page_rows: ``DATAPIPE_KEY_PAGE_ROWS`` (default 100 000): how many pending keys a full
            run of a batch step reads from the database at a time (rounded down to whole batches,
            at least one batch); client memory for keys is bounded by this, not by the number of
            pending keys (``datapipe.sql.pages``).
    """

    fail_fast: bool = _env_bool("DATAPIPE_FAIL_FAST")
    key_page_rows: int = _env_int("DATAPIPE_KEY_PAGE_ROWS", 100_000)


settings = Settings()
