"""Exceptions of aiecs-persistence.

Every failure reaches the caller as a :class:`PersistenceError` subclass carrying an
:class:`~aiecs_persistence.codes.ErrorCode` (contract §6); raw driver exceptions never escape
(``sqlstates.py`` turns them into these).

::

    PersistenceError
    ├── ValidationError            E001  bad input, CHECK violation, bad result
    │   └── InvalidTransitionError E001  illegal status change
    ├── QueryTimeoutError          E002  statement or lock timeout
    ├── RetryExhaustedError        E005  transient failures outlived the retries
    └── DatabaseError              E006  any other database failure
        ├── PermissionDeniedError  E006  the role lacks a privilege (SQLSTATE 42501)
        └── SchemaMismatchError    E006  schema not at head, or enum drift

This module imports no database driver (only the leaf ``codes``), so the domain module can
use it too.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from .codes import ErrorCode

__all__ = [
    "DatabaseError",
    "InvalidTransitionError",
    "PermissionDeniedError",
    "PersistenceError",
    "QueryTimeoutError",
    "RetryExhaustedError",
    "SchemaMismatchError",
    "ValidationError",
    "WatchExpiredError",
    "mask_password",
    "shown",
]

class PersistenceError(Exception):
    """Base of every error raised by aiecs-persistence. ``code`` is an ``ErrorCode``."""

    code: ClassVar[ErrorCode] = ErrorCode.DATABASE_ERROR

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        constraint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        message = mask_password(message)
        super().__init__(message)
        self.message = message
        #: The argument, field or JSON path at fault, when one is known.
        self.field = field
        #: The name of the violated constraint (``ck_task_history_error_pair``, ...).
        self.constraint = constraint
        #: The PostgreSQL SQLSTATE behind this error, when it came from the server.
        self.sqlstate = sqlstate

    @property
    def error_code(self) -> ErrorCode:
        """Alias of :attr:`code`, matching the field name of step results."""
        return self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.value})"


class ValidationError(PersistenceError, ValueError):
    """Bad input: caught before the database where possible, or a CHECK violation."""

    code = ErrorCode.VALIDATION_ERROR


class InvalidTransitionError(ValidationError):
    """An illegal status change (contract §2), rejected by Python or by the database."""

    def __init__(
        self,
        message: str,
        *,
        from_status: str | None = None,
        to_status: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("field", "status")
        super().__init__(message, **kwargs)
        self.from_status = from_status
        self.to_status = to_status


class WatchExpiredError(ValidationError):
    """A watch resumed from a position the event log no longer covers: retention dropped
    events it had not seen (``events_kept``). Reload what the watch follows
    (``load_task_history``, ``list_tasks``) and watch again without a token."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("field", "after")
        super().__init__(message, **kwargs)


class QueryTimeoutError(PersistenceError, TimeoutError):
    """A statement or lock timeout."""

    code = ErrorCode.TIMEOUT_ERROR


class RetryExhaustedError(PersistenceError):
    """Transient failures (lost connection, serialization failure, deadlock, server shutting
    down) outlived the retries."""

    code = ErrorCode.RETRY_EXHAUSTED

    def __init__(self, message: str, *, attempts: int = 0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.attempts = attempts


class DatabaseError(PersistenceError):
    """Any other database failure."""

    code = ErrorCode.DATABASE_ERROR


class PermissionDeniedError(DatabaseError):
    """The database role may not do this (SQLSTATE 42501, e.g. the runtime writer role
    attempting a migration; see ``aiecs-db grant``)."""


class SchemaMismatchError(DatabaseError):
    """The database schema is not at the head revision, or its enums differ from Python's."""


def shown(value: object, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters: hostile input must not flood messages."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# -- passwords ------------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)


def mask_password(text: str) -> str:
    """Replace passwords in URLs (``user:secret@``) and in ``password=...`` pairs by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)
