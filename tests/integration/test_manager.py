"""DatabaseManager and SyncDatabaseManager, one behavioural module for both (contract §5, §6)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    ErrorCode,
    InvalidTransitionError,
    PersistenceError,
    QueryTimeoutError,
    SchemaMismatchError,
    TaskRecord,
    TaskStatus,
    TaskStepResult,
    ValidationError,
)

from ..conftest import conninfo
from ..managers import close, make_manager


class UpstreamTaskStepResult:
    """The caller's own class, shaped like upstream AIECS's (not ours)."""

    def __init__(self, step, result, completed=False, message="", status="pending",
                 error_code=None, error_message=None):
        self.step, self.result, self.completed, self.message = step, result, completed, message
        self.status, self.error_code, self.error_message = status, error_code, error_message

    def dict(self):
        return dict(vars(self))


def done(name: str, result: Any = None) -> TaskStepResult:
    return TaskStepResult(name, result, True, "ok", "completed")


# -- upstream compatibility ----------------------------------------------------------------------


def test_driven_as_upstream_callers_drive_it(db):
    # The operation executor: one save per operation, step = position, its own result class.
    ops = [("pandas_tool.read_csv", {"rows": 3}), ("stats.describe", {"mean": 1.5})]
    for i, (name, out) in enumerate(ops):
        assert db.save_task_history("u1", "task-1", i, UpstreamTaskStepResult(
            name, out, True, "done", TaskStatus.COMPLETED.value)) is True
    db.save_task_history("u1", "task-1", 2, UpstreamTaskStepResult(
        "tool.fail", None, False, "failed", "failed", "E003", "ValueError: bad input"))

    history = db.load_task_history("u1", "task-1")
    assert [e["step"] for e in history] == [0, 1, 2]
    assert max(e["step"] for e in history) == 2
    restored = [TaskStepResult(**e["result"]) for e in history]
    assert restored[0] == TaskStepResult("pandas_tool.read_csv", {"rows": 3}, True, "done",
                                         "completed")
    assert restored[2].error_code == "E003"
    assert [e["status"] for e in history] == ["completed", "completed", "failed"]
    assert all(dt.datetime.fromisoformat(e["timestamp"]).tzinfo for e in history)

    assert db.check_task_status("u1", "task-1") == TaskStatus.RUNNING
    assert db.mark_task_as_cancelled("u1", "task-1") is True
    assert db.check_task_status("u1", "task-1") == TaskStatus.CANCELLED

    # Celery builds dicts with enum members.
    celery = {"step": "celery.task", "result": None, "status": TaskStatus.FAILED,
              "completed": False, "message": "Task failed",
              "error_code": ErrorCode.TIMEOUT_ERROR, "error_message": "took too long"}
    assert db.save_task_history("u1", "task-2", 0, celery) is True
    assert db.load_task_history("u1", "task-2")[0]["result"]["error_code"] == "E002"

    listed = db.get_user_tasks("u1")
    assert [t["task_id"] for t in listed] == ["task-2", "task-1"]
    assert set(listed[0]) == {"task_id", "last_updated", "status"}
    assert listed[1]["status"] == "cancelled"


# -- upstream defects, one by one -----------------------------------------------------------------


def test_defect_1_retried_saves_never_duplicate(db, psql):
    for _ in range(100):
        db.save_task_history("u", "t", 0, done("op", {"n": 1}))
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (1,)
    records = [("u", "bulk", i, done(f"op{i}")) for i in range(50)]
    assert db.save_task_history_many(records) == 50
    assert db.save_task_history_many(records) == 50  # the retry
    assert psql.execute("SELECT count(*) FROM task_history WHERE task_id = 'bulk'"
                        ).fetchone() == (50,)


def test_defect_2_cleanup_works_and_counts(db, psql):
    for t in ("old1", "old2", "new"):
        db.save_task_history("u", t, 0, done("op"))
        db.save_task_history("u", t, 1, done("op"))
    psql.execute("UPDATE tasks SET updated_at = now() - interval '40 days' "
                 "WHERE task_id LIKE 'old%'")
    assert db.cleanup_old_tasks(30) == 2
    assert psql.execute("SELECT task_id FROM tasks").fetchall() == [("new",)]
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (2,)
    assert db.cleanup_old_tasks(30) == 0
    with pytest.raises(ValidationError, match="days_old"):
        db.cleanup_old_tasks(-1)


def test_cleanup_runs_in_bounded_batches(kind, db_url, psql):
    psql.execute("INSERT INTO tasks (user_id, task_id, updated_at) "
                 "SELECT 'u', 't' || i, now() - interval '60 days' FROM generate_series(1, 250) i")
    manager = make_manager(kind, url=db_url, cleanup_batch_size=100)
    try:
        batches: list[int] = []
        assert manager.cleanup_old_tasks(30, on_batch=batches.append) == 250
        assert batches == [100, 100, 50]
        assert manager.get_performance_report()["cleanup_old_tasks"]["count"] == 1  # one call
    finally:
        close(manager)


def test_defect_3_schema_errors_are_raised_and_recorded(kind, empty_db_url, psql):
    strict = make_manager(kind, url=empty_db_url, auto_migrate=False)
    try:
        with pytest.raises(SchemaMismatchError, match="aiecs-db upgrade"):
            strict.connect()
    finally:
        close(strict)
    auto = make_manager(kind, url=empty_db_url)
    try:
        auto.connect()
        with psycopg.connect(conninfo(empty_db_url)) as conn:
            assert conn.execute("SELECT version_num FROM aiecs_alembic_version").fetchall()
    finally:
        close(auto)


def test_defect_4_timestamps_are_utc_instants(db, psql):
    db.save_task_history("u", "t", 0, done("op"))
    stamp = dt.datetime.fromisoformat(db.load_task_history("u", "t")[0]["timestamp"])
    assert stamp.utcoffset() is not None
    assert abs(stamp - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert psql.execute("SELECT data_type FROM information_schema.columns WHERE "
                        "table_name = 'task_history' AND column_name = 'updated_at'"
                        ).fetchone() == ("timestamp with time zone",)


def test_defect_5_cancel_keeps_step_history_and_is_never_lost(db):
    db.save_task_history("u", "t", 0, done("a"))
    db.save_task_history("u", "t", 1, TaskStepResult("b", None, status="running"))
    assert db.mark_task_as_cancelled("u", "t") is True
    assert [e["status"] for e in db.load_task_history("u", "t")] == ["completed", "running"]
    task = db.get_task("u", "t")
    assert (task.status, task.error_code) == (TaskStatus.CANCELLED, ErrorCode.CANCELLED_ERROR)
    # A task with no rows yet: the cancel is recorded.
    assert db.mark_task_as_cancelled("u", "not-started") is True
    assert db.check_task_status("u", "not-started") == TaskStatus.CANCELLED
    assert db.mark_task_as_cancelled("u", "not-started") is True  # idempotent
    # An ended task is not cancelled.
    db.save_task_history("u", "fin", 0, done("a"))
    db.finish_task("u", "fin", TaskStatus.COMPLETED)
    assert db.mark_task_as_cancelled("u", "fin") is False
    assert db.check_task_status("u", "fin") == TaskStatus.COMPLETED


def test_defect_6_non_json_results(db, counts):
    when = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    db.save_task_history("u", "t", 0, done("op", {"at": when, "status": TaskStatus.RUNNING}))
    assert db.load_task_history("u", "t")[0]["result"]["result"] == {
        "at": "2026-05-01T12:00:00+00:00", "status": "running"}
    before = counts()
    with pytest.raises(ValidationError) as info:
        db.save_task_history("u", "t", 1, done("op", {"x": object()}))
    assert info.value.field == "step_result.result.x"
    assert counts() == before


def test_defect_7_unknown_and_pending_are_told_apart(db):
    assert db.get_task("u", "nope") is None
    assert db.check_task_status("u", "nope") == TaskStatus.PENDING  # upstream's answer
    db.save_task_history("u", "t", 0, TaskStepResult("op", None))
    record = db.get_task("u", "t")
    assert isinstance(record, TaskRecord) and record.status == TaskStatus.RUNNING


def test_defect_8_errors_are_typed_and_hide_passwords(kind):
    manager = make_manager(kind, url="postgresql://bob:hunter2@127.0.0.1:1/x", max_attempts=2,
                           backoff_base=0.01)
    try:
        with pytest.raises(PersistenceError) as info:
            manager.connect()
        assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)
        assert info.value.code in (ErrorCode.DATABASE_ERROR, ErrorCode.RETRY_EXHAUSTED)
        assert "hunter2" not in repr(manager.manager)
    finally:
        close(manager)


def test_defect_9_reads_use_the_composite_index(db, psql, pg):
    if pg.citus:  # 120,000 rows through the workers' triggers take a minute of CI there
        pytest.skip("plain PostgreSQL's plans; on Citus each runs on one shard "
                    "(test_citus.py checks where a save runs)")
    psql.execute("INSERT INTO tasks (user_id, task_id, status) SELECT 'u' || (i % 500), "
                 "'t' || i, 'running' FROM generate_series(1, 20000) i")
    psql.execute("INSERT INTO task_history (user_id, task_id, step, step_name, status, "
                 "completed) SELECT 'u' || (i % 500), 't' || i, s, 'op', 'completed', true "
                 "FROM generate_series(1, 20000) i, generate_series(0, 4) s")
    psql.execute("ANALYZE")
    from aiecs_persistence.statements import reads

    def full_scans(plan: str) -> list[str]:
        """Sequential scans of anything but an empty partition (one made ahead: no rows)."""
        return [line for line in plan.splitlines()
                if "Seq Scan" in line and "cost=0.00..0.00" not in line]

    def plan(statement, analyze: bool = False) -> str:
        how = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " if analyze else "EXPLAIN "
        return "\n".join(r[0] for r in psql.execute(
            how + statement.sql, statement.params).fetchall())

    load = plan(reads.load_history("u1", "t1"), analyze=True)
    # One partition is read, through an index that starts with the task's key; the others are
    # pruned once the task's bucket is known (executed: never).
    read = [line for line in load.splitlines()
            if " on task_history_p" in line and "never executed" not in line]
    assert len(read) == 1 and "Index" in read[0], load
    listing = plan(reads.list_tasks("u7", limit=20))
    # (PostgreSQL 18 may skip-scan the bucket-led key when every task shares one bucket.)
    assert ("ix_tasks_user_id_updated_at" in listing
            or "Index Cond: (user_id = 'u7'::text)" in listing), listing
    assert not full_scans(listing)
    steps = plan(reads.list_steps("u7", limit=20))
    assert "_user_id_updated_at_task_id_step_idx" in steps and not full_scans(steps)
    failures = plan(reads.list_steps("u7", error_code="E003", limit=20))
    assert not full_scans(failures)


# -- writes ---------------------------------------------------------------------------------------


def test_resaves_follow_the_state_machine(db, counts):
    db.save_task_history("u", "t", 0, TaskStepResult("op", None, status="running"))
    db.save_task_history("u", "t", 0, done("op", 1))
    before = counts()
    with pytest.raises(InvalidTransitionError) as info:
        db.save_task_history("u", "t", 0, TaskStepResult("op", None, status="running"))
    assert (info.value.from_status, info.value.to_status) == ("completed", "running")
    assert info.value.code is ErrorCode.VALIDATION_ERROR
    assert counts() == before
    assert db.load_task_history("u", "t")[0]["result"]["result"] == 1


def test_late_step_after_the_task_ended_is_stored(db):
    db.save_task_history("u", "t", 0, done("a"))
    db.mark_task_as_cancelled("u", "t")
    db.save_task_history("u", "t", 1, done("late"))
    assert len(db.load_task_history("u", "t")) == 2
    assert db.check_task_status("u", "t") == TaskStatus.CANCELLED


def test_start_and_finish(db):
    assert db.start_task("u", "t").status == TaskStatus.RUNNING
    failed = db.finish_task("u", "t", "failed")
    assert (failed.status, failed.error_code, failed.error_message) == (
        TaskStatus.FAILED, ErrorCode.EXECUTION_ERROR, "Execution error")
    assert failed.finished_at is not None and failed.started_at is not None
    with pytest.raises(InvalidTransitionError):
        db.finish_task("u", "t", "completed")
    with pytest.raises(InvalidTransitionError, match="unknown"):
        db.finish_task("u", "never-started", "completed")
    assert db.finish_task("u", "queued", "cancelled").status == TaskStatus.CANCELLED
    with pytest.raises(ValidationError, match="terminal"):
        db.finish_task("u", "t", "running")
    with pytest.raises(ValidationError, match="no error code"):
        db.finish_task("u", "t2", "completed", error_code="E003")


@pytest.mark.parametrize(("args", "field"), [
    ((None, "t", 0), "user_id"), (("", "t", 0), "user_id"), (("u", "x" * 256, 0), "task_id"),
    (("u\x00", "t", 0), "user_id"), (("u", "t", -1), "step"), (("u", "t", True), "step"),
    (("u", "t", 2**31), "step"), (("u", "t", "0"), "step"),
])
def test_bad_arguments_name_the_field_and_write_nothing(db, counts, args, field):
    before = counts()
    with pytest.raises(ValidationError) as info:
        db.save_task_history(*args, done("op"))
    assert info.value.field == field
    assert counts() == before


@pytest.mark.parametrize(("step_result", "field"), [
    (TaskStepResult("op", 1, True, status="failed"), "step_result.completed"),
    (TaskStepResult(" ", 1), "step_result.step"),
    (TaskStepResult("op", 1, status="success"), "step_result.status"),
    (TaskStepResult("op", 1, status="failed", error_code="E003"), "step_result.error_message"),
    ({"step": "op"}, "step_result.result"),
    (42, "step_result"),
])
def test_inconsistent_results_are_rejected_before_the_database(db, counts, step_result, field):
    before = counts()
    with pytest.raises(ValidationError) as info:
        db.save_task_history("u", "t", 0, step_result)
    assert info.value.field == field
    assert counts() == before


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(("value", "stored"), [
    ({"when": dt.date(2026, 1, 2)}, {"when": "2026-01-02"}),
    ({"id": uuid.UUID(int=5)}, {"id": "00000000-0000-0000-0000-000000000005"}),
    ({"price": decimal.Decimal("10.10")}, {"price": "10.10"}),
    ({"code": ErrorCode.DSL_EVALUATION_ERROR}, {"code": "E007"}),
    ({"pair": (1, 2), "set": {2, 1}}, {"pair": [1, 2], "set": [1, 2]}),
    (Point(3), {"x": 3}),
    *[(s, s) for s in ["it's \"quoted\" \\ 🎉 '; DROP TABLE tasks; --"]],
    ({"big": 2**62, "neg": -1.5, "nested": [[[{"a": None}]]]},
     {"big": 2**62, "neg": -1.5, "nested": [[[{"a": None}]]]}),
    (None, None),
])
def test_results_round_trip(db, value, stored):
    db.save_task_history("u", "t", 0, done("op", value))
    assert db.load_task_history("u", "t")[0]["result"]["result"] == stored


@pytest.mark.parametrize("value", [
    float("nan"), {"x": float("inf")}, "nul\x00", {"s": "\udc00"}, b"bytes", {1: "int key"},
    "x" * 2000,
])
def test_unstorable_results_write_nothing(kind, db_url, counts, value):
    manager = make_manager(kind, url=db_url, max_result_bytes=1000)
    try:
        before = counts()
        with pytest.raises(ValidationError) as info:
            manager.save_task_history("u", "t", 0, done("op", value))
        assert info.value.field.startswith("step_result.result")
        assert counts() == before
    finally:
        close(manager)


def test_bulk_is_all_or_nothing(db, counts):
    def records():
        for i in range(1000):
            yield ("u", f"t{i // 10}", i % 10, done("op", i))
        yield ("u", "bad", 0, done("op", float("nan")))

    before = counts()
    with pytest.raises(ValidationError) as info:
        db.save_task_history_many(records())
    assert info.value.field == "records[1000].step_result.result"
    assert counts() == before
    with pytest.raises(ValidationError, match="records\\[0\\]"):
        db.save_task_history_many([("u", "t")])


@pytest.fixture
def small_chunks(kind, db_url):
    driven = make_manager(kind, url=db_url, bulk_chunk_size=7)
    driven.connect()
    try:
        yield driven
    finally:
        close(driven)


def test_bulk_across_chunks_copies_new_steps_and_merges_resaves(small_chunks, psql):
    """Chunks of 7: new chunks go straight in by COPY, chunks meeting stored steps are merged,
    a step given twice in different chunks ends as the later, and an illegal re-save (or bad
    record) in a late chunk takes every earlier chunk back out."""
    db = small_chunks
    db.save_task_history("u", "t2", 3, TaskStepResult("op", "early", status="running"))
    records = [("u", f"t{i // 10}", i % 10, done("op", i)) for i in range(40)]
    records.append(("u", "t0", 1, TaskStepResult("op", "again", status="completed",
                                                 completed=True)))
    assert db.save_task_history_many(records) == 41
    rows = psql.execute("SELECT task_id, step, status, result FROM task_history "
                        "ORDER BY task_id, step").fetchall()
    assert len(rows) == 40
    assert ("t0", 1, "completed", "again") in rows  # the later save, from a later chunk
    assert ("t2", 3, "completed", 23) in rows  # the stored running step, merged
    assert psql.execute("SELECT count(*), min(status::text) FROM tasks").fetchone() == (
        4, "running")

    before = psql.execute("SELECT count(*), sum(hashtext(result::text)) FROM task_history"
                          ).fetchone()
    bad = [("u", f"n{i}", 0, done("op", i)) for i in range(20)]
    bad.append(("u", "t0", 0, TaskStepResult("op", None, False, "", "pending")))
    with pytest.raises(InvalidTransitionError):
        db.save_task_history_many(bad)  # completed -> pending is illegal
    assert psql.execute("SELECT count(*), sum(hashtext(result::text)) FROM task_history"
                        ).fetchone() == before
    assert psql.execute("SELECT count(*) FROM tasks").fetchone() == (4,)


def test_bulk_keeps_the_last_save_of_a_step(db):
    n = db.save_task_history_many([
        ("u", "t", 0, TaskStepResult("op", 1, status="running")),
        ("u", "t", 0, done("op", 2)),
    ])
    assert n == 2
    [entry] = db.load_task_history("u", "t")
    assert (entry["status"], entry["result"]["result"]) == ("completed", 2)
    assert db.check_task_status("u", "t") == TaskStatus.RUNNING


FAILED_E003 = TaskStepResult("op", None, False, "boom", "failed", "E003", "ValueError")
RUNNING = TaskStepResult("op", 1, status="running")


@pytest.mark.parametrize("sequence", [
    [FAILED_E003, done("op", 2)],
    [done("op", 1), RUNNING],
], ids=["failed then completed", "completed then running"])
def test_bulk_refuses_an_illegal_move_within_one_call_as_single_saves_do(db, psql, sequence):
    """A step given twice in one call is two saves in order: the second is checked against the
    first, so an illegal move fails the call (E001) and writes nothing, as it fails the same
    saves made one by one."""
    db.save_task_history("single", "tr3", 0, sequence[0])
    with pytest.raises(InvalidTransitionError) as one_by_one:
        db.save_task_history("single", "tr3", 0, sequence[1])
    assert one_by_one.value.error_code is ErrorCode.VALIDATION_ERROR
    events = "SELECT count(*) FROM task_events WHERE user_id = 'bu'"
    with pytest.raises(InvalidTransitionError) as bulk:
        db.save_task_history_many([("bu", "tr3", 0, r) for r in sequence])
    assert bulk.value.error_code is ErrorCode.VALIDATION_ERROR
    assert "tr3" in bulk.value.message
    assert psql.execute("SELECT count(*) FROM task_history WHERE user_id = 'bu'"
                        ).fetchone() == (0,)
    assert psql.execute(events).fetchone() == (0,)


def test_bulk_logs_every_save_of_a_step_given_twice_as_single_saves_do(db, psql):
    """A legal move within one call leaves the same rows and the same events, in the same
    order, as the same saves made one by one."""
    sequence = [RUNNING, done("op", 2), done("op", 3)]
    for result in sequence:
        db.save_task_history("single", "t", 0, result)
    assert db.save_task_history_many([("bulk", "t", 0, r) for r in sequence]) == 3

    def seen(user: str) -> list[Any]:
        return psql.execute(
            "SELECT step, status::text, result FROM task_events WHERE user_id = %s "
            "AND step IS NOT NULL ORDER BY seq", (user,)).fetchall()

    assert seen("bulk") == seen("single") == [
        (0, "running", 1), (0, "completed", 2), (0, "completed", 3)]
    assert db.load_task_history("bulk", "t")[0]["result"] == db.load_task_history(
        "single", "t")[0]["result"]


# -- typed reads and pagination -------------------------------------------------------------------


def test_keyset_pagination_and_filters(db, psql):
    for i in range(25):
        status = "failed" if i % 5 == 0 else "completed"
        db.save_task_history("u", f"t{i:02d}", 0, TaskStepResult(
            "op" if i % 2 else "other", i, status == "completed", "", status,
            "E003" if status == "failed" else None, "boom" if status == "failed" else None))
    db.save_task_history("someone-else", "x", 0, done("op"))
    seen, cursor = [], None
    while True:
        page = db.list_tasks("u", limit=7, cursor=cursor)
        seen += [t.task_id for t in page]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"t{i:02d}" for i in reversed(range(25))]
    steps = db.list_steps("u", error_code=ErrorCode.EXECUTION_ERROR, limit=100)
    assert [s.task_id for s in steps] == ["t20", "t15", "t10", "t05", "t00"]
    assert all(s.result.error_code == "E003" for s in steps)
    assert len(db.list_steps("u", step_name="other", limit=100)) == 13
    assert len(db.list_tasks("u", step_name="other", limit=100)) == 13
    assert len(db.list_steps("u", status=["failed", "completed"], limit=100)) == 25
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert len(db.list_tasks("u", since=future)) == 0
    assert len(db.list_tasks("u", until=future, limit=100)) == 25
    page = db.list_steps("u", limit=10)
    assert len(db.list_steps("u", limit=100, cursor=page.next_cursor)) == 15


@pytest.mark.parametrize("cursor", ["garbage", "W10", "WyJ4IiwieSJd", 17])
def test_tampered_cursor_is_rejected(db, cursor):
    with pytest.raises(ValidationError) as info:
        db.list_tasks("u", cursor=cursor)
    assert info.value.field == "cursor"


# -- timeouts, schema drift, instrumentation -----------------------------------------------------


def test_lock_timeout_raises_query_timeout(kind, db_url):
    manager = make_manager(kind, url=db_url, lock_timeout_ms=200)
    try:
        manager.save_task_history("u", "t", 0, done("op"))
        with psycopg.connect(conninfo(db_url)) as blocker:
            blocker.execute("SELECT * FROM tasks WHERE user_id = 'u' FOR UPDATE")
            import time

            started = time.monotonic()
            with pytest.raises(QueryTimeoutError) as info:
                manager.save_task_history("u", "t", 1, done("op"))
            assert time.monotonic() - started < 5
            assert info.value.code is ErrorCode.TIMEOUT_ERROR
    finally:
        close(manager)


def test_enum_drift_is_reported_at_connect(kind, private_db_url, psql):
    psql.execute("ALTER TYPE task_status ADD VALUE 'paused'")
    manager = make_manager(kind, url=private_db_url)
    try:
        with pytest.raises(SchemaMismatchError, match=r"task_status.*paused"):
            manager.connect()
    finally:
        close(manager)


def test_performance_report_and_repr(db):
    db.save_task_history("u", "t", 0, done("op"))
    with pytest.raises(ValidationError):
        db.save_task_history("u", "t", 0, TaskStepResult("op", 1, status="running"))
    report = db.get_performance_report()["save_task_history"]
    assert report["count"] == 2 and report["errors"] == 1
    assert 0 < report["min_time"] <= report["avg_time"] <= report["max_time"]
    assert "connected=True" in repr(db.manager)


def test_a_task_deleted_under_a_busy_writer_is_created_again(db, psql):
    """Saves within a second of the last one write the step alone (the task is known to be
    fresh); when the task was deleted meanwhile, the foreign key says so and the save takes
    the full path, creating the task again."""
    db.save_task_history("u", "t", 0, done("op"))
    db.save_task_history("u", "t", 1, done("op"))  # the fast path
    psql.execute("DELETE FROM tasks WHERE task_id = 't'")
    assert db.save_task_history("u", "t", 2, done("op")) is True
    assert psql.execute("SELECT status::text FROM tasks WHERE task_id = 't'").fetchall() == [
        ("running",)]
    assert [e["step"] for e in db.load_task_history("u", "t")] == [2]
    db.finish_task("u", "t", "completed")
    db.save_task_history("u", "t", 3, done("op"))  # a late step leaves the end as it is
    assert db.check_task_status("u", "t") == TaskStatus.COMPLETED


def test_the_report_counts_each_failing_task_once_per_code(db, psql):
    """Failures by code count failed steps, and tasks with a failure of that code once each
    (the report hashes each code's tasks instead of a count(DISTINCT ...) sort)."""
    for task, codes in (("a", ["E003", "E003", "E001"]), ("b", ["E003"]), ("c", [])):
        db.save_task_history("u", task, 0, done("fetch"))
        for step, code in enumerate(codes, start=1):
            db.save_task_history("u", task, step, TaskStepResult(
                "parse", None, status="failed", error_code=code, error_message="broke"))
    by_code = {r["error_code"]: (r["failures"], r["tasks"])
               for r in db.report()["failures_by_error_code"]}
    assert by_code == {"E003": (3, 2), "E001": (1, 1)}
    assert by_code == {code: (failures, tasks) for code, failures, tasks in psql.execute(
        "SELECT error_code::text, count(*), count(DISTINCT (user_id, task_id)) "
        "FROM task_history WHERE error_code IS NOT NULL GROUP BY 1").fetchall()}


@pytest.mark.parametrize("pooling", [False, True], ids=["session", "transaction_pooling"])
def test_a_statements_own_settings_stay_in_its_transaction(kind, db_url, pooling):
    """``Statement.local`` (the report's JIT and work_mem, statements.report.REPORT_SETTINGS) is
    set for that statement only, with the timeouts under ``transaction_pooling``; the connection
    it ran on (the pool's only one) keeps its own settings for the next call."""
    from aiecs_persistence.statements import Statement, report

    assert report.report().local == report.REPORT_SETTINGS == {"jit": "off", "work_mem": "32MB"}
    manager = make_manager(kind, url=db_url, pool_size=1, max_overflow=0,
                           transaction_pooling=pooling, statement_timeout_ms=4321)
    try:
        show = Statement("show", "SELECT current_setting('work_mem') AS work_mem, "
                                 "current_setting('jit') AS jit, "
                                 "current_setting('statement_timeout') AS timeout")
        before = manager._run(show)
        assert (before[0].work_mem, before[0].jit) != ("7MB", "off")
        assert manager._run(dataclasses.replace(show, local={"work_mem": "7MB", "jit": "off"})
                            ) == [("7MB", "off", "4321ms")]
        assert manager._run(show) == before
    finally:
        close(manager)
