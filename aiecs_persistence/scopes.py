"""Tenants: scoped roles that see, and write, only the rows of their users.

A *scope* gives an existing role the rows whose ``user_id`` is ``LIKE`` one of its patterns
(``acme-%``): read-only, or reads and writes. PostgreSQL enforces it, for every statement the
role runs (psql, the managers, the views, the CLI):

* the scope is a row of ``names.SCOPES_TABLE`` (so it replicates, and a dump keeps it), and the
  role is made a member of the group role ``names.SCOPED_ROLE``;
* every table holding users' rows has row-level security, forced on its owner too, with one
  permissive policy for everyone (``ddl.ROW_SECURITY``); this module adds, for the group role
  only, *restrictive* policies: a member reads the rows its patterns match, and inserts,
  updates and deletes them only when its scope writes. The patterns come from
  ``ddl.SCOPE_PATTERNS_FUNCTION``, evaluated once per statement. Roles outside the group never
  evaluate these policies;
* a scoped role reads no summary of closed periods (they add up every user's steps): its
  reports read its own rows. It reads only its own scope.

The role gets the privileges its scope needs and no more (``SELECT`` on the tables and views; the
writes, and temporary tables for the bulk path, when it writes). A role that would escape the
policies is refused: a superuser, a role with ``BYPASSRLS``, the owner of the tables. On Citus
``scope`` is refused: Citus passes a restrictive policy on to the shards as a permissive one,
and refuses a policy with a subquery (docs/operations.md, Tenants).

Statements are built from the catalog and run in one transaction; ``--print`` shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any, Final

from . import citus, names
from .ddl import VIEW_NAMES
from .errors import ValidationError
from .migrate import VERSION_TABLE
from .roles import ROLE_NAME, Roles, lock_rank, quote_ident

__all__ = ["Scope", "drop_statements", "list_scopes", "problems", "run", "scope_statements"]

PATTERN_MAX: Final = 200
#: ``aiecs-db grant``'s roles by default, which every service or analyst of theirs shares.
OWN_ROLES: Final = astuple(Roles())

#: The tables of users' rows (a scoped role reads those its patterns match, writes them when its
#: scope writes), and the watch registrations (a reader registers its own watches too).
USER_TABLES: Final = ("task_history", "tasks", names.EVENTS_TABLE)
#: What every scoped role reads whole.
SHARED_TABLES: Final = ("error_codes", VERSION_TABLE, names.PARTITIONING_TABLE)


@dataclass(frozen=True)
class Scope:
    role: str
    patterns: tuple[str, ...]
    writes: bool

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "patterns": list(self.patterns), "writes": self.writes}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_role(role: Any) -> str:
    if not isinstance(role, str) or not ROLE_NAME.fullmatch(role):
        raise ValidationError(
            f"role: {role!r} is not a plain lower-case role name (letters, digits, _; at "
            "most 63)", field="role")
    if role in (names.SCOPED_ROLE, *OWN_ROLES):
        raise ValidationError(f"role: {role} is one of aiecs-persistence's own roles (scope "
                              "the login roles of a tenant instead)", field="role")
    return role


def _check_patterns(patterns: Sequence[Any]) -> tuple[str, ...]:
    if not patterns:
        raise ValidationError("users: give at least one pattern (--users 'acme-%')",
                              field="users")
    for pattern in patterns:
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= PATTERN_MAX \
                or "\x00" in pattern:
            raise ValidationError(
                f"users: {pattern!r} is not a LIKE pattern of 1 to {PATTERN_MAX} characters",
                field="users")
    return tuple(dict.fromkeys(patterns))


def _policies(schema: str) -> dict[tuple[str, str], str]:
    """The restrictive policies of the scoped group, by (table, name): their SQL."""
    sch = quote_ident(schema)

    def matches(writes: bool) -> str:
        # An uncorrelated subquery: an initplan, run once per statement (the cast makes the
        # array one value, not a set of rows to compare with).
        return (f"user_id LIKE ANY ((SELECT {sch}.{names.SCOPE_PATTERNS_FUNCTION}("
                f"{'true' if writes else 'false'}))::text[])")

    group = quote_ident(names.SCOPED_ROLE)
    out: dict[tuple[str, str], str] = {}

    def policy(table: str, name: str, command: str, using: str | None,
               check: str | None) -> None:
        clauses = (f" USING ({using})" if using else "") + \
                  (f" WITH CHECK ({check})" if check else "")
        out[(table, name)] = (f"CREATE POLICY {name} ON {sch}.{quote_ident(table)} AS RESTRICTIVE "
                              f"FOR {command} TO {group}{clauses}")

    for table in (*USER_TABLES, names.WATCHED_TABLE):
        writes = table != names.WATCHED_TABLE  # watching is reading
        policy(table, "aiecs_scope_read", "SELECT", matches(False), None)
        policy(table, "aiecs_scope_insert", "INSERT", None, matches(writes))
        policy(table, "aiecs_scope_update", "UPDATE", matches(writes), matches(writes))
        policy(table, "aiecs_scope_delete", "DELETE", matches(writes), None)
    policy(names.SUMMARIES_TABLE, "aiecs_scope_none", "ALL", "false", "false")
    policy(names.SCOPES_TABLE, "aiecs_scope_own", "ALL", "role = current_user", "false")
    return out


def _catalog(connection: Any) -> tuple[str, str, set[tuple[str, str]], bool]:
    """The schema, the database, the policies there are, and whether the group role exists;
    refusing a database without our schema, or a Citus cluster."""
    cur = connection.cursor()
    schema, database = cur.execute("SELECT current_schema(), current_database()").fetchone()
    if cur.execute("SELECT to_regclass(%s) IS NULL",
                   [f"{quote_ident(schema)}.{names.SCOPES_TABLE}"]).fetchone()[0]:
        raise ValidationError(
            "scope: the database has no aiecs schema at head yet; run `aiecs-db upgrade` "
            "first", field="database")
    if cur.execute(citus.PRESENT_SQL).fetchone()[0]:
        raise ValidationError(
            "scope: not on a Citus cluster: Citus passes a restrictive row-level security "
            "policy on to its shards as a permissive one, and refuses a policy with a "
            "subquery, so a scope would not confine its role there (docs/operations.md, "
            "Tenants)", field="database")
    policies = {(t, p) for t, p in cur.execute(
        "SELECT tablename::text, policyname::text FROM pg_policies "
        "WHERE schemaname = current_schema()").fetchall()}
    group = bool(cur.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)",
                             [names.SCOPED_ROLE]).fetchone()[0])
    return schema, database, policies, group


def _check_escapes(connection: Any, role: str) -> None:
    """Refuse a role that does not exist, or one row-level security does not hold."""
    found = connection.execute(
        "SELECT r.rolsuper, r.rolbypassrls, "
        "       EXISTS (SELECT FROM pg_class c WHERE c.oid = to_regclass('tasks') "
        "               AND pg_has_role(r.oid, c.relowner, 'MEMBER')) "
        "FROM pg_roles r WHERE r.rolname = %s", [role]).fetchone()
    if found is None:
        raise ValidationError(f"role: {role} does not exist (CREATE ROLE {role} LOGIN …)",
                              field="role")
    superuser, bypass, owner = found
    why = ("is a superuser" if superuser else "has BYPASSRLS" if bypass
           else "owns the tables (or is a member of their owner)" if owner else None)
    if why:
        raise ValidationError(
            f"role: {role} {why}, so row-level security does not confine it; scope a role "
            "of its own", field="role")


def scope_statements(connection: Any, role: str, patterns: Sequence[str], *,
                     writes: bool = False) -> list[str]:
    """The SQL that scopes ``role`` to the users matching ``patterns`` (idempotent)."""
    role = _check_role(role)
    patterns = _check_patterns(patterns)
    schema, database, policies, group = _catalog(connection)
    _check_escapes(connection, role)
    sch, r = quote_ident(schema), quote_ident(role)
    out = [] if group else [f"CREATE ROLE {quote_ident(names.SCOPED_ROLE)} NOLOGIN"]
    missing = {key: sql for key, sql in _policies(schema).items() if key not in policies}
    if missing:
        # A policy is created under the table's strongest lock: taken first, all of them, in
        # the order a save takes them, so the run never waits for a writer while holding one.
        tables = sorted({t for t, _ in missing}, key=lock_rank)
        out.append("LOCK TABLE " + ", ".join(f"{sch}.{quote_ident(t)}" for t in tables)
                   + " IN ACCESS EXCLUSIVE MODE")
        out += missing.values()
    out += [
        f"GRANT {quote_ident(names.SCOPED_ROLE)} TO {r}",
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {r}",
        f"GRANT USAGE ON SCHEMA {sch} TO {r}",
    ]
    read = [*USER_TABLES, *SHARED_TABLES, names.SUMMARIES_TABLE, names.SCOPES_TABLE,
            *VIEW_NAMES]
    out.append(f"GRANT SELECT ON {', '.join(f'{sch}.{quote_ident(t)}' for t in read)} TO {r}")
    out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {sch}.{quote_ident(names.WATCHED_TABLE)} "
               f"TO {r}")
    written = ", ".join(f"{sch}.{quote_ident(t)}" for t in USER_TABLES)
    if writes:
        out.append(f"GRANT INSERT, UPDATE, DELETE ON {written} TO {r}")
        out.append(f"GRANT TEMPORARY ON DATABASE {quote_ident(database)} TO {r}")
    else:
        out.append(f"REVOKE INSERT, UPDATE, DELETE ON {written} FROM {r}")
    array = "ARRAY[" + ", ".join(_literal(p) for p in patterns) + "]::text[]"
    out.append(
        f"INSERT INTO {sch}.{names.SCOPES_TABLE} (role, patterns, writes) "
        f"VALUES ({_literal(role)}, {array}, {'true' if writes else 'false'}) "
        "ON CONFLICT (role) DO UPDATE SET patterns = EXCLUDED.patterns, "
        "writes = EXCLUDED.writes")
    return out


def drop_statements(connection: Any, role: str) -> list[str]:
    """The SQL that removes ``role``'s scope and what ``scope`` granted it."""
    role = _check_role(role)
    schema, _database, _policies_there, group = _catalog(connection)
    sch, r = quote_ident(schema), quote_ident(role)
    out = [f"DELETE FROM {sch}.{names.SCOPES_TABLE} WHERE role = {_literal(role)}"]
    exists = connection.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)",
                                [role]).fetchone()[0]
    if not exists:
        return out
    every = [*USER_TABLES, *SHARED_TABLES, names.SUMMARIES_TABLE, names.SCOPES_TABLE,
             names.WATCHED_TABLE, *VIEW_NAMES]
    out.append(f"REVOKE ALL ON {', '.join(f'{sch}.{quote_ident(t)}' for t in every)} FROM {r}")
    if group:
        out.append(f"REVOKE {quote_ident(names.SCOPED_ROLE)} FROM {r}")
    return out


