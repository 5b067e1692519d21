"""How driver exceptions become :class:`~aiecs_persistence.errors.PersistenceError`\\ s: one
table, the one place that reads psycopg's (or SQLAlchemy's) exceptions.

Each failure is classified once, by its SQLSTATE (exact, else its two-character class, as
PostgreSQL's error classes go) or, for failures with no SQLSTATE (a broken connection, a pool
timeout), by its exception class. The :class:`Kind` says which exception the caller gets,
whether the failure is worth retrying, and whether the connection itself broke.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from . import names
from .errors import (
    DatabaseError,
    InvalidTransitionError,
    PermissionDeniedError,
    PersistenceError,
    QueryTimeoutError,
    RetryExhaustedError,
    ValidationError,
)

__all__ = [
    "CHECK_VIOLATION",
    "FOREIGN_KEY_VIOLATION",
    "INVALID_TRANSITION",
    "Kind",
    "classify",
    "connect_error",
    "connection_lost",
    "constraint_name",
    "dropped",
    "is_transient",
    "is_unique_violation",
    "missing_partition",
    "translate",
    "unreachable",
]

#: The SQLSTATE raised by the status-transition triggers (class ``AE``: aiecs).
INVALID_TRANSITION: Final = names.INVALID_TRANSITION_SQLSTATE
#: Raised by the triggers that keep keys and creation times (``ddl.KEYS_IMMUTABLE_FUNCTION``).
IMMUTABLE: Final = names.IMMUTABLE_SQLSTATE
#: SQLSTATE foreign_key_violation.
FOREIGN_KEY_VIOLATION: Final = "23503"
#: The task's second unique key, which the steps' foreign key names (``schema.Task``). The
#: saves' ``ON CONFLICT`` arbitrates on the primary key only: a writer that creates a task
#: while another creates it too, unseen, can meet the other's row in this key instead, and is
#: then told a unique violation. Saving again finds the task: the failure is transient.
TASK_BUCKET_KEY: Final = "uq_tasks_bucket_user_id_task_id"
#: SQLSTATE check_violation, which PostgreSQL also raises for a row no partition accepts.
CHECK_VIOLATION: Final = "23514"


@dataclass(frozen=True, slots=True)
class Kind:
    """What a failure means to the managers."""

    #: The exception the caller receives.
    error: type[PersistenceError]
    #: Worth retrying (idempotent statements only, a bounded number of times).
    transient: bool = False
    #: The connection broke: the pool's other idle connections are suspect too.
    lost: bool = False


_LOST: Final = Kind(RetryExhaustedError, transient=True, lost=True)
_RETRY: Final = Kind(RetryExhaustedError, transient=True)
_OTHER: Final = Kind(DatabaseError)

#: SQLSTATE, exact or two-character class, → kind. Anything else is a ``DatabaseError``.
BY_SQLSTATE: Final[Mapping[str, Kind]] = {
    INVALID_TRANSITION: Kind(InvalidTransitionError),
    IMMUTABLE: Kind(ValidationError),
    "57014": Kind(QueryTimeoutError),  # query_canceled: statement_timeout
    "55P03": Kind(QueryTimeoutError),  # lock_not_available: lock_timeout
    "42501": Kind(PermissionDeniedError),  # insufficient_privilege
    "22": Kind(ValidationError),  # data_exception
    "23": Kind(ValidationError),  # integrity_constraint_violation
    "40001": _RETRY,  # serialization_failure
    "40P01": _RETRY,  # deadlock_detected
    "53300": _RETRY,  # too_many_connections
    "57P01": _LOST,  # admin_shutdown
    "57P02": _LOST,  # crash_shutdown
    "57P03": _LOST,  # cannot_connect_now
    "08": _LOST,  # connection_exception
}

@functools.cache
def by_class() -> tuple[tuple[type[BaseException], Kind], ...]:
    """Exceptions without a SQLSTATE, by class (the first match wins). Built on first use:
    importing the package does not load psycopg (docs/performance.md, import time)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    return (
        (PoolTimeout, Kind(QueryTimeoutError)),  # no connection free within pool_timeout
        (psycopg.errors.ConnectionTimeout, Kind(QueryTimeoutError)),  # connect_timeout expired
        (psycopg.OperationalError, _LOST),  # the server went away mid-call
        (psycopg.InterfaceError, _LOST),  # the connection was already closed
        (psycopg.Error, _OTHER),
        (OSError, _OTHER),
    )


