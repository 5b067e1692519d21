"""The seed's error codes, E001-E007: a leaf module (it imports nothing of the package), so
the domain model and the exception hierarchy can both name them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

__all__ = ["ErrorCode"]


class ErrorCode(Enum):
    """The seed's error codes, E001-E007, in order."""

    VALIDATION_ERROR = "E001"
    TIMEOUT_ERROR = "E002"
    EXECUTION_ERROR = "E003"
    CANCELLED_ERROR = "E004"
    RETRY_EXHAUSTED = "E005"
    DATABASE_ERROR = "E006"
    DSL_EVALUATION_ERROR = "E007"

    @property
    def category(self) -> str:
        """``client`` (E001), ``timeout`` (E002), ``execution`` (E003) or ``system``."""
        return _CATEGORIES.get(self, "system")

    @property
    def description(self) -> str:
        """The seed's description, e.g. ``"Parameter validation error"``."""
        return _DESCRIPTIONS[self]


_CATEGORIES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.VALIDATION_ERROR: "client",
    ErrorCode.TIMEOUT_ERROR: "timeout",
    ErrorCode.EXECUTION_ERROR: "execution",
}
_DESCRIPTIONS: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.VALIDATION_ERROR: "Parameter validation error",
    ErrorCode.TIMEOUT_ERROR: "Execution timeout error",
    ErrorCode.EXECUTION_ERROR: "Execution error",
    ErrorCode.CANCELLED_ERROR: "Cancellation error",
    ErrorCode.RETRY_EXHAUSTED: "Retry exhausted error",
    ErrorCode.DATABASE_ERROR: "Database error",
    ErrorCode.DSL_EVALUATION_ERROR: "DSL evaluation error",
}
