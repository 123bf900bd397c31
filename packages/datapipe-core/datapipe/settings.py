"""Process-wide settings, read from the environment once at import."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    """Process-wide defaults, read from the environment once at import.

    Attributes:
        fail_fast: ``DATAPIPE_FAIL_FAST`` (``1``/``true``/``yes``/``on``): the default of
            ``RunConfig.fail_fast``; re-raise the first error in a step function instead of
            recording the failed batch and going on.
    """

    fail_fast: bool = _env_bool("DATAPIPE_FAIL_FAST")


settings = Settings()