def _psycopg_error(driver: BaseException) -> bool:
    """Whether ``driver`` is one of psycopg's exceptions (none can exist before psycopg is
    loaded, so it is not imported to tell)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(driver, psycopg.Error)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception behind a SQLAlchemy wrapper, else ``exc``. (SQLAlchemy is
    looked at only when something imported it: otherwise no exception can be one of its.)"""
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy is not None and isinstance(exc, sqlalchemy.DBAPIError):
        return exc.orig if isinstance(exc.orig, BaseException) else exc
    return exc


def _sqlstate(driver: BaseException) -> str | None:
    return getattr(driver, "sqlstate", None) if _psycopg_error(driver) else None


def classify(exc: BaseException) -> Kind | None:
    """The kind of a driver (or SQLAlchemy) failure; None for anything else (a
    ``PersistenceError`` of our own, or a bug), which the managers let through untouched."""
    if isinstance(exc, PersistenceError):
        return None
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    wrapped = sqlalchemy is not None and isinstance(exc, sqlalchemy.SQLAlchemyError)
    if wrapped and getattr(exc, "connection_invalidated", False):
        return _LOST
    driver = _driver_error(exc)
    state = _sqlstate(driver)
    if state == UNIQUE_VIOLATION and constraint_name(driver) == TASK_BUCKET_KEY:
        return _RETRY  # two writers created the same task at once (TASK_BUCKET_KEY)
    if state is not None:
        return BY_SQLSTATE.get(state) or BY_SQLSTATE.get(state[:2]) or _OTHER
    for cls, kind in by_class():
        if isinstance(driver, cls):
            return kind
    return _OTHER if wrapped else None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure worth retrying."""
    kind = classify(exc)
    return kind is not None and kind.transient


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself broke (the pool should be checked)."""
    kind = classify(exc)
    return kind is not None and kind.lost


#: How a connection the server accepted and then dropped while it was starting reads: killed by
#: ``pg_terminate_backend`` or a shutdown (PostgreSQL's words for SQLSTATE 57P01, 57P02), or
#: closed under libpq. libpq gives these without a SQLSTATE.
_DROPPED_AT_START: Final = ("terminating connection due to",
                            "server closed the connection unexpectedly")
#: How a server that does not take connections now reads (libpq's and PostgreSQL's words, no
#: SQLSTATE): nothing listens (TCP or Unix socket), or it is starting, stopping or recovering.
_NOT_TAKING: Final = ("Connection refused", "No such file or directory",
                      "the database system is starting up",
                      "the database system is shutting down",
                      "the database system is in recovery mode",
                      "the database system is not yet accepting connections")


def dropped(error: PersistenceError) -> bool:
    """Whether a translated error says the server dropped the connection: mid-call (the lost
    kind, ``RetryExhaustedError``), or as it was starting (``connect_error``'s words for it),
    which a refused connection or a wrong password is not."""
    return isinstance(error, RetryExhaustedError) or (
        error.sqlstate is None and any(words in error.message for words in _DROPPED_AT_START))


def unreachable(error: PersistenceError) -> bool:
    """Whether a failure to connect (``connect_error``) says the server does not take
    connections now, a transient state (a wrong password or a missing database is not)."""
    return error.sqlstate is None and any(words in error.message for words in _NOT_TAKING)


def _diag(driver: BaseException, name: str) -> str | None:
    if not _psycopg_error(driver):
        return None
    value = getattr(getattr(driver, "diag", None), name, None)
    return value if isinstance(value, str) else None


def _primary_message(driver: BaseException) -> str:
    text = _diag(driver, "message_primary")
    if text:
        return text
    first = str(driver).strip().splitlines()
    return first[0] if first else type(driver).__name__


#: The column an ``IMMUTABLE`` error names (``task_history.task_id cannot change: …``), for an
#: error raised on a Citus worker, which arrives without its fields.
_UNCHANGEABLE: Final = re.compile(r"(?P<table>\w+)\.(?P<column>\w+) cannot change")
_TRANSITION_DETAIL: Final = re.compile(r"from (?P<from>\w+) to (?P<to>\w+)")
#: A constraint named in a message (``violates check constraint "ck_tasks_error_pair"``).
_NAMED_CONSTRAINT: Final = re.compile(r'constraint "(?P<name>[^"]+)"')
#: A Citus shard's suffix on a name raised on a worker (``tasks_102010``): the shard id.
_SHARD_SUFFIX: Final = re.compile(r"_\d{6,}$")
_QUOTED: Final = re.compile(r'"([^"]+)"')


def _unsharded(text: str) -> str:
    """``text`` with each quoted shard name (``"tasks_102010"``) read as its table's."""
    return _QUOTED.sub(lambda m: f'"{_SHARD_SUFFIX.sub("", m.group(1))}"', text)


