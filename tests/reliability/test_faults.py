"""Faults while a writer saves continuously: killed connections, a server restart, a lock.

After each: every save that returned is stored exactly once; every save that failed raised a
``PersistenceError`` with the right code; nothing else is in the table. Each test is bounded
in time (a fixed number of saves, a deadline) and stops by itself.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseManager,
    ErrorCode,
    PersistenceError,
    QueryTimeoutError,
    RetryExhaustedError,
    SyncDatabaseManager,
    TaskStepResult,
    embedded,
    migrate,
)
from aiecs_persistence.config import normalize_url

from ..conftest import conninfo


def done(step: int) -> TaskStepResult:
    return TaskStepResult("op", step, True, "ok", "completed")


def stored_steps(url: Any) -> list[int]:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT step FROM task_history WHERE task_id = 'w' ORDER BY step").fetchall()]


def check_outcomes(ok: list[int], failed: dict[int, PersistenceError], stored: list[int],
                   codes: set[ErrorCode]) -> None:
    assert len(stored) == len(set(stored))  # exactly once
    assert set(ok) <= set(stored)  # every save that returned is there
    # A failed save may still have committed (the answer was lost with the connection); apart
    # from those, nothing is in the table that no one asked for.
    assert set(stored) <= set(ok) | set(failed)
    for exc in failed.values():
        assert isinstance(exc, PersistenceError)
        assert exc.code in codes, exc


def kill_loop(url: Any, stop: threading.Event, every: float) -> int:
    """pg_terminate_backend on every other connection to the database, until ``stop``."""
    kills = 0
    with psycopg.connect(conninfo(url), autocommit=True) as admin:
        while not stop.wait(every):
            kills += len(admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'").fetchall())
    return kills


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_connections_killed_repeatedly(db_url, kind):
    ok: list[int] = []
    failed: dict[int, PersistenceError] = {}
    stop = threading.Event()
    kills: list[int] = []
    killer = threading.Thread(target=lambda: kills.append(kill_loop(db_url, stop, 0.05)))
    settings = {"url": db_url, "max_attempts": 6, "backoff_base": 0.01, "backoff_max": 0.1,
                "pool_size": 2, "max_overflow": 2}
    saves = 300

    def record(step: int, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            failed[step] = outcome
        else:
            ok.append(step)

    killer.start()
    try:
        if kind == "sync":
            with SyncDatabaseManager(**settings) as db:
                for step in range(saves):
                    try:
                        db.save_task_history("u", "w", step, done(step))
                        record(step, None)
                    except PersistenceError as exc:
                        record(step, exc)
        else:
            async def main() -> None:
                async with DatabaseManager(**settings) as db:
                    for step in range(saves):
                        try:
                            await db.save_task_history("u", "w", step, done(step))
                            record(step, None)
                        except PersistenceError as exc:
                            record(step, exc)

            asyncio.run(main())
    finally:
        stop.set()
        killer.join(30)
    assert kills and kills[0] > 5, "the killer did not kill"
    check_outcomes(ok, failed, stored_steps(db_url), {ErrorCode.RETRY_EXHAUSTED})
    assert len(ok) > saves * 0.9  # retries absorb almost every kill


@pytest.fixture
def own_server() -> Any:
    """A throwaway embedded cluster this test may stop and start at will."""
    base = Path(tempfile.mkdtemp(prefix="aiecs-restart-", dir="/tmp"))
    base.chmod(0o755)
    try:
        url = normalize_url(embedded.start(base)).set(database="postgres")
        migrate.upgrade(url)
        yield base, url
    finally:
        embedded.stop(base)
        shutil.rmtree(base, ignore_errors=True)


def test_server_stopped_and_restarted(own_server):
    base, url = own_server
    ok: list[int] = []
    failed: dict[int, PersistenceError] = {}
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(0.5)
        embedded.stop(base)
        time.sleep(1.0)
        embedded.start(base)
        restarted.set()

    bouncer = threading.Thread(target=restart)
    deadline = time.monotonic() + 60
    with SyncDatabaseManager(url=url, max_attempts=8, backoff_base=0.1, backoff_max=1.0,
                             connect_timeout=2) as db:
        bouncer.start()
        step = 0
        while time.monotonic() < deadline and not (restarted.is_set() and len(ok) > 30):
            try:
                db.save_task_history("u", "w", step, done(step))
                ok.append(step)
            except PersistenceError as exc:
                failed[step] = exc
            step += 1
            time.sleep(0.01)
        bouncer.join(60)
    assert restarted.is_set()
    check_outcomes(ok, failed, stored_steps(url), {ErrorCode.RETRY_EXHAUSTED})
    assert ok[-1] == step - 1  # writing again after the restart


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_blocked_statement_times_out_within_its_bound(route, db_url, kind):
    """Another transaction holds a lock the save needs: QueryTimeoutError (E002), in time,
    not retried, nothing written; then saving works again."""
    settings = {"url": route.url, "lock_timeout_ms": 300, "statement_timeout_ms": 2000,
                "auto_migrate": False, **route.settings}
    elapsed: list[float] = []
    with psycopg.connect(conninfo(db_url)) as blocker:
        if kind == "sync":
            with SyncDatabaseManager(**settings) as db, pytest.raises(QueryTimeoutError) as info:
                blocker.execute("LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                try:
                    db.save_task_history("u", "w", 0, done(0))
                finally:
                    elapsed.append(time.monotonic() - started)
        else:
            async def main() -> None:
                async with DatabaseManager(**settings) as db:
                    blocker.execute("LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE")
                    started = time.monotonic()
                    try:
                        await db.save_task_history("u", "w", 0, done(0))
                    finally:
                        elapsed.append(time.monotonic() - started)

            with pytest.raises(QueryTimeoutError) as info:
                asyncio.run(main())
        blocker.rollback()
    assert info.value.code is ErrorCode.TIMEOUT_ERROR and not isinstance(
        info.value, RetryExhaustedError)
    assert "lock timeout" in info.value.message
    assert 0.25 < elapsed[0] < 0.3 + 0.7  # the 300 ms lock timeout, not retried
    assert stored_steps(db_url) == []


def test_statement_timeout_bounds_a_slow_statement(route, db_url):
    """A statement that runs too long is cancelled by its statement_timeout."""
    with SyncDatabaseManager(url=route.url, statement_timeout_ms=200, auto_migrate=False,
                             **route.settings) as db:
        with psycopg.connect(conninfo(db_url), autocommit=True) as psql:
            psql.execute("CREATE FUNCTION pg_temp_slow() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$")
            psql.execute("CREATE TRIGGER slow BEFORE INSERT ON task_history "
                         "FOR EACH ROW EXECUTE FUNCTION pg_temp_slow()")
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="statement timeout"):
            db.save_task_history("u", "w", 0, done(0))
        assert time.monotonic() - started < 2.0
    assert stored_steps(db_url) == []


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_outage_longer_than_the_pools_backoff_ends_with_the_first_call(own_server, kind):
    """While the server is down, each call fails within its retries (E005), not after
    ``pool_timeout``; once it is back, the first call succeeds at once. psycopg_pool's own
    reconnection waits 1, 2, 4, 8 … seconds between attempts: after 12 s down, its next
    attempt would come seconds after the restart."""
    from ..managers import close, make_manager

    base, url = own_server
    db = make_manager(kind, url=url, connect_timeout=2)
    try:
        db.save_task_history("u", "o", 0, done(0))
        embedded.stop(base)
        stopped = time.monotonic()
        step = 1
        while time.monotonic() - stopped < 12:
            began = time.monotonic()
            with pytest.raises(RetryExhaustedError) as info:
                db.save_task_history("u", "o", step, done(step))
            assert time.monotonic() - began < 5, "a call waited for the pool"
            assert info.value.code is ErrorCode.RETRY_EXHAUSTED
            step += 1
            time.sleep(2)
        embedded.start(base)
        began = time.monotonic()
        db.save_task_history("u", "o", step, done(step))
        assert time.monotonic() - began < 1.5, "the first call after the restart waited"
        assert [e["step"] for e in db.load_task_history("u", "o")][-1] == step
    finally:
        close(db)
