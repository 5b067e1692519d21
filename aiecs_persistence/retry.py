"""The retry policy's defaults and its backoff, shared by the managers' settings
(``core.Settings``) and the connections ``migrate.py`` opens."""

from __future__ import annotations

import random
from typing import Final

#: Attempts in all, before a transient failure is ``RetryExhaustedError`` (E005).
MAX_ATTEMPTS: Final = 4
#: The first backoff and its ceiling (seconds).
BACKOFF_BASE: Final = 0.05
BACKOFF_MAX: Final = 2.0


def backoff(attempt: int, base: float = BACKOFF_BASE, ceiling: float = BACKOFF_MAX) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
    return random.uniform(0, min(ceiling, base * 2 ** (attempt - 1)))  # noqa: S311 - jitter
