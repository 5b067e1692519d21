"""aiecs-persistence: PostgreSQL persistence for AI task execution history.

The public API is what this module exports; everything else is an implementation detail.
"""

from .domain import ErrorCode, TaskStatus, TaskStepResult
from .errors import (
    DatabaseError,
    InvalidTransitionError,
    PersistenceError,
    QueryTimeoutError,
    RetryExhaustedError,
    SchemaMismatchError,
    ValidationError,
)

__all__ = [
    "DatabaseError",
    "ErrorCode",
    "InvalidTransitionError",
    "PersistenceError",
    "QueryTimeoutError",
    "RetryExhaustedError",
    "SchemaMismatchError",
    "TaskStatus",
    "TaskStepResult",
    "ValidationError",
]
__version__ = "0.1.0"
