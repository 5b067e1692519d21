"""Every wait is bounded (contract §5): a server that never answers, a backend that stopped
answering mid-call, and a migration lock held by someone else each end, in their configured
time, with one clear ``QueryTimeoutError`` (E002) saying what was waited for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseManager,
    QueryTimeoutError,
    SyncDatabaseManager,
    TaskStepResult,
    migrate,
)
from aiecs_persistence.migrate import ADVISORY_LOCK_KEY

from ..conftest import conninfo

STEP = TaskStepResult("op", {"x": 1}, True, "ok", "completed")
# Every command of aiecs-db that talks to a database.
DATABASE_COMMANDS = [
    ["upgrade"], ["downgrade", "base"], ["current"], ["check"], ["tasks", "u"],
    ["history", "u", "t"], ["report"], ["cleanup"], ["grant"],
    ["import-legacy", "--from-jsonl", "/dev/null"],
]


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A TCP listener that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"postgresql://someone:hunter2@127.0.0.1:{listener.getsockname()[1]}/db"
    finally:
        listener.close()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_connect_to_a_server_that_never_answers_ends_within_connect_timeout(silent_url, kind):
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="cannot connect") as info:
        if kind == "async":
            asyncio.run(DatabaseManager(url=silent_url, connect_timeout=2).connect())
        else:
            SyncDatabaseManager(url=silent_url, connect_timeout=2).connect()
    assert time.monotonic() - started < 2 + 2
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: c[0])
def test_every_database_command_ends_within_connect_timeout(silent_url, command):
    url = f"{silent_url}?connect_timeout=2"
    # The command's start-up on this machine as it is now (slower while other suites run).
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "aiecs_persistence", *command, "--help"],
                   capture_output=True, timeout=30, check=True, stdin=subprocess.DEVNULL)
    start_up = time.monotonic() - started
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "aiecs_persistence", *command, "--url", url],
                          capture_output=True, text=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)
    # connect_timeout + 2 s + the start-up (at least 1.5 s)
    assert time.monotonic() - started < 2 + 2 + max(1.5, 2 * start_up)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "E002" in lines[0] and "cannot connect" in lines[0], lines
    assert "hunter2" not in done.stderr + done.stdout


def server_pids(psql: psycopg.Connection[Any]) -> list[int]:
    """This test database's other backends, when they are processes of this machine."""
    pids = [r[0] for r in psql.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchall()]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.exists() or b"postgres" not in cmdline.read_bytes():
            pytest.skip("the server's processes are not on this machine (a container?)")
    return pids


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        pytest.skip("cannot signal the server's processes (run as root or as their user)")
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("call", ["save", "load", "cleanup"])
def test_a_stopped_backend_ends_the_call_at_its_deadline(db_url, psql, kind, call):
    settings = {"url": db_url, "pool_size": 1, "max_overflow": 0, "statement_timeout_ms": 1000,
                "deadline_grace_ms": 500, "auto_migrate": False}
    calls = {"save": ("save_task_history", ("u", "t", 1, STEP)),
             "load": ("load_task_history", ("u", "t")), "cleanup": ("cleanup_old_tasks", (0,))}
    name, args = calls[call]

    async def run_async() -> float:
        async with DatabaseManager(**settings) as db:
            await db.save_task_history("u", "t", 0, STEP)  # the pool's one connection is up
            with stopped(server_pids(psql)):
                started = time.monotonic()
                with pytest.raises(QueryTimeoutError, match="no answer from the server"):
                    await getattr(db, name)(*args)
                return time.monotonic() - started

    def run_sync() -> float:
        with SyncDatabaseManager(**settings) as db:
            db.save_task_history("u", "t", 0, STEP)
            with stopped(server_pids(psql)):
                started = time.monotonic()
                with pytest.raises(QueryTimeoutError, match="no answer from the server"):
                    getattr(db, name)(*args)
                return time.monotonic() - started

    elapsed = asyncio.run(run_async()) if kind == "async" else run_sync()
    # cleanup's first statement is the one stopped: one statement's deadline (1.5 s).
    assert 1.4 < elapsed < 1.5 + 1.0, elapsed


def test_upgrade_waits_for_another_migration_at_most_its_lock_timeout(db_url):
    with psycopg.connect(conninfo(db_url), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="advisory lock") as info:
            migrate.upgrade(db_url, options={"migration_lock_timeout": "1s"})
        assert time.monotonic() - started < 1 + 2
        assert info.value.code.value == "E002" and str(ADVISORY_LOCK_KEY) in str(info.value)


@pytest.mark.parametrize("call", ["get_task", "watch"])
def test_a_call_cancelled_as_the_pool_hands_it_a_connection_ends(db_url, call):
    """psycopg_pool waits for a connection with ``asyncio.wait_for``, which on Python 3.11
    drops a cancellation that arrives as the connection is handed over: the call carried on,
    and a cancelled watcher (which never ends by itself) followed its task for ever. The
    manager honours the cancellation and gives the connection back."""
    async def main() -> None:
        async with DatabaseManager(url=db_url, pool_size=1, max_overflow=0,
                                   auto_migrate=False) as db:
            await db.get_task("warm", "up")
            pool = db._pool
            assert pool is not None
            if call == "get_task":
                work: Any = db.get_task("u", "t")
            else:
                async def follow() -> None:
                    async for _ in db.watch_user_tasks("u", poll_interval=0.05):
                        pass

                work = follow()
            task = asyncio.ensure_future(work)
            held = await pool.getconn()  # the pool's one connection, the call waits for it
            await asyncio.sleep(0.1)
            await pool.putconn(held)  # handed over to the waiting call ...
            task.cancel()  # ... as it is cancelled
            done, _ = await asyncio.wait([task], timeout=5)
            assert done, "the cancelled call did not end"
            assert task.cancelled()
            assert await db.get_task("u", "t") is None  # the connection came back

    asyncio.run(main())
