"""Exceptions of aiecs-persistence, and the mapping from PostgreSQL SQLSTATEs to them.

Every failure reaches the caller as a :class:`PersistenceError` subclass carrying an
:class:`~aiecs_persistence.domain.ErrorCode` (contract §6); raw driver exceptions never escape.

::

    PersistenceError
    ├── ValidationError            E001  bad input, CHECK violation, bad result
    │   └── InvalidTransitionError E001  illegal status change
    ├── QueryTimeoutError          E002  statement or lock timeout
    ├── RetryExhaustedError        E005  transient failures outlived the retries
    └── DatabaseError              E006  any other database failure
        ├── PermissionDeniedError  E006  the role lacks a privilege (SQLSTATE 42501)
        └── SchemaMismatchError    E006  schema not at head, or enum drift

This module imports no database driver: driver exceptions are read by duck typing
(``sqlstate``, ``diag``), so the domain module can use it too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from .domain import ErrorCode

__all__ = [
    "SQLSTATE_INVALID_TRANSITION",
    "DatabaseError",
    "InvalidTransitionError",
    "PermissionDeniedError",
    "PersistenceError",
    "QueryTimeoutError",
    "RetryExhaustedError",
    "SchemaMismatchError",
    "ValidationError",
    "is_transient",
    "mask_password",
    "shown",
    "translate",
]

#: The SQLSTATE raised by the status-transition triggers (class ``AE``: aiecs).
SQLSTATE_INVALID_TRANSITION: Final = "AE001"


class PersistenceError(Exception):
    """Base of every error raised by aiecs-persistence. ``code`` is an ``ErrorCode``."""

    code_value: ClassVar[str] = "E006"

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
    def code(self) -> ErrorCode:
        from .domain import ErrorCode

        return ErrorCode(self.code_value)

    @property
    def error_code(self) -> ErrorCode:
        """Alias of :attr:`code`, matching the field name of step results."""
        return self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code_value})"


class ValidationError(PersistenceError, ValueError):
    """Bad input: caught before the database where possible, or a CHECK violation."""

    code_value = "E001"


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


class QueryTimeoutError(PersistenceError, TimeoutError):
    """A statement or lock timeout."""

    code_value = "E002"


class RetryExhaustedError(PersistenceError):
    """Transient failures (lost connection, serialization failure, deadlock, server shutting
    down) outlived the retries."""

    code_value = "E005"

    def __init__(self, message: str, *, attempts: int = 0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.attempts = attempts


class DatabaseError(PersistenceError):
    """Any other database failure."""

    code_value = "E006"


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


# -- SQLSTATE mapping -----------------------------------------------------------------------

#: SQLSTATEs (or their two-character classes) of failures worth retrying.
_TRANSIENT: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "08",  # connection_exception (class)
        "53300",  # too_many_connections
    }
)
_TIMEOUT: Final = frozenset({"57014", "55P03"})  # query_canceled, lock_not_available


def _sqlstate_of(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) else None


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception behind a SQLAlchemy wrapper (``.orig``), else ``exc``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver or SQLAlchemy exception) is worth retrying."""
    driver = _driver_error(exc)
    state = _sqlstate_of(driver)
    if state is None:
        # No SQLSTATE: the connection broke (psycopg OperationalError), or SQLAlchemy says it
        # invalidated the connection.
        if getattr(exc, "connection_invalidated", False):
            return True
        return type(driver).__name__ in {"OperationalError", "InterfaceError"}
    return state in _TRANSIENT or state[:2] in _TRANSIENT


def _diag(driver: BaseException, name: str) -> str | None:
    diag = getattr(driver, "diag", None)
    value = getattr(diag, name, None) if diag is not None else None
    return value if isinstance(value, str) else None


def _primary_message(driver: BaseException) -> str:
    text = _diag(driver, "message_primary")
    if text:
        return text
    first = str(driver).strip().splitlines()
    return first[0] if first else type(driver).__name__


_TRANSITION_DETAIL = re.compile(r"from (?P<from>\w+) to (?P<to>\w+)")


def translate(exc: BaseException, *, operation: str = "database operation") -> PersistenceError:
    """Map a driver or SQLAlchemy exception to the matching :class:`PersistenceError`.

    The result keeps the SQLSTATE and the constraint name; its message names the constraint
    (or the column) and never contains a password.
    """
    if isinstance(exc, PersistenceError):
        return exc
    driver = _driver_error(exc)
    state = _sqlstate_of(driver)
    primary = _primary_message(driver)
    constraint = _diag(driver, "constraint_name")
    column = _diag(driver, "column_name")
    detail = _diag(driver, "message_detail")

    if state == SQLSTATE_INVALID_TRANSITION:
        match = _TRANSITION_DETAIL.search(detail or primary)
        return InvalidTransitionError(
            f"{operation}: {primary}",
            from_status=match.group("from") if match else None,
            to_status=match.group("to") if match else None,
            constraint=constraint,
            sqlstate=state,
        )
    if state is not None and state in _TIMEOUT:
        return QueryTimeoutError(f"{operation}: {primary} (SQLSTATE {state})", sqlstate=state)
    if state is not None and (state.startswith("23") or state.startswith("22")):
        where = f" [constraint {constraint}]" if constraint and constraint not in primary else ""
        return ValidationError(
            f"{operation}: {primary}{where}",
            field=column or constraint,
            constraint=constraint,
            sqlstate=state,
        )
    if state == "42501":
        return PermissionDeniedError(f"{operation}: {primary}", sqlstate=state)
    if is_transient(exc):
        return RetryExhaustedError(f"{operation}: {primary}", sqlstate=state)
    suffix = f" (SQLSTATE {state})" if state else ""
    return DatabaseError(f"{operation}: {primary}{suffix}", sqlstate=state)
