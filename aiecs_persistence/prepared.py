"""The saves' lean path: a save sent as our own prepared statement, straight through libpq.

psycopg's ``execute`` builds a cursor, converts the query, picks a dumper for each parameter and
looks the statement up in its prepared-statement cache on every call: 40 to 50 µs of Python per
save, about a tenth of a lone save's whole round trip (docs/performance.md). A save needs none
of it: its SQL is one of a few fixed texts (a lone save, the step alone, a batch), its
parameters are strings, integers, booleans or NULL (a batch's arrays are text literals,
``statements.text_array``), and it returns nothing the caller reads. So the managers send it
here as a named prepared statement on the connection's ``pgconn``, its parameters in text, and
wait once for the results with psycopg's own generator (``Connection.wait``, which also cancels
the statement on the server when the caller is interrupted).

What stays psycopg's: the connection, its pool, the waiting, and the errors, which are built
from the server's result by ``psycopg.errors.error_from_result`` exactly as psycopg builds
them, so ``sqlstates.translate`` sees the same exception either way.

This module only converts and checks (no I/O): the managers do the sending, each in its own
style. Statements with binary (``%b``) parameters, or rows to read, keep psycopg's ``execute``;
so does every call behind a transaction-mode pooler (``transaction_pooling``), where a session's
prepared statement may not be there on the next transaction, and a manager with
``prepare_threshold=None``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

__all__ = ["Prepared", "check", "failure", "forget", "is_prepared", "mark_prepared", "prepared",
           "results"]

#: ``%(name)s`` placeholders, and ``%%`` (a literal ``%``).
_PLACEHOLDER: Final = re.compile(r"%\((\w+)\)([sb])|%%")
#: SQLSTATE ``invalid_sql_statement_name``: the prepared statement is gone (``DEALLOCATE``,
#: ``DISCARD ALL``); it is prepared again.
NOT_PREPARED: Final = "26000"
#: SQLSTATE ``duplicate_prepared_statement``: the server connection has it already (a pooler in
#: session mode without a reset query handed it over); the name is the text's digest, so it is
#: the same statement.
ALREADY_PREPARED: Final = "42P05"
#: libpq's ``PGRES_FATAL_ERROR`` (psycopg.pq.ExecStatus.FATAL_ERROR; a test checks it).
FATAL_ERROR: Final = 7
#: libpq's ``PG_DIAG_SQLSTATE`` (psycopg.pq.DiagnosticField.SQLSTATE; a test checks it).
_SQLSTATE: Final = ord("C")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement in libpq's form: its name on the server, its text with ``$n`` parameters,
    and the name of the parameter each ``$n`` takes."""

    name: bytes
    query: bytes
    order: tuple[str, ...]

    def values(self, params: Mapping[str, Any]) -> list[bytes | None]:
        """The parameters in text format, in ``$n`` order (server-side types: each is
        ``unknown`` to the server, so it takes the type of its column or cast)."""
        return [_text(params[name]) for name in self.order]


@cache
def prepared(sql: str) -> Prepared:
    """``sql`` (psycopg's ``%(name)s`` style, text parameters only) in libpq's form; its name is
    a digest of its text, so one text has one name on every connection, whoever prepared it."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(2) != "s":
            raise ValueError(f"binary parameter %({match.group(1)})b: not for the lean path")
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    query = _PLACEHOLDER.sub(number, sql)
    name = b"aiecs_" + hashlib.blake2b(sql.encode("utf-8"), digest_size=8).hexdigest().encode()
    return Prepared(name, query.encode("utf-8"), tuple(order))


def _text(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is True:
        return b"t"
    if value is False:
        return b"f"
    if isinstance(value, int):
        return str(value).encode()
    raise TypeError(f"{type(value).__name__} parameter: not for the lean path")


_execute: Any = None


def results(pgconn: Any) -> Any:
    """psycopg's generator that flushes a sent statement and collects its results (for
    ``Connection.wait``); psycopg loads on connect, not on import."""
    global _execute  # bound once, on first use
    if _execute is None:
        from psycopg.generators import execute

        _execute = execute
    return _execute(pgconn)


def failure(results: Sequence[Any]) -> str | None:
    """The SQLSTATE of the first failed result, or None when all succeeded."""
    for result in results:
        if result.status == FATAL_ERROR:
            state: bytes | None = result.error_field(_SQLSTATE)
            return (state or b"").decode("ascii", "replace")
    return None


def check(results: Sequence[Any], encoding: str = "utf-8") -> None:
    """Raise the error of the first failed result, as psycopg would have raised it."""
    for result in results:
        if result.status == FATAL_ERROR:
            from psycopg.errors import error_from_result

            raise error_from_result(result, encoding=encoding)


# -- which connection has which statement prepared ----------------------------------------------

_lock: Final = threading.Lock()
_on: Final[weakref.WeakKeyDictionary[Any, set[bytes]]] = weakref.WeakKeyDictionary()


def is_prepared(conn: Any, statement: Prepared) -> bool:
    names = _on.get(conn)
    return names is not None and statement.name in names


def mark_prepared(conn: Any, statement: Prepared) -> None:
    with _lock:
        _on.setdefault(conn, set()).add(statement.name)


def forget(conn: Any) -> None:
    """``conn`` has no prepared statement left (after ``NOT_PREPARED``)."""
    with _lock:
        _on.pop(conn, None)