def constraint_name(driver: BaseException) -> str | None:
    """The constraint a driver exception names. PostgreSQL says it in the error's fields; an
    error raised on a Citus worker arrives without them, so it is read from the message, with
    the shard's suffix taken off (``pk_tasks_102010`` → ``pk_tasks``)."""
    name = _diag(driver, "constraint_name")
    if name:
        return name
    match = _NAMED_CONSTRAINT.search(_primary_message(driver))
    return _SHARD_SUFFIX.sub("", match.group("name")) if match else None


#: SQLSTATE unique_violation.
UNIQUE_VIOLATION: Final = "23505"


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a duplicate key. (A COPY into a Citus table reports one raised on a
    worker as an internal error, XX000, with PostgreSQL's message.)"""
    driver = _driver_error(exc)
    state = _sqlstate(driver)
    return state == UNIQUE_VIOLATION or (
        state == "XX000" and _primary_message(driver).startswith("duplicate key value"))


def is_copy_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a COPY into a table under row-level security
    (every role but a superuser, or one with BYPASSRLS, once it is forced on the owner)."""
    driver = _driver_error(exc)
    return (_sqlstate(driver) == "0A000"
            and _primary_message(driver).startswith("COPY FROM not supported"))


def translate(exc: BaseException, *, operation: str = "database operation") -> PersistenceError:
    """The :class:`PersistenceError` for a driver or SQLAlchemy exception (ours pass as they
    are). It keeps the SQLSTATE and the constraint name; its message names the constraint (or
    the column) and never contains a password."""
    if isinstance(exc, PersistenceError):
        return exc
    kind = classify(exc) or _OTHER
    driver = _driver_error(exc)
    state = _sqlstate(driver)
    primary = _unsharded(_primary_message(driver))
    constraint = constraint_name(driver)
    error = kind.error
    if error is InvalidTransitionError:
        match = _TRANSITION_DETAIL.search(_diag(driver, "message_detail") or primary)
        return InvalidTransitionError(
            f"{operation}: {primary}",
            from_status=match.group("from") if match else None,
            to_status=match.group("to") if match else None,
            constraint=constraint, sqlstate=state,
        )
    if error is ValidationError:
        where = f" [constraint {constraint}]" if constraint and constraint not in primary else ""
        unchangeable = _UNCHANGEABLE.match(primary) if state == IMMUTABLE else None
        column = _diag(driver, "column_name") or (unchangeable and unchangeable.group("column"))
        return ValidationError(
            f"{operation}: {primary}{where}", field=column or constraint,
            constraint=constraint, sqlstate=state,
        )
    if error is QueryTimeoutError and state is not None:
        return QueryTimeoutError(f"{operation}: {primary} (SQLSTATE {state})", sqlstate=state)
    if error in (QueryTimeoutError, PermissionDeniedError, RetryExhaustedError):
        return error(f"{operation}: {primary}", sqlstate=state)
    suffix = f" (SQLSTATE {state})" if state else ""
    return DatabaseError(f"{operation}: {primary}{suffix}", sqlstate=state)


def connect_error(exc: BaseException, where: str) -> PersistenceError:
    """A failure to *open* a connection to ``where`` (a URL without its password): nothing
    was lost mid-call and nothing is worth retrying at once. A connect timeout is a
    ``QueryTimeoutError`` (E002); a refused connection, a wrong password or a missing database
    a ``DatabaseError`` (E006), with the server's reason."""
    if isinstance(exc, PersistenceError):
        return exc
    driver = _driver_error(exc)
    reason = _primary_message(driver).removeprefix("connection failed: ")
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(driver, psycopg.errors.ConnectionTimeout):
        return QueryTimeoutError(
            f"cannot connect to {where}: no answer within the connect timeout ({reason})")
    return DatabaseError(f"cannot connect to {where}: {reason}")


#: The value of the partition key in PostgreSQL's DETAIL for a row no partition accepts.
_PARTITION_KEY: Final = re.compile(r"Partition key of the failing row contains \(.*\) = \((.+)\)\.")


def missing_partition(exc: BaseException) -> str | None:
    """When ``exc`` says a row found no partition of ours (a save in a period whose partition
    was not created yet): the row's bucket, as the server printed it, or ``""`` when it printed
    none (it does not to a role under the table's row security); else None."""
    driver = _driver_error(exc)
    if _sqlstate(driver) != CHECK_VIOLATION:
        return None
    if not (_diag(driver, "message_primary") or "").startswith("no partition of relation"):
        return None
    detail = _diag(driver, "message_detail")
    if not detail:
        return ""
    found = _PARTITION_KEY.fullmatch(detail)
    # (A NULL bucket is a save's that found no task: ``core.ManagerBase._task_was_gone``.)
    return found.group(1) if found and found.group(1) != "null" else None
