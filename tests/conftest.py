"""Fixtures shared by every kind of test: a real PostgreSQL and isolated databases."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from aiecs_persistence import migrate
from aiecs_persistence.config import libpq_conninfo

from .database import Server, clean_shared, find_server, temporary_database
from .managers import Driven, close, make_manager

_server: Server | None = None


def server() -> Server:
    global _server
    if _server is None:
        _server = find_server()
    return _server


def pytest_report_header(config: pytest.Config) -> str:
    found = server()
    return (
        f"database: {found.backend}, PostgreSQL {found.version}, "
        f"at {found.admin_url.render_as_string(hide_password=True)}"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.close()


@pytest.fixture(scope="session")
def pg() -> Server:
    return server()


@pytest.fixture(scope="session")
def template_db(pg: Server) -> Iterator[str]:
    """A database migrated to head, copied for each test that needs the schema (on Citus: the
    shared database, migrated and distributed)."""
    if pg.citus:
        migrate.upgrade(pg.admin_url)
        yield str(pg.admin_url.database)
        return
    url = pg.create_database(prefix="aiecs_template")
    migrate.upgrade(url)
    try:
        yield str(url.database)
    finally:
        pg.drop_database(url)


@pytest.fixture
def db_url(pg: Server, template_db: str) -> Iterator[URL]:
    """A fresh database at head, for this test only (on Citus: the shared one, emptied)."""
    if pg.citus:
        clean_shared(pg.admin_url)
        yield pg.admin_url
        return
    with temporary_database(pg, template_db) as url:
        yield url


@pytest.fixture
def private_db_url(pg: Server, db_url: URL) -> URL:
    """``db_url`` for a test that changes the schema itself (an enum label cannot be taken
    back): skipped where the tests share one database (Citus)."""
    if pg.citus:
        pytest.skip("changes the schema itself, and the Citus run shares one database")
    return db_url


@pytest.fixture
def empty_db_url(pg: Server) -> Iterator[URL]:
    """A fresh empty database, for this test only."""
    with temporary_database(pg) as url:
        yield url


def interruptible() -> None:
    """``preexec_fn`` of a command a test interrupts: Ctrl-C reaches it as in a terminal, even
    when the tests run as a background job (whose shell ignores SIGINT, and so would the
    command, which inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def conninfo(url: URL) -> str:
    """A libpq URI for psycopg (the way psql or any other writer would connect)."""
    return libpq_conninfo(url)


@pytest.fixture
def psql(db_url: URL) -> Iterator[psycopg.Connection]:
    """A plain psycopg connection in autocommit: a stand-in for someone typing in psql."""
    with psycopg.connect(conninfo(db_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
def engine(db_url: URL) -> Iterator[sa.Engine]:
    eng = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(kind: str, db_url: Any) -> Iterator[Driven]:
    driven = make_manager(kind, url=db_url)
    driven.connect()
    try:
        yield driven
    finally:
        close(driven)
