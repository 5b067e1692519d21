"""Schema migrations: a small programmatic API over Alembic, used by the managers and the
command line.

The revisions live in the repository's top-level ``migrations/`` and are copied into the wheel
as ``aiecs_persistence/migrations``; :func:`script_location` finds whichever is present.
Concurrent upgrades are serialised by a PostgreSQL advisory lock taken in ``env.py``.
"""

from __future__ import annotations

import argparse
import functools
import io
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection

from . import citus, names, retry
from .config import safe_url, with_connect_timeout
from .ddl import VIEW_NAMES
from .domain import ErrorCode, TaskStatus
from .errors import DatabaseError, RetryExhaustedError, SchemaMismatchError, ValidationError
from .schema import metadata
from .sqlstates import connect_error, translate, unreachable

__all__ = [
    "ENUMS",
    "VERSION_TABLE",
    "SchemaStatus",
    "check",
    "current",
    "downgrade",
    "head",
    "inspect",
    "is_known_revision",
    "offline_sql",
    "revisions",
    "stamp",
    "upgrade",
]

VERSION_TABLE: Final = "aiecs_alembic_version"
#: Advisory lock key that serialises migrations (any constant; "aiecs" in ASCII).
ADVISORY_LOCK_KEY: Final = 0x6169656373
#: The native enum types and the Python enums they must match, label for label.
ENUMS: Final = {"task_status": TaskStatus, "error_code": ErrorCode}


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """Alembic's filter for autogenerate: the partitions of the history tables (and their
    indexes) are created at run time (``ddl.py``, partitions), not modelled."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return not (reflected and table is not None and any(
        table.startswith(f"{parent}_p") for parent in names.PARTITIONED_TABLES))


def script_location() -> Path:
    """The migrations folder: inside the installed package, else the checkout's top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError(f"migrations not found next to {here} (broken installation?)")


