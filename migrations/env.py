"""Alembic environment of aiecs-persistence.

* The database: ``sqlalchemy.url`` when the caller set it (``aiecs_persistence.migrate``), else
  ``AIECS_DATABASE_URL``, else the embedded default.
* Concurrent upgrades serialise on a PostgreSQL advisory lock (session level, so it survives the
  autocommit blocks that ``ALTER TYPE ... ADD VALUE`` may need); the second process then finds
  the schema at head and does nothing.
* DDL waits at most ``lock_timeout`` (``-x lock_timeout=10s``, default 10s) for its locks
  instead of queueing every other query behind it; a second migrator waits at most
  ``-x migration_lock_timeout`` (default 60s) for the first, then fails with E002 naming the
  lock. The connection is opened within its ``connect_timeout`` (default 10s).
* On a Citus coordinator, every run ends by distributing what is not distributed yet
  (``aiecs_persistence.citus``): no hand-written step.
* ``-x legacy_timezone=Europe/Paris`` sets the zone in which upstream AIECS's naive timestamps
  are read when its history is adopted (default: the server's TimeZone).
"""

from __future__ import annotations

import re
import time
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from aiecs_persistence import citus
from aiecs_persistence.config import resolve_url
from aiecs_persistence.errors import QueryTimeoutError, ValidationError
from aiecs_persistence.migrate import ADVISORY_LOCK_KEY, VERSION_TABLE, include_object
from aiecs_persistence.migrate import connection as connection_to
from aiecs_persistence.schema import metadata
from aiecs_persistence.telemetry import revision_spans

config = context.config
# `alembic` from a checkout reads alembic.ini: apply its logging sections (the programmatic API,
# aiecs_persistence.migrate, has no file and leaves logging to the application).
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
x_args = context.get_x_argument(as_dictionary=True)


#: A PostgreSQL duration as ``-x`` takes it: a number, and ms, s or min (none: milliseconds).
_DURATION = re.compile(r"(\d+)(ms|s|min)?")


def _duration(name: str, default: str) -> str:
    value = x_args.get(name, default)
    if not _DURATION.fullmatch(value):
        raise ValidationError(f"-x {name}={value!r}: expected e.g. 500ms, 10s or 2min",
                              field=name)
    return value


LOCK_TIMEOUT = _duration("lock_timeout", "10s")
MIGRATION_LOCK_TIMEOUT = _duration("migration_lock_timeout", "60s")

COMMON = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "compare_type": True,
    "compare_server_default": True,
    "include_object": include_object,
    # Each revision applied is a span, when OpenTelemetry is there (docs/observability.md).
    "on_version_apply": revision_spans(),
}


def run_offline() -> None:
    context.configure(
        url="postgresql+psycopg://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **COMMON,
    )
    with context.begin_transaction():
        context.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        context.run_migrations()


def _seconds(duration: str) -> float:
    """A ``_duration`` in seconds (no unit: milliseconds, as PostgreSQL reads it)."""
    match = _DURATION.fullmatch(duration)
    assert match is not None
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 0.001}[match.group(2)]
    return int(match.group(1)) * scale


def _take_migration_lock(connection: Connection) -> None:
    """Wait at most ``migration_lock_timeout`` for another migrator to finish.

    It polls ``pg_try_advisory_lock`` between transactions rather than waiting in
    ``pg_advisory_lock``: a migrator waiting inside a statement holds a snapshot, and a
    ``CREATE INDEX CONCURRENTLY`` of the running migration waits for every older snapshot to
    go, which would be a deadlock between the two."""
    deadline = time.monotonic() + _seconds(MIGRATION_LOCK_TIMEOUT)
    pause = 0.02
    while True:
        taken = connection.exec_driver_sql(
            f"SELECT pg_try_advisory_lock({ADVISORY_LOCK_KEY})").scalar()
        connection.commit()
        if taken:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueryTimeoutError(
                f"migrate: another migration holds the migrations' advisory lock "
                f"(pg_advisory_lock({ADVISORY_LOCK_KEY})); gave up after waiting "
                f"{MIGRATION_LOCK_TIMEOUT} (-x migration_lock_timeout=…)",
                sqlstate="55P03",
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)


def _migrate(connection: Connection) -> None:
    # Wait (bounded) for any other migrator, then bound the DDL's own lock waits.
    _take_migration_lock(connection)
    try:
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        on_citus = citus.present(connection)
        if on_citus:  # revisions may replace the triggers of distributed tables
            connection.exec_driver_sql("SET citus.enable_unsafe_triggers = on")
            # ... and one run may change a distributed table, then a function: Citus refuses
            # a function command after a parallel operation on a distributed table in the
            # same transaction, so the shards are changed one by one.
            connection.exec_driver_sql("SET citus.multi_shard_modify_mode = 'sequential'")
        connection.commit()
        context.configure(connection=connection, **COMMON)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
        if on_citus and context.get_context().get_current_revision() is not None:
            citus.distribute(connection)  # what is not placed on the cluster yet
        # Downgraded to base: leave nothing behind, not even the (now empty) version table.
        if context.get_context().get_current_revision() is None:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {VERSION_TABLE}")
            connection.commit()
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})")
        connection.commit()


def run_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or resolve_url()
    with connection_to(url) as conn:
        _migrate(conn)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
