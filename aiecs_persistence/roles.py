"""Least-privilege roles: a migration owner, a runtime writer and a read-only reporting role.

``grant_statements`` reads the catalog of a migrated database and returns the SQL that

* creates the three roles when missing (``NOLOGIN`` group roles: give them to login roles with
  ``GRANT aiecs_writer TO my_service``);
* makes the **owner** own every object of ours (tables, views, enum types, trigger functions,
  the Alembic version table), so it alone can migrate, ``ALTER`` or ``DROP``;
* lets the **writer** read and write ``tasks`` and ``task_history`` (``DELETE`` too, for
  ``cleanup_old_tasks``), read the error catalog, the views and the schema version, and create
  temporary tables (the bulk path stages its rows in one) — and nothing else;
* lets the **reader** ``SELECT`` from the reporting views and the tables they read (the views
  run as their caller, under its row-level security), and the schema version, which every
  connection checks, so it can run ``aiecs-db report``.

The statements are idempotent: run ``aiecs-db grant`` again after each upgrade so new objects
get the same privileges. Running them needs a superuser (or a role with ``CREATEROLE`` that is
a member of the owner role).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final

from psycopg import errors

from .ddl import VIEW_NAMES
from .errors import ValidationError
from .migrate import VERSION_TABLE
from .names import PARTITIONED_TABLES, PARTITIONING_TABLE, SCOPES_TABLE, SUMMARIES_TABLE
from .schema import metadata

__all__ = ["Roles", "grant_statements"]

ROLE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Tables the runtime writes (task_events through the triggers; aiecs_watched: watchers).
WRITTEN_TABLES: Final = ("tasks", "task_history", "task_events", "aiecs_watched")
#: Tables the runtime only reads (the scopes: a cleanup's summaries are not a scoped role's).
READ_TABLES: Final = ("error_codes", VERSION_TABLE, PARTITIONING_TABLE, SUMMARIES_TABLE,
                      SCOPES_TABLE)
#: The tables the reporting views read, which the reader role reads through them.
VIEWED_TABLES: Final = ("tasks", "task_history", "error_codes")
LEGACY_TABLES: Final = ("legacy_task_history", "legacy_task_history_rejects")
ENUM_TYPES: Final = ("task_status", "error_code")


@dataclass(frozen=True)
class Roles:
    owner: str = "aiecs_owner"
    writer: str = "aiecs_writer"
    reader: str = "aiecs_reader"

    def __post_init__(self) -> None:
        names = {"owner": self.owner, "writer": self.writer, "reader": self.reader}
        for kind, name in names.items():
            if not ROLE_NAME.fullmatch(name):
                raise ValidationError(
                    f"{kind} role: {name!r} is not a plain lower-case role name "
                    "(letters, digits, _; at most 63)", field=kind,
                )
        if len(set(names.values())) != 3:
            raise ValidationError("roles: owner, writer and reader must be three roles",
                                  field="roles")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


#: The order in which a save locks the tables (see grant_statements); others come after.
LOCK_ORDER: Final = ("task_history", "tasks", "task_events", "aiecs_watched")


def lock_rank(table: str) -> tuple[int, str]:
    """Where ``table`` comes in ``LOCK_ORDER`` (others after it, by name)."""
    return (LOCK_ORDER.index(table) if table in LOCK_ORDER else len(LOCK_ORDER), table)


def grant_statements(connection: Any, roles: Roles) -> list[str]:
    """The SQL that sets up ``roles`` on the database ``connection`` (a psycopg connection)
    points at. Nothing is executed."""
    cur = connection.cursor()
    schema, database = cur.execute("SELECT current_schema(), current_database()").fetchone()
    names = [t.name for t in metadata.sorted_tables] + [VERSION_TABLE, *LEGACY_TABLES]
    ours = list(dict.fromkeys(names)) + list(VIEW_NAMES)
    relations = dict(cur.execute(
        "SELECT c.relname, c.relkind FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s)",
        [ours],
    ).fetchall())
    if "tasks" not in relations:
        raise ValidationError(
            "grant: the database has no aiecs schema yet; run `aiecs-db upgrade` first",
            field="database",
        )
    functions = [r[0] for r in cur.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'aiecs\\_%' "
        "ORDER BY 1"
    ).fetchall()]
    # What the owner role owns already: ALTER ... OWNER takes an ACCESS EXCLUSIVE lock, so a
    # re-run (after every upgrade) must not stop writers to change nothing.
    owned = {r[0] for r in cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner "
        "WHERE c.relnamespace = current_schema()::regnamespace AND o.rolname = %(owner)s "
        "UNION ALL SELECT t.typname FROM pg_type t JOIN pg_roles o ON o.oid = t.typowner "
        "WHERE t.typnamespace = current_schema()::regnamespace AND o.rolname = %(owner)s "
        "UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_roles o ON o.oid = p.proowner "
        "WHERE p.pronamespace = current_schema()::regnamespace AND o.rolname = %(owner)s",
        {"owner": roles.owner},
    ).fetchall()}
    existing = {r[0] for r in cur.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
        [[roles.owner, roles.writer, roles.reader]],
    ).fetchall()}

    owner, writer, reader = (quote_ident(r) for r in (roles.owner, roles.writer, roles.reader))
    sch, db = quote_ident(schema), quote_ident(database)
    tables = [n for n in ours if relations.get(n) in ("r", "p")]
    # The partitions are owned as their tables are (retention detaches and drops them); they
    # are reached through their tables, so no role is granted anything on them.
    partitions = [r[0] for r in cur.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relnamespace = current_schema()::regnamespace AND p.relname = ANY(%s) "
        "ORDER BY 1", [list(PARTITIONED_TABLES)]).fetchall()]
    views = [n for n in VIEW_NAMES if n in relations]
    out = [f"CREATE ROLE {quote_ident(r)} NOLOGIN"
           for r in (roles.owner, roles.writer, roles.reader) if r not in existing]
    out += [
        f"GRANT CONNECT ON DATABASE {db} TO {owner}, {writer}, {reader}",
        f"GRANT TEMPORARY ON DATABASE {db} TO {writer}",
        f"GRANT USAGE, CREATE ON SCHEMA {sch} TO {owner}",
        f"GRANT USAGE ON SCHEMA {sch} TO {writer}, {reader}",
        f"REVOKE CREATE ON SCHEMA {sch} FROM {writer}, {reader}",
    ]
    altered = sorted((t for t in tables + partitions if t not in owned), key=lock_rank)
    if altered:
        # Lock first, in the order a save takes them (the step table, the task, then the
        # event tables its triggers write and read): waiting for a writer never while
        # holding a table that writer still needs.
        out.append("LOCK TABLE " + ", ".join(f"{sch}.{quote_ident(t)}" for t in altered)
                   + " IN ACCESS EXCLUSIVE MODE")
    out += [f"ALTER TABLE {sch}.{quote_ident(t)} OWNER TO {owner}" for t in altered]
    out += [f"ALTER VIEW {sch}.{quote_ident(v)} OWNER TO {owner}" for v in views if v not in owned]
    out += [f"ALTER TYPE {sch}.{quote_ident(t)} OWNER TO {owner}" for t in ENUM_TYPES
            if t not in owned]
    out += [f"ALTER FUNCTION {sch}.{f} OWNER TO {owner}" for f in functions
            if f not in owned]
    every = ", ".join(f"{sch}.{quote_ident(n)}" for n in tables + views)
    out.append(f"REVOKE ALL ON {every} FROM PUBLIC, {writer}, {reader}")
    written = ", ".join(f"{sch}.{quote_ident(n)}" for n in WRITTEN_TABLES)
    read = ", ".join(f"{sch}.{quote_ident(n)}" for n in (*READ_TABLES, *views))
    out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {written} TO {writer}")
    out.append(f"GRANT SELECT ON {read} TO {writer}")
    if views:
        viewed = [*views, *VIEWED_TABLES]
        out.append(
            f"GRANT SELECT ON {', '.join(f'{sch}.{quote_ident(v)}' for v in viewed)} TO {reader}"
        )
    if VERSION_TABLE in relations:  # the schema check every connection makes reads it
        out.append(f"GRANT SELECT ON {sch}.{quote_ident(VERSION_TABLE)} TO {reader}")
    if SUMMARIES_TABLE in relations:  # the report adds up the periods' summaries
        out.append(f"GRANT SELECT ON {sch}.{quote_ident(SUMMARIES_TABLE)} TO {reader}")
    return out


#: How long ``grant`` waits for a table lock before it lets writers go and tries again: well
#: under the writers' own lock_timeout (10 s by default), since they queue behind it.
GRANT_LOCK_TIMEOUT: Final = "2s"
GRANT_ATTEMPTS: Final = 5


def grant(connection: Any, roles: Roles) -> list[str]:
    """Run :func:`grant_statements` in one transaction; returns what was run.

    Safe beside live writers: the first run changes owners (``ALTER ... OWNER`` locks each
    table for a moment), a re-run changes none. The transaction waits at most
    ``GRANT_LOCK_TIMEOUT`` for a lock and is tried again, up to ``GRANT_ATTEMPTS`` times,
    after a lock timeout or a deadlock with a writer (a writer that loses a deadlock is
    retried by its manager)."""
    statements = grant_statements(connection, roles)
    for attempt in range(1, GRANT_ATTEMPTS + 1):
        try:
            with connection.transaction():
                connection.execute(f"SET LOCAL lock_timeout = '{GRANT_LOCK_TIMEOUT}'")
                for statement in statements:
                    connection.execute(statement)
            return statements
        except (errors.DeadlockDetected, errors.LockNotAvailable):
            if attempt == GRANT_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")