def alembic_config(
    url: str | URL | None = None,
    *,
    stdout: io.StringIO | None = None,
    options: Mapping[str, str] | None = None,
) -> Config:
    """An Alembic ``Config`` for our migrations; ``options`` become ``-x key=value``."""
    cfg = Config(output_buffer=stdout) if stdout is not None else Config()
    if options:
        cfg.cmd_opts = argparse.Namespace(x=[f"{k}={v}" for k, v in options.items()])
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        # ConfigParser interpolation: a literal % must be doubled.
        rendered = with_connect_timeout(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


@functools.cache
def head() -> str:
    """The head revision of the shipped migrations (read once: they do not change while the
    process runs)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"the migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the shipped migrations (a database migrated by newer
    code is at a revision this version does not know)."""
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # Alembic's "no such revision" (ResolutionError is one)
        return False


@contextmanager
def connection(url: str | URL) -> Iterator[Connection]:
    """A SQLAlchemy connection to ``url`` (no pool), opened within its connect timeout; a
    failure to connect is one clear error (``sqlstates.connect_error``). A server that does
    not take connections now (refused, starting, stopping) is asked again by the managers'
    default retry policy (``retry.py``), then it is ``RetryExhaustedError`` (E005), as a
    manager's call would be."""
    target = with_connect_timeout(url)
    engine = sa.create_engine(target, poolclass=sa.NullPool)
    try:
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = engine.connect()
                break
            except sa.exc.DBAPIError as exc:
                error = connect_error(exc, safe_url(target))
            if not unreachable(error):
                raise error from None
            if attempt >= retry.MAX_ATTEMPTS:  # the rule of the managers' calls: E005
                raise RetryExhaustedError(
                    f"{error.message} (gave up after {attempt} attempts)", attempts=attempt,
                ) from None
            time.sleep(retry.backoff(attempt))
        with conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def _alembic(operation: str) -> Iterator[None]:
    """Alembic's failures as ours: an unknown revision is a ``ValidationError`` naming it,
    a database failure its ``PersistenceError``."""
    from alembic.util import CommandError

    from .telemetry import step_span

    try:
        with step_span(f"migrate: {operation}"):
            yield
    except CommandError as exc:
        raise ValidationError(f"revision: {exc}", field="revision") from None
    except sa.exc.SQLAlchemyError as exc:
        raise translate(exc, operation=operation) from None


def upgrade(
    url: str | URL, revision: str = "head", *, options: Mapping[str, str] | None = None
) -> None:
    """Migrate the database to ``revision`` (safe when many processes do it at once).

    ``options`` are the ``-x`` arguments of ``env.py`` and the revisions, e.g.
    ``{"lock_timeout": "30s", "legacy_timezone": "Europe/Paris"}``.
    """
    with _alembic(f"upgrade to {revision}"):
        command.upgrade(alembic_config(url, options=options), revision)


def downgrade(
    url: str | URL, revision: str, *, options: Mapping[str, str] | None = None
) -> None:
    """Migrate the database down to ``revision`` (``base`` removes everything; ``-1`` one
    revision down)."""
    with _alembic(f"downgrade to {revision}"):
        command.downgrade(alembic_config(url, options=options), revision)


def stamp(url: str | URL, revision: str) -> None:
    """Record ``revision`` as the database's without running any migration."""
    with _alembic(f"stamp {revision}"):
        command.stamp(alembic_config(url), revision)


def offline_sql(revision: str = "head", *, start: str | None = None,
                down: bool = False, options: Mapping[str, str] | None = None) -> str:
    """The SQL an upgrade to ``revision`` (from ``start``, default: empty) would run — or,
    with ``down``, a downgrade to it from ``start`` (default: head) — for a DBA to review
    and apply."""
    out = io.StringIO()
    cfg = alembic_config(None, stdout=out, options=options)
    with _alembic("offline SQL"):
        if down:
            command.downgrade(cfg, f"{start or head()}:{revision}", sql=True)
        else:
            command.upgrade(cfg, f"{start}:{revision}" if start else revision, sql=True)
    return out.getvalue()


def revisions() -> list[tuple[str, str | None, str]]:
    """The shipped revisions, newest first: (revision, the one it revises, its title)."""
    script = ScriptDirectory.from_config(alembic_config())
    out = []
    for rev in script.walk_revisions():
        down = rev.down_revision if isinstance(rev.down_revision, str | None) else None
        out.append((rev.revision, down, (rev.doc or "").strip().splitlines()[0]))
    return out


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def current(url: str | URL) -> str | None:
    """The revision the database is at (None for an empty database)."""
    try:
        with connection(url) as conn:
            return current_revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise translate(exc, operation="read the schema revision") from None


@dataclass(frozen=True)
class SchemaStatus:
    """What :func:`inspect` found: the revision, any enum drift, and what blocks an upgrade."""

    current: str | None
    head: str
    enum_problems: Sequence[str] = field(default_factory=tuple)
    #: The database has enum labels the code does not know (added by hand, or by newer code).
    unknown_labels: bool = False
    #: A ``task_history`` table that is neither ours nor upstream AIECS's is in the way.
    foreign_table: bool = False
    #: The database is a Citus coordinator (``citus.py``).
    on_citus: bool = False
    #: On Citus: what is not distributed as it should be.
    distribution_problems: Sequence[str] = field(default_factory=tuple)
    #: The schema that holds our objects (found by the version table on the search path).
    schema: str | None = None
    #: Relations named like ours in a schema earlier on the search path ("schema.name"): they
    #: would answer our unqualified statements in place of ours.
    shadowing: Sequence[str] = field(default_factory=tuple)

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def ok(self) -> bool:
        return (self.at_head and not self.enum_problems and not self.distribution_problems
                and not self.shadowing)

    def describe(self) -> str:
        """What is wrong, and the remedy that fixes it (``upgrade`` only where it does)."""
        if self.ok:
            return f"schema at head ({self.head})"
        parts = []
        if not self.at_head:
            where = self.current or "empty (no aiecs-persistence schema)"
            parts.append(f"the database is at revision {where}, not at head {self.head}")
        parts.extend(self.enum_problems)
        parts.extend(f"on Citus, {p}" for p in self.distribution_problems)
        parts.extend(f"{name} shadows aiecs-persistence's {name.rsplit('.', 1)[1]} in schema "
                     f"{self.schema} (its schema comes earlier on the search_path)"
                     for name in self.shadowing)
        return "; ".join(parts) + "; " + self.remedy()

    def remedy(self) -> str:
        if self.shadowing:
            return (f"drop or rename what shadows our objects, and revoke CREATE on the "
                    f"database from roles that should not create schemas; or name our schema "
                    f"in the URL (options=-c search_path={self.schema})")
        if self.foreign_table:
            return ("a table task_history that is not aiecs-persistence's (nor upstream "
                    "AIECS history) is in the way: rename or drop it, or use another database "
                    "or schema (options=-c search_path=…)")
        if self.current is not None and not is_known_revision(self.current):
            return ("newer code migrated this database: upgrade aiecs-persistence (pip install "
                    "-U aiecs-persistence)")
        if self.unknown_labels and self.at_head:
            return ("the database has enum labels this version does not know (added by hand, "
                    "or by newer code): upgrade aiecs-persistence, or remove them as "
                    "docs/operations.md (Evolving an enum) describes")
        return "run `aiecs-db upgrade` (or `alembic upgrade head`)"


ENUM_LABELS_SQL: Final = """
SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typname IN ('task_status', 'error_code') AND pg_type_is_visible(t.oid)
GROUP BY t.typname
"""


def enum_problems(labels: dict[str, list[str]]) -> list[str]:
    """Compare database enum labels (by type name) with the Python enums."""
    problems = []
    for type_name, enum in ENUMS.items():
        expected = [m.value for m in enum]
        found = labels.get(type_name)
        if found is None:
            problems.append(f"enum type {type_name} is missing")
        elif found != expected:
            problems.append(
                f"enum type {type_name} has labels {found}, but {enum.__name__} has {expected}"
            )
    return problems


FOREIGN_TABLE_SQL: Final = """
SELECT EXISTS (SELECT FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'task_history')
   AND NOT EXISTS (SELECT FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'task_history'
                     AND column_name IN ('step_name', 'timestamp'))
"""


#: Every relation our statements name, unqualified (tables, views, the version table).
OUR_RELATIONS: Final = (*sorted(metadata.tables), *VIEW_NAMES, VERSION_TABLE)

#: Where relations named like ours are on the effective search path, first schema first.
PLACEMENT_SQL: Final = """
SELECT n.nspname::text, c.relname::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname::text = ANY(%(names)s) AND n.nspname::text = ANY(current_schemas(false))
ORDER BY array_position(current_schemas(false), n.nspname::text), c.relname
"""


def placement(connection: Connection) -> tuple[str | None, tuple[str, ...]]:
    """Our schema (the first on the search path with our version table, else the current
    schema, where a migration would create it) and what shadows our relations there: any
    relation named like one of ours in a schema earlier on the search path."""
    rows = [(schema, name) for schema, name in
            connection.exec_driver_sql(PLACEMENT_SQL, {"names": list(OUR_RELATIONS)})]
    ours = next((schema for schema, name in rows if name == VERSION_TABLE), None)
    if ours is None:
        return connection.exec_driver_sql("SELECT current_schema()").scalar(), ()
    order = list(dict.fromkeys(schema for schema, _ in rows))
    earlier = set(order[:order.index(ours)])
    return ours, tuple(f"{schema}.{name}" for schema, name in rows if schema in earlier)


def inspect_connection(connection: Connection) -> SchemaStatus:
    revision = current_revision(connection)
    schema, shadowing = placement(connection)
    labels = {name: list(values) for name, values in connection.exec_driver_sql(ENUM_LABELS_SQL)}
    problems = enum_problems(labels) if revision is not None else []
    unknown = any(set(labels.get(name, ())) - {m.value for m in enum}
                  for name, enum in ENUMS.items())
    foreign = revision is None and bool(connection.exec_driver_sql(FOREIGN_TABLE_SQL).scalar())
    on_citus = citus.present(connection)
    distribution = citus.problems(connection) if on_citus and revision is not None else []
    return SchemaStatus(current=revision, head=head(), enum_problems=tuple(problems),
                        unknown_labels=unknown, foreign_table=foreign, on_citus=on_citus,
                        distribution_problems=tuple(distribution), schema=schema,
                        shadowing=shadowing)


def inspect(url: str | URL) -> SchemaStatus:
    """The schema's revision and enum drift, without changing anything."""
    head()  # the scripts are read before connecting: the connection is open for its queries
    try:
        with connection(url) as conn:
            return inspect_connection(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise translate(exc, operation="inspect the schema") from None


def check(url: str | URL) -> SchemaStatus:
    """Raise ``SchemaMismatchError`` unless the database is at head with matching enums."""
    found = inspect(url)
    if not found.ok:
        raise SchemaMismatchError(found.describe())
    return found
