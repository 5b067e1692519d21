"""``Statement``: SQL text with psycopg ``%(name)s`` placeholders, its parameters and how the
managers run it. The SQL text is fixed; user input only ever travels as parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["SET_LOCAL", "Statement", "set_local"]


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL with its parameters. ``idempotent`` statements may be retried after a transient
    failure (running them twice has the effect of running them once)."""

    name: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    idempotent: bool = True
    #: How many statements the call runs, each allowed ``statement_timeout``: its client
    #: deadline (deadline.py). None: the call arms its own deadlines (the bulk path, per chunk).
    statements: int | None = 1
    #: Sent by the managers' lean path (prepared.py): text parameters only, no rows read.
    lean: bool = False
    #: Server settings for the statement's own transaction only (``SET LOCAL``), such as the
    #: report's planner settings: the managers run it in a transaction after ``SET_LOCAL``.
    local: Mapping[str, str] = field(default_factory=dict)


#: Settings for one transaction (``set_local`` gives its parameters): the timeouts when a
#: transaction-mode pooler forbids session settings, and a statement's own ``local``.
SET_LOCAL: Final = ("SELECT set_config(s.name, s.value, true) "
                    "FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(name, value)")


def set_local(settings: Mapping[str, str]) -> dict[str, list[str]]:
    """The parameters of ``SET_LOCAL`` for ``settings`` (name: value)."""
    return {"names": list(settings), "values": list(settings.values())}


