"""aiecs-persistence: PostgreSQL persistence for AI task execution history.

The public API is what this module exports; everything else is an implementation detail.
"""

import logging
from typing import TYPE_CHECKING, Any

from .domain import ErrorCode, TaskStatus, TaskStepResult
from .errors import (
    DatabaseError,
    InvalidTransitionError,
    PermissionDeniedError,
    PersistenceError,
    QueryTimeoutError,
    RetryExhaustedError,
    SchemaMismatchError,
    ValidationError,
    WatchExpiredError,
)
from .records import Page, StepRecord, TaskRecord

__all__ = [
    "DatabaseError",
    "DatabaseManager",
    "ErrorCode",
    "InvalidTransitionError",
    "Page",
    "PermissionDeniedError",
    "PersistenceError",
    "QueryTimeoutError",
    "RetryExhaustedError",
    "SchemaMismatchError",
    "StepRecord",
    "SyncDatabaseManager",
    "TaskRecord",
    "TaskStatus",
    "TaskStepResult",
    "ValidationError",
    "WatchExpiredError",
]
__version__ = "0.1.0"

# A library logs, the application decides where to: nothing is printed unless it configures
# logging ("aiecs_persistence" logs retries at WARNING, each call at DEBUG).
logging.getLogger("aiecs_persistence").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .manager import DatabaseManager
    from .sync import SyncDatabaseManager


def __getattr__(name: str) -> Any:
    # The managers pull in SQLAlchemy and psycopg: load them on first use, so that importing
    # the domain model stays free of database modules.
    if name == "DatabaseManager":
        from .manager import DatabaseManager

        return DatabaseManager
    if name == "SyncDatabaseManager":
        from .sync import SyncDatabaseManager

        return SyncDatabaseManager
    raise AttributeError(f"module 'aiecs_persistence' has no attribute {name!r}")