def list_scopes(connection: Any) -> list[Scope]:
    """Every scope, by role."""
    _catalog(connection)
    return [Scope(role, tuple(patterns), bool(writes)) for role, patterns, writes in
            connection.execute(f"SELECT role, patterns, writes FROM {names.SCOPES_TABLE} "
                               "ORDER BY role").fetchall()]


def problems(connection: Any) -> list[str]:
    """Drift from what the schema and the scopes need: a table of ``names.ROW_SECURITY_TABLES``
    whose row-level security is off, not forced, or without its open policy; and, where scopes
    exist, a restrictive policy or a role's membership of the scoped group gone. None on Citus,
    where the tables have no row-level security."""
    cur = connection.cursor()
    if cur.execute(citus.PRESENT_SQL).fetchone()[0]:
        return []
    found = []
    for table, enabled, forced, policy in cur.execute(
            "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, "
            "       EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid "
            "               AND p.polname = %(open)s) "
            "FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relname = ANY(%(tables)s) ORDER BY 1",
            {"open": names.OPEN_POLICY, "tables": list(names.ROW_SECURITY_TABLES)}).fetchall():
        if not (enabled and forced):
            found.append(f"row-level security is {'not forced' if enabled else 'off'} on "
                         f"{table} (ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW "
                         "LEVEL SECURITY)")
        if not policy:
            found.append(f"policy {names.OPEN_POLICY} of {table} is missing")
    if cur.execute(f"SELECT to_regclass('{names.SCOPES_TABLE}') IS NULL").fetchone()[0]:
        return found
    # Each scope's role, and whether it exists and is in the group (one query for them all).
    roles = cur.execute(
        f"SELECT s.role, r.oid IS NOT NULL AND g.oid IS NOT NULL "
        "       AND pg_has_role(r.oid, g.oid, 'MEMBER') "
        f"FROM {names.SCOPES_TABLE} s LEFT JOIN pg_roles r ON r.rolname = s.role "
        "LEFT JOIN pg_roles g ON g.rolname = %s ORDER BY 1",
        [names.SCOPED_ROLE]).fetchall()
    if not roles:
        return found
    schema = cur.execute("SELECT current_schema()").fetchone()[0]
    there = {(t, p) for t, p in cur.execute(
        "SELECT tablename::text, policyname::text FROM pg_policies "
        "WHERE schemaname = current_schema()").fetchall()}
    gone = sorted(f"{t}.{p}" for t, p in _policies(schema) if (t, p) not in there)
    if gone:
        found.append("restrictive policies of the scoped roles are missing ("
                     + ", ".join(gone) + "): run `aiecs-db scope` again")
    found += [f"scoped role {role} is missing or not a member of {names.SCOPED_ROLE}: run "
              f"`aiecs-db scope {role}` again" for role, member in roles if not member]
    return found


#: How long ``run`` waits for a table lock (a first scope creates the policies).
LOCK_TIMEOUT: Final = "2s"


def run(connection: Any, statements: Sequence[str]) -> None:
    """Run ``statements`` in one transaction."""
    with connection.transaction():
        connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for statement in statements:
            connection.execute(statement)
