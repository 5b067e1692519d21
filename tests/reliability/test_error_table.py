"""Each failure reaches the caller as the right typed error naming its cause or field, never as
a raw exception (contract §6), and the library logs only what the caller cannot see."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseError,
    DatabaseManager,
    InvalidTransitionError,
    QueryTimeoutError,
    RetryExhaustedError,
    SyncDatabaseManager,
    TaskStepResult,
    ValidationError,
)
from aiecs_persistence.embedded import start

from ..conftest import conninfo
from ..managers import close, make_manager

STEP = TaskStepResult("op", {"x": 1}, True, "ok", "completed")


def unreachable(db_url: Any, case: str) -> str:
    url = db_url.set(drivername="postgresql")
    if case == "missing database":
        url = url.set(database="aiecs_no_such_database")
    elif case == "unknown role":
        url = url.set(username="aiecs_no_such_role", password="hunter2")
    elif case == "refused":
        url = url.set(host="127.0.0.1", port=1, query={})
    return url.render_as_string(hide_password=False)


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize(("case", "reason"), [
    ("missing database", "does not exist"), ("unknown role", "aiecs_no_such_role"),
])
def test_failing_to_connect_is_e006_with_the_cause_and_no_retry(db_url, kind, case, reason):
    db = make_manager(kind, url=unreachable(db_url, case), connect_timeout=3)
    try:
        with pytest.raises(DatabaseError) as info:
            db.connect()
    finally:
        close(db)
    error = info.value
    assert type(error) is DatabaseError and error.code.value == "E006"
    assert "cannot connect" in error.message and reason in error.message, error.message
    assert "hunter2" not in str(error) and "gave up after" not in error.message


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_refused_connection_is_retried_then_e005(db_url, kind):
    """A server that does not take connections now is transient, as for a connected manager:
    asked again by the retry policy, then ``RetryExhaustedError`` (E005) with the cause."""
    db = make_manager(kind, url=unreachable(db_url, "refused"), connect_timeout=3)
    started = time.monotonic()
    try:
        with pytest.raises(RetryExhaustedError) as info:
            db.connect()
    finally:
        close(db)
    error = info.value
    assert error.code.value == "E005" and time.monotonic() - started < 5
    assert "cannot connect" in error.message and "refused" in error.message, error.message
    assert "gave up after 4 attempts" in error.message


def test_pool_exhaustion_is_a_timeout(db_url, psql):
    """Every pooled connection waits on a lock held elsewhere: the next call times out waiting
    for a connection (E002), it is not a database failure."""
    async def main() -> BaseException:
        async with DatabaseManager(url=db_url, pool_size=1, max_overflow=0, pool_timeout=0.5,
                                   lock_timeout_ms=5000, auto_migrate=False) as db:
            await db.save_task_history("u", "t", 0, STEP)
            with psycopg.connect(conninfo(db_url)) as holder:
                holder.execute("SELECT * FROM tasks FOR UPDATE")
                blocked = asyncio.ensure_future(db.mark_task_as_cancelled("u", "t"))
                await asyncio.sleep(0.2)
                try:
                    await db.get_task("u", "t")
                except BaseException as exc:
                    return exc
                finally:
                    holder.rollback()
                    await blocked
        raise AssertionError("get_task should have timed out waiting for a connection")

    error = asyncio.run(main())
    assert isinstance(error, QueryTimeoutError) and error.code.value == "E002", error


@pytest.mark.parametrize(("name", "args", "kwargs", "field"), [
    ("save_task_history", ("u", "t", 0, TaskStepResult("op", {"n": 10**5000}, True, "",
                                                       "completed")), {},
     "step_result.result.n"),
    ("list_tasks", ("u",), {"step_name": "a\x00b"}, "step_name"),
    ("list_steps", ("u",), {"step_name": "a\x00b"}, "step_name"),
    ("list_tasks", ("u",), {"step_name": "\ud800"}, "step_name"),
    ("list_steps", ("u",), {"step_name": "\udfff"}, "step_name"),
], ids=["huge int", "NUL tasks", "NUL steps", "surrogate tasks", "surrogate steps"])
def test_bad_values_are_validation_errors_naming_the_field(db, name, args, kwargs, field):
    with pytest.raises(ValidationError) as info:
        getattr(db, name)(*args, **kwargs)
    assert info.value.field == field, info.value


def test_a_retention_age_of_a_million_days_deletes_nothing(db):
    db.save_task_history("u", "t", 0, STEP)
    assert db.cleanup_old_tasks(1e6) == 0
    assert db.cleanup_old_tasks(1e6, dry_run=True) == 0
    assert db.get_task("u", "t") is not None


def test_a_bad_port_in_the_url_is_a_validation_error():
    with pytest.raises(ValidationError) as info:
        SyncDatabaseManager(url="postgresql://u:hunter2@localhost:notaport/db").connect()
    assert info.value.field == "url" and "hunter2" not in str(info.value)


def test_an_unusable_embedded_directory_says_what_to_do(monkeypatch):
    monkeypatch.delenv("AIECS_DATABASE_URL", raising=False)
    monkeypatch.setenv("AIECS_EMBEDDED_DIR", "/proc/aiecs-cannot-be-here/embedded")
    with pytest.raises(DatabaseError) as info:
        SyncDatabaseManager().connect()
    assert "AIECS_EMBEDDED_DIR" in str(info.value) and "AIECS_DATABASE_URL" in str(info.value)
    with pytest.raises(DatabaseError):
        start()


# -- what the library logs --------------------------------------------------------------------


def test_the_package_logger_has_a_null_handler():
    handlers = logging.getLogger("aiecs_persistence").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_errors_the_caller_receives_are_not_logged_above_debug(db, psql, caplog):
    caplog.set_level(logging.DEBUG, logger="aiecs_persistence")
    db.save_task_history("u", "t", 0, STEP)
    with pytest.raises(InvalidTransitionError):
        db.save_task_history("u", "t", 0, TaskStepResult("op", None, False, "", "running"))
    # The step-only fast path meets a task deleted meanwhile and falls back: it succeeds.
    psql.execute("DELETE FROM tasks")
    assert db.save_task_history("u", "t", 1, STEP) is True
    ours = [r for r in caplog.records if r.name.startswith("aiecs_persistence")]
    assert [r for r in ours if r.levelno > logging.DEBUG] == []
    assert any("failed" in r.getMessage() for r in ours)  # DEBUG has them


def test_a_retried_failure_warns_once(db, psql, caplog):
    caplog.set_level(logging.DEBUG, logger="aiecs_persistence")
    db.save_task_history("u", "t", 0, STEP)
    psql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert db.load_task_history("u", "t")
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("aiecs_persistence")]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()


def test_options_in_the_url_reach_migrations_and_both_managers(empty_db_url, kind):
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA aiecs")
    url = empty_db_url.update_query_dict({"options": "-c search_path=aiecs"})
    db = make_manager(kind, url=url)
    try:
        db.connect()  # migrates into schema aiecs
        db.save_task_history("u", "t", 0, STEP)
        assert db.get_task("u", "t") is not None
    finally:
        close(db)
    with psycopg.connect(conninfo(empty_db_url)) as conn:
        assert conn.execute("SELECT count(*) FROM aiecs.task_history").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('public.tasks')").fetchone() == (None,)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_server_dropping_connections_as_they_start_is_retried_then_reported(kind):
    """A server that accepts each connection and drops it while it starts (as
    ``pg_terminate_backend`` or a restart does) is transient: connect tries again by the retry
    policy, ``max_attempts`` times in all, then reports it (E005)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = [0]

    def drop_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted[0] += 1
            conn.close()

    thread = threading.Thread(target=drop_each, daemon=True)
    thread.start()
    url = f"postgresql://someone:hunter2@127.0.0.1:{listener.getsockname()[1]}/db"
    db = make_manager(kind, url=url, connect_timeout=3, max_attempts=3, backoff_base=0.01,
                      backoff_max=0.02)
    try:
        with pytest.raises(RetryExhaustedError) as info:
            db.connect()
    finally:
        close(db)
        listener.close()
        thread.join(5)
    assert "server closed the connection unexpectedly" in info.value.message
    assert info.value.code.value == "E005" and "gave up after 3 attempts" in info.value.message
    assert "hunter2" not in str(info.value)
    assert accepted[0] == 3  # one connection per attempt
