"""Hostile and malformed input against every public method, both managers.

Each case: the right ``PersistenceError`` subclass and ``ErrorCode``, a message that names the
field at fault, and the tables exactly as they were. SQL injection strings are also sent in
every string argument and filter: where they are legal values they are stored or looked up
verbatim, and nothing else happens.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import inspect
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseManager,
    ErrorCode,
    PersistenceError,
    SyncDatabaseManager,
    TaskStepResult,
    ValidationError,
)

from ..conftest import conninfo
from ..database import temporary_database

NOW = dt.datetime.now(dt.UTC)
INJECTIONS = [
    "'; DROP TABLE tasks; --",
    "x' OR '1'='1",
    "\"; DELETE FROM task_history; --",
    "%(user_id)s",
    "%s%s%s",
    "$1; TRUNCATE tasks",
    "\\'; SELECT pg_sleep(10); --",
    "E'\\x00'",
]


def ok(**changes: Any) -> TaskStepResult:
    fields = {"step": "op", "result": {"n": 1}, "completed": True, "message": "m",
              "status": "completed", "error_code": None, "error_message": None} | changes
    return TaskStepResult(**fields)


class Raw:
    """An object with the seven attributes, for results our constructor would refuse."""

    def __init__(self, **changes: Any) -> None:
        base = {"step": "op", "result": None, "completed": True, "message": "",
                "status": "completed", "error_code": None, "error_message": None}
        for key, value in (base | changes).items():
            setattr(self, key, value)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def cursor_of(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


S, U, T = "save_task_history", "u", "t"
CASES: list[tuple[str, str, tuple[Any, ...], dict[str, Any], str]] = [
    # (id, method, args, kwargs, field named in the message)
    ("user None", S, (None, T, 0, ok()), {}, "user_id"),
    ("user int", S, (7, T, 0, ok()), {}, "user_id"),
    ("user bytes", S, (b"u", T, 0, ok()), {}, "user_id"),
    ("user empty", S, ("", T, 0, ok()), {}, "user_id"),
    ("user huge", S, ("u" * 256, T, 0, ok()), {}, "user_id"),
    ("user NUL", S, ("a\x00b", T, 0, ok()), {}, "user_id"),
    ("user surrogate", S, ("a\ud800", T, 0, ok()), {}, "user_id"),
    ("task None", S, (U, None, 0, ok()), {}, "task_id"),
    ("task list", S, (U, ["t"], 0, ok()), {}, "task_id"),
    ("task empty", S, (U, "", 0, ok()), {}, "task_id"),
    ("task 1MB", S, (U, "t" * 1_000_000, 0, ok()), {}, "task_id"),
    ("task NUL", S, (U, "t\x00", 0, ok()), {}, "task_id"),
    ("step negative", S, (U, T, -1, ok()), {}, "step"),
    ("step huge", S, (U, T, 2**31, ok()), {}, "step"),
    ("step enormous", S, (U, T, 10**100, ok()), {}, "step"),
    ("step bool", S, (U, T, True, ok()), {}, "step"),
    ("step str", S, (U, T, "3", ok()), {}, "step"),
    ("step float", S, (U, T, 1.0, ok()), {}, "step"),
    ("step None", S, (U, T, None, ok()), {}, "step"),
    ("result object None", S, (U, T, 0, None), {}, "step_result"),
    ("result object str", S, (U, T, 0, "completed"), {}, "step_result"),
    ("result object int", S, (U, T, 0, 42), {}, "step_result"),
    ("result NaN", S, (U, T, 0, ok(result=float("nan"))), {}, "step_result.result"),
    ("result inf", S, (U, T, 0, ok(result={"x": float("inf")})), {}, "step_result.result.x"),
    ("result -inf", S, (U, T, 0, ok(result=[float("-inf")])), {}, "step_result.result[0]"),
    ("result NUL", S, (U, T, 0, ok(result={"s": "a\x00"})), {}, "step_result.result.s"),
    ("result surrogate", S, (U, T, 0, ok(result=["\udfff"])), {}, "step_result.result[0]"),
    ("result NUL key", S, (U, T, 0, ok(result={"k\x00": 1})), {}, "step_result.result"),
    ("result deep", S, (U, T, 0, ok(result=nested(500))), {}, "nested deeper"),
    ("result 11MB", S, (U, T, 0, ok(result="x" * (11 * 2**20))), {}, "step_result.result"),
    ("result int key", S, (U, T, 0, ok(result={1: "a"})), {}, "step_result.result"),
    ("result object", S, (U, T, 0, ok(result={"o": object()})), {}, "step_result.result.o"),
    ("result Decimal NaN", S, (U, T, 0, ok(result=__import__("decimal").Decimal("NaN"))),
     {}, "step_result.result"),
    ("status unknown", S, (U, T, 0, Raw(status="exploded")), {}, "status"),
    ("status None", S, (U, T, 0, Raw(status=None)), {}, "status"),
    ("status int", S, (U, T, 0, Raw(status=1)), {}, "status"),
    ("status injection", S, (U, T, 0, Raw(status="completed'; DROP TABLE tasks; --")), {},
     "status"),
    ("code unknown", S, (U, T, 0, Raw(status="failed", completed=False, error_code="E999",
                                      error_message="x")), {}, "error_code"),
    ("code int", S, (U, T, 0, Raw(status="failed", completed=False, error_code=3,
                                  error_message="x")), {}, "error_code"),
    ("completed lies", S, (U, T, 0, Raw(status="failed", completed=True, error_code="E003",
                                        error_message="x")), {}, "completed"),
    ("completed str", S, (U, T, 0, Raw(completed="yes")), {}, "completed"),
    ("code without message", S, (U, T, 0, Raw(status="failed", completed=False,
                                              error_code="E003")), {}, "error"),
    ("failed without code", S, (U, T, 0, Raw(status="failed", completed=False)), {},
     "error_code"),
    ("message None", S, (U, T, 0, Raw(message=None)), {}, "message"),
    ("message NUL", S, (U, T, 0, Raw(message="m\x00")), {}, "message"),
    ("name blank", S, (U, T, 0, Raw(step=" \t ")), {}, "step"),
    ("name None", S, (U, T, 0, Raw(step=None)), {}, "step"),
    ("name NUL", S, (U, T, 0, Raw(step="op\x00")), {}, "step"),
    ("error message surrogate", S, (U, T, 0, Raw(status="failed", completed=False,
                                                 error_code="E003", error_message="\ud800")),
     {}, "error_message"),
    ("dict missing fields", S, (U, T, 0, {"step": "op"}), {}, "step_result"),
    ("many None", "save_task_history_many", (None,), {}, "records"),
    ("many str", "save_task_history_many", ("records",), {}, "records"),
    ("many dict", "save_task_history_many", ({"u": 1},), {}, "records"),
    ("many short record", "save_task_history_many", ([(U, T)],), {}, "records[0]"),
    ("many bad second", "save_task_history_many", ([(U, T, 0, ok()), (U, "", 0, ok())],), {},
     "records[1].task_id"),
    ("many bad result", "save_task_history_many", ([(U, T, 0, ok(result=float("nan")))],), {},
     "records[0].step_result.result"),
    ("start user", "start_task", (None, T), {}, "user_id"),
    ("start task", "start_task", (U, ""), {}, "task_id"),
    ("finish status", "finish_task", (U, T, "done"), {}, "status"),
    ("finish not terminal", "finish_task", (U, T, "running"), {}, "status"),
    ("finish code", "finish_task", (U, T, "failed", "E042", "x"), {}, "error_code"),
    ("finish message type", "finish_task", (U, T, "failed", "E003", 5), {}, "error_message"),
    ("finish message NUL", "finish_task", (U, T, "failed", "E003", "x\x00"), {},
     "error_message"),
    ("cancel task", "mark_task_as_cancelled", (U, None), {}, "task_id"),
    ("cancel user", "mark_task_as_cancelled", ("u" * 300, T), {}, "user_id"),
    ("cleanup negative", "cleanup_old_tasks", (-1,), {}, "days_old"),
    ("cleanup NaN", "cleanup_old_tasks", (float("nan"),), {}, "days_old"),
    ("cleanup inf", "cleanup_old_tasks", (float("inf"),), {}, "days_old"),
    ("cleanup str", "cleanup_old_tasks", ("30",), {}, "days_old"),
    ("cleanup bool", "cleanup_old_tasks", (True,), {}, "days_old"),
    ("load user", "load_task_history", (1, T), {}, "user_id"),
    ("load task", "load_task_history", (U, b"t"), {}, "task_id"),
    ("status task", "check_task_status", (U, ""), {}, "task_id"),
    ("get user", "get_task", ("", T), {}, "user_id"),
    ("user tasks limit 0", "get_user_tasks", (U,), {"limit": 0}, "limit"),
    ("user tasks limit negative", "get_user_tasks", (U,), {"limit": -5}, "limit"),
    ("user tasks limit str", "get_user_tasks", (U,), {"limit": "10"}, "limit"),
    ("user tasks limit huge", "get_user_tasks", (U,), {"limit": 10**9}, "limit"),
    ("user tasks limit bool", "get_user_tasks", (U,), {"limit": True}, "limit"),
    ("watch user", "watch_task_history", (None, T), {}, "user_id"),
    ("watch task", "watch_task_history", (U, ""), {}, "task_id"),
    ("watch token garbage", "watch_task_history", (U, T), {"after": "garbage!"}, "after"),
    ("watch token forged", "watch_task_history", (U, T), {"after": "Wy0xLFtdXQ"}, "after"),
    ("watch token int", "watch_task_history", (U, T), {"after": 5}, "after"),
    ("watch poll negative", "watch_task_history", (U, T), {"poll_interval": -1},
     "poll_interval"),
    ("watch poll NaN", "watch_task_history", (U, T), {"poll_interval": float("nan")},
     "poll_interval"),
    ("watch user tasks user", "watch_user_tasks", ("",), {}, "user_id"),
    ("watch user tasks token", "watch_user_tasks", (U,), {"after": ["x"]}, "after"),
    ("list status", "list_tasks", (U,), {"status": "bogus"}, "status"),
    ("list status injection", "list_tasks", (U,), {"status": "running' OR '1'='1"}, "status"),
    ("list statuses", "list_tasks", (U,), {"status": ["running", "nope"]}, "status"),
    ("list code", "list_tasks", (U,), {"error_code": "E000"}, "error_code"),
    ("list code injection", "list_tasks", (U,), {"error_code": "E001') --"}, "error_code"),
    ("list since str", "list_tasks", (U,), {"since": "yesterday"}, "since"),
    ("list since naive", "list_tasks", (U,), {"since": dt.datetime(2026, 1, 1)}, "since"),
    ("list until int", "list_tasks", (U,), {"until": 1700000000}, "until"),
    ("list cursor garbage", "list_tasks", (U,), {"cursor": "not-a-cursor!"}, "cursor"),
    ("list cursor tampered", "list_tasks", (U,), {"cursor": cursor_of(["2026-01-01", 1])},
     "cursor"),
    ("list cursor naive", "list_tasks", (U,), {"cursor": cursor_of(["2026-01-01T00:00", "t"])},
     "cursor"),
    ("list cursor injection", "list_tasks", (U,),
     {"cursor": cursor_of(["2026-01-01T00:00+00:00'; DROP TABLE tasks; --", "t"])}, "cursor"),
    ("list cursor int", "list_tasks", (U,), {"cursor": 123}, "cursor"),
    ("list cursor huge", "list_tasks", (U,), {"cursor": "A" * 100_000}, "cursor"),
    ("list step name int", "list_tasks", (U,), {"step_name": 5}, "step_name"),
    ("list limit", "list_tasks", (U,), {"limit": 0}, "limit"),
    ("steps task", "list_steps", (U,), {"task_id": ""}, "task_id"),
    ("steps cursor of tasks", "list_steps", (U,),
     {"cursor": cursor_of([NOW.isoformat(), "t"])}, "cursor"),
    ("steps cursor bool step", "list_steps", (U,),
     {"cursor": cursor_of([NOW.isoformat(), "t", True])}, "cursor"),
    ("steps until str", "list_steps", (U,), {"until": "2026"}, "until"),
    ("report since str", "report", (), {"since": "2020-01-01"}, "since"),
    ("report top", "report", (), {"top": 0}, "top"),
]


@pytest.fixture(scope="module")
def hostile_db(pg: Any, template_db: str) -> Iterator[Any]:
    """One database for the module, holding a little history every case must leave as is."""
    with temporary_database(pg, template_db) as url:
        with SyncDatabaseManager(url=url) as db:
            for i in range(3):
                db.save_task_history("u", "t", i, ok(result={"i": i}))
            db.save_task_history("v", "w", 0, ok())
        yield url


@pytest.fixture(scope="module", params=["async", "sync"])
def manager(request: pytest.FixtureRequest, hostile_db: Any) -> Iterator[Any]:
    if request.param == "sync":
        with SyncDatabaseManager(url=hostile_db) as db:
            yield db
        return
    loop = asyncio.new_event_loop()
    db = DatabaseManager(url=hostile_db)
    loop.run_until_complete(db.connect())

    class Blocking:
        def __getattr__(self, name: str) -> Any:
            method = getattr(db, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                result = method(*args, **kwargs)
                if inspect.isasyncgen(result):  # a watch: its first event
                    return loop.run_until_complete(result.__anext__())
                return loop.run_until_complete(result) if inspect.isawaitable(result) else result

            return call

    yield Blocking()
    loop.run_until_complete(db.close())
    loop.close()


def snapshot(url: Any) -> tuple[Any, ...]:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        return tuple(conn.execute(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_history), "
            "(SELECT md5(string_agg(t::text, ',' ORDER BY user_id, task_id)) FROM tasks t), "
            "(SELECT md5(string_agg(h::text, ',' ORDER BY user_id, task_id, step)) "
            " FROM task_history h), "
            "(SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)"
        ).fetchone())


def test_the_corpus_is_large_and_covers_every_public_method():
    assert len(CASES) >= 60
    covered = {c[1] for c in CASES}
    public = {n for n, _ in inspect.getmembers(SyncDatabaseManager, inspect.isfunction)
              if not n.startswith("_")}
    lifecycle = {"connect", "disconnect", "close", "init_connection_pool",
                 "init_database_schema", "prepare_schema", "get_performance_report",
                 "retry_delay", "observe"}
    assert public - lifecycle <= covered, public - lifecycle - covered


@pytest.mark.parametrize(("method", "args", "kwargs", "field"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_and_writes_nothing(manager, hostile_db, method, args,
                                                      kwargs, field):
    before = snapshot(hostile_db)
    with pytest.raises(PersistenceError) as caught:
        result = getattr(manager, method)(*args, **kwargs)
        if inspect.isgenerator(result):  # a watch (blocking manager): its first event
            next(result)
    error = caught.value
    assert isinstance(error, ValidationError), repr(error)
    assert error.code is ErrorCode.VALIDATION_ERROR
    assert field in error.message or (error.field or "").startswith(field), error.message
    assert len(error.message) < 2000  # hostile input does not flood the message
    assert snapshot(hostile_db) == before


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_only_data(manager, hostile_db, text):
    """Legal values, however they look: stored and read back verbatim, nothing else moves."""
    before = snapshot(hostile_db)
    assert manager.load_task_history(text, text) == []
    assert manager.list_tasks(text, step_name=text).items == []
    assert manager.list_steps(text, task_id=text, step_name=text).items == []
    manager.save_task_history(text, text, 0, ok(step=text, message=text,
                                                 result={text: text}))
    [entry] = manager.load_task_history(text, text)
    assert entry["result"]["step"] == text and entry["result"]["message"] == text
    assert entry["result"]["result"] == {text: text}
    assert manager.mark_task_as_cancelled(text, text) is True
    after = snapshot(hostile_db)
    assert after[0] == before[0] + 1 and after[1] == before[1] + 1
    assert after[4] == before[4]  # no table created or dropped
    with psycopg.connect(conninfo(hostile_db), autocommit=True) as conn:
        conn.execute("DELETE FROM tasks WHERE user_id = %s", [text])
    assert snapshot(hostile_db) == before
