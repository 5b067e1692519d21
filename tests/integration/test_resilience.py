"""Retries, concurrency, start-up races and secrets (contract §5, §6)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseManager,
    PersistenceError,
    SyncDatabaseManager,
    TaskStatus,
    TaskStepResult,
)

from ..conftest import conninfo
from ..managers import close, make_manager


def done(name, result=None):
    return TaskStepResult(name, result, True, "ok", "completed")


def kill_connections(url) -> int:
    with psycopg.connect(conninfo(url.set(database="postgres")), autocommit=True) as admin:
        return len(admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (url.database,)).fetchall())


def test_saves_survive_killed_connections(kind, db_url, psql):
    manager = make_manager(kind, url=db_url, backoff_base=0.01)
    try:
        for i in range(3):
            manager.save_task_history("u", "t", i, done("op"))
        psql.close()
        assert kill_connections(db_url) >= 1
        for i in range(3, 6):
            assert manager.save_task_history("u", "t", i, done("op")) is True
        assert [e["step"] for e in manager.load_task_history("u", "t")] == list(range(6))
    finally:
        close(manager)


def test_64_coroutines_overlapping_writes(db_url, psql):
    async def main() -> None:
        async with DatabaseManager(url=db_url, pool_size=8, max_overflow=0) as db:
            async def writer(n: int) -> None:
                for step in range(10):
                    # Every step of every task is saved by two writers: no duplicates, no errors.
                    await db.save_task_history("u", f"task-{n % 32}", step, done(f"op{step}"))

            await asyncio.gather(*(writer(n) for n in range(64)))
            cancels = await asyncio.gather(
                *(db.mark_task_as_cancelled("u", f"task-{n}") for n in range(0, 32, 2)))
            assert all(cancels)

    asyncio.run(main())
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (320,)
    assert dict(psql.execute("SELECT status::text, count(*) FROM tasks GROUP BY 1").fetchall()
                ) == {"running": 16, "cancelled": 16}


def test_16_threads_blocking_manager(db_url, psql):
    errors: list[BaseException] = []
    with SyncDatabaseManager(url=db_url, pool_size=8) as db:
        def writer(n: int) -> None:
            try:
                for step in range(10):
                    db.save_task_history("u", f"task-{n % 8}", step, done(f"op{step}"))
                db.finish_task("u", f"task-{n % 8}", "completed")
            except PersistenceError as exc:  # a second finish of a completed task is fine
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {db.check_task_status("u", f"task-{n}") for n in range(8)} == {
            TaskStatus.COMPLETED}
    assert errors == []
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (80,)


def _connect_and_save(url: str) -> str:
    try:
        with SyncDatabaseManager(url=url) as db:
            db.save_task_history("u", "t", 0, done("op"))
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_eight_processes_connecting_to_an_empty_database(empty_db_url):
    url = empty_db_url.render_as_string(hide_password=False)
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        assert pool.map(_connect_and_save, [url] * 8) == ["ok"] * 8
    with psycopg.connect(conninfo(empty_db_url)) as conn:
        assert conn.execute("SELECT count(*) FROM task_history").fetchone() == (1,)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_passwords_never_reach_logs_or_errors(kind, caplog):
    caplog.set_level(logging.DEBUG)
    manager = make_manager(kind, url="postgresql://bob:sw0rdfish@127.0.0.1:1/db",
                           max_attempts=2, backoff_base=0.01)
    try:
        with pytest.raises(PersistenceError) as info:
            manager.save_task_history("u", "t", 0, done("op"))
    finally:
        close(manager)
    assert "sw0rdfish" not in str(info.value) + repr(info.value) + repr(manager.manager)
    assert "sw0rdfish" not in caplog.text
