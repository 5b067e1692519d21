"""Alembic environment of aiecs-persistence.

* The database: ``sqlalchemy.url`` when the caller set it (``aiecs_persistence.migrate``), else
  ``AIECS_DATABASE_URL``, else the embedded default.
* Concurrent upgrades serialise on a PostgreSQL advisory lock (session level, so it survives the
  autocommit blocks that ``ALTER TYPE ... ADD VALUE`` may need); the second process then finds
  the schema at head and does nothing.
* DDL waits at most ``lock_timeout`` (``-x lock_timeout=10s``, default 10s) for its locks
  instead of queueing every other query behind it.
* ``-x legacy_timezone=Europe/Paris`` sets the zone in which upstream AIECS's naive timestamps
  are read when its history is adopted (default: the server's TimeZone).
"""

from __future__ import annotations

import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import NullPool, create_engine
from sqlalchemy.engine import Connection

from aiecs_persistence.config import resolve_url
from aiecs_persistence.migrate import ADVISORY_LOCK_KEY, VERSION_TABLE
from aiecs_persistence.schema import metadata

config = context.config
# `alembic` from a checkout reads alembic.ini: apply its logging sections (the programmatic API,
# aiecs_persistence.migrate, has no file and leaves logging to the application).
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
x_args = context.get_x_argument(as_dictionary=True)
LOCK_TIMEOUT = x_args.get("lock_timeout", "10s")
if not re.fullmatch(r"\d+(ms|s|min)?", LOCK_TIMEOUT):
    raise SystemExit(f"-x lock_timeout={LOCK_TIMEOUT!r}: expected e.g. 500ms, 10s or 2min")

COMMON = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "compare_type": True,
    "compare_server_default": True,
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


def _migrate(connection: Connection) -> None:
    # Wait for any other migrator without a time limit, then bound the DDL's own lock waits.
    connection.exec_driver_sql("SET lock_timeout = 0")
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})")
    try:
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        connection.commit()
        context.configure(connection=connection, **COMMON)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
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
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
