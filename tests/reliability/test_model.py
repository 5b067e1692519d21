"""Model-based test: random sequences of save / re-save / cancel / finish / load / list /
cleanup run against the real database and against a plain in-memory model; after every step
they must agree, and every contract rule must hold in the stored rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aiecs_persistence import (
    ErrorCode,
    InvalidTransitionError,
    SyncDatabaseManager,
    TaskStatus,
    TaskStepResult,
)
from aiecs_persistence.domain import UNSUCCESSFUL_STATUSES

from ..conftest import conninfo

USERS = st.sampled_from(["alice", "bob"])
TASKS = st.sampled_from(["t1", "t2", "t3"])
STEPS = st.integers(min_value=0, max_value=3)
STATUSES = st.sampled_from(list(TaskStatus))
TERMINAL = st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT,
                            TaskStatus.CANCELLED])
DEFAULT_CODE = {TaskStatus.FAILED: ErrorCode.EXECUTION_ERROR,
                TaskStatus.TIMED_OUT: ErrorCode.TIMEOUT_ERROR,
                TaskStatus.CANCELLED: ErrorCode.CANCELLED_ERROR}


def step_result(status: TaskStatus, n: int) -> TaskStepResult:
    code = DEFAULT_CODE.get(status)
    return TaskStepResult(f"op{n}", {"n": n}, status is TaskStatus.COMPLETED, f"m{n}",
                          status.value, code.value if code else None,
                          "boom" if code else None)


@dataclass
class Model:
    tasks: dict[tuple[str, str], TaskStatus]
    steps: dict[tuple[str, str, int], tuple[TaskStatus, int]]


def run_machine(url: Any) -> None:
    class History(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                conn.execute("TRUNCATE tasks CASCADE")
            self.model = Model({}, {})
            self.n = 0

        @rule(user=USERS, task=TASKS, step=STEPS, status=STATUSES)
        def save(self, user: str, task: str, step: int, status: TaskStatus) -> None:
            self.n += 1
            key = (user, task, step)
            before = self.model.steps.get(key)
            try:
                assert db.save_task_history(user, task, step, step_result(status, self.n))
            except InvalidTransitionError:
                assert before is not None and not before[0].can_transition_to(status)
                return
            assert before is None or before[0].can_transition_to(status)
            self.model.steps[key] = (status, self.n)
            current = self.model.tasks.get((user, task))
            if current is None or current is TaskStatus.PENDING:
                self.model.tasks[user, task] = TaskStatus.RUNNING

        @rule(user=USERS, task=TASKS)
        def cancel(self, user: str, task: str) -> None:
            current = self.model.tasks.get((user, task), TaskStatus.PENDING)
            ok = db.mark_task_as_cancelled(user, task)
            if current in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.CANCELLED):
                assert ok is True
                self.model.tasks[user, task] = TaskStatus.CANCELLED
            else:
                assert ok is False

        @rule(user=USERS, task=TASKS, status=TERMINAL)
        def finish(self, user: str, task: str, status: TaskStatus) -> None:
            current = self.model.tasks.get((user, task))
            allowed = (status is TaskStatus.CANCELLED if current is None
                       else current.can_transition_to(status))
            try:
                record = db.finish_task(user, task, status)
            except InvalidTransitionError:
                assert not allowed
                return
            assert allowed and record.status is status
            self.model.tasks[user, task] = status

        @rule(user=USERS, task=TASKS)
        def load(self, user: str, task: str) -> None:
            history = db.load_task_history(user, task)
            expected = sorted((k[2], v) for k, v in self.model.steps.items()
                              if k[:2] == (user, task))
            assert [(e["step"], e["status"], e["result"]["result"]) for e in history] == [
                (s, status.value, {"n": n}) for s, (status, n) in expected]
            assert db.check_task_status(user, task) == self.model.tasks.get(
                (user, task), TaskStatus.PENDING)

        @rule(user=USERS)
        def list_all(self, user: str) -> None:
            seen: dict[str, TaskStatus] = {}
            cursor = None
            while True:
                page = db.list_tasks(user, limit=2, cursor=cursor)
                seen.update((t.task_id, t.status) for t in page)
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == {t: s for (u, t), s in self.model.tasks.items() if u == user}

        @precondition(lambda self: bool(self.model.tasks))
        @rule(data=st.data())
        def cleanup(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.model.tasks)))
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                conn.execute("UPDATE tasks SET updated_at = now() - interval '40 days' "
                             "WHERE user_id = %s AND task_id = %s", key)
            assert db.cleanup_old_tasks(30) == 1
            del self.model.tasks[key]
            self.model.steps = {k: v for k, v in self.model.steps.items() if k[:2] != key}

        @invariant()
        def database_matches_model_and_rules(self) -> None:
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                tasks = conn.execute(
                    "SELECT user_id, task_id, status::text, error_code::text, finished_at "
                    "FROM tasks").fetchall()
                steps = conn.execute(
                    "SELECT user_id, task_id, step, status::text, completed, error_code::text,"
                    " error_message FROM task_history").fetchall()
            assert {(u, t): TaskStatus(s) for u, t, s, _, _ in tasks} == self.model.tasks
            assert {(u, t, n): TaskStatus(s) for u, t, n, s, *_ in steps} == {
                k: v[0] for k, v in self.model.steps.items()}
            for _, _, s, code, finished in tasks:  # contract §3 on tasks
                status = TaskStatus(s)
                assert (code is not None) == (status in UNSUCCESSFUL_STATUSES)
                assert (finished is not None) == status.is_terminal
            for *_, s, completed, code, message in steps:  # contract §3 on steps
                status = TaskStatus(s)
                assert completed == (status is TaskStatus.COMPLETED)
                assert (code is not None) == (status in UNSUCCESSFUL_STATUSES) == bool(message)

    History.TestCase.settings = settings(
        max_examples=30, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow], derandomize=True,
    )
    with SyncDatabaseManager(url=url, pool_size=2) as db:
        History.TestCase("runTest").runTest()


def test_random_sequences_agree_with_the_model(db_url):
    run_machine(db_url)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_model_helpers_match_the_domain(status):
    """The model's own step results must satisfy the rules it checks."""
    assert step_result(status, 1).is_consistent()
