"""Each example query of docs/reporting.md, run against seeded data with asserted numbers."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "reporting.md"
QUERIES = dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", DOC.read_text(), re.S))

# Two days ago at 09:00 UTC: the documented queries look at recent days.
T0 = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(hour=9, minute=0, second=0,
                                                               microsecond=0)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# (user, task, final status, error, [(step name, status, error code, minute)])
TASKS = [
    ("demo-user", "t1", "completed", None,
     [("fetch", "completed", None, 0), ("parse", "completed", None, 1),
      ("store", "completed", None, 3)]),
    ("demo-user", "t2", "failed", ("E003", "parse crashed"),
     [("fetch", "completed", None, 10), ("parse", "failed", "E003", 11)]),
    ("demo-user", "t3", "cancelled", ("E004", "cancelled by user"),
     [("fetch", "completed", None, 20)]),
    ("bob", "t4", "timed_out", ("E002", "too slow"),
     [("fetch", "timed_out", "E002", 24 * 60 + 5)]),
    ("bob", "t5", "running", None, [("fetch", "running", None, 24 * 60 + 30)]),
]


@pytest.fixture
def seeded(psql):
    for user, task, status, error, steps in TASKS:
        start, end = at(steps[0][3]), at(steps[-1][3])
        psql.execute("INSERT INTO tasks (user_id, task_id, created_at, updated_at) "
                     "VALUES (%s, %s, %s, %s)", (user, task, start, start))
        psql.execute("UPDATE tasks SET status = 'running', updated_at = %s, started_at = %s "
                     "WHERE task_id = %s", (at(steps[0][3] + 0.001), start, task))
        if status != "running":
            psql.execute("UPDATE tasks SET status = %s, error_code = %s, error_message = %s, "
                         "updated_at = %s, finished_at = %s WHERE task_id = %s",
                         (status, error and error[0], error and error[1], end, end, task))
        for i, (name, s, code, minute) in enumerate(steps):
            psql.execute(
                "INSERT INTO task_history (user_id, task_id, step, step_name, status, completed,"
                " error_code, error_message, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (user, task, i, name, s, s == "completed", code, code and f"{name} went wrong",
                 at(minute), at(minute)))
    return psql


def run(psql, name):
    return [tuple(r) for r in psql.execute(QUERIES[name]).fetchall()]


def test_every_documented_query_is_tested():
    tested = {n[len("test_"):] for n in globals() if n.startswith("test_")}
    assert set(QUERIES) <= tested and len(QUERIES) == 6


def test_failures_per_code(seeded):
    assert run(seeded, "failures_per_code") == [
        ("E002", "timeout", 1, 1), ("E003", "execution", 1, 1)]


def test_failed_steps_of_user(seeded):
    assert run(seeded, "failed_steps_of_user") == [
        ("t2", 1, "parse", "E003", "Execution error", "parse went wrong")]


def test_outcomes_per_user(seeded):
    assert run(seeded, "outcomes_per_user") == [
        ("bob", "running", 1), ("bob", "timed_out", 1),
        ("demo-user", "completed", 1), ("demo-user", "cancelled", 1),
        ("demo-user", "failed", 1)]


def test_slowest_tasks(seeded):
    assert run(seeded, "slowest_tasks") == [
        ("demo-user", "t1", "completed", 3, dt.timedelta(minutes=3)),
        ("demo-user", "t2", "failed", 2, dt.timedelta(minutes=1)),
        ("demo-user", "t3", "cancelled", 1, dt.timedelta(0)),
    ]


def test_busiest_steps(seeded):
    assert run(seeded, "busiest_steps") == [
        ("fetch", 5, 1), ("parse", 2, 1), ("store", 1, 0)]


def test_daily_failure_rate(seeded):
    assert run(seeded, "daily_failure_rate") == [
        (T0.date(), 6, 1, Decimal("16.7")),
        (T0.date() + dt.timedelta(days=1), 2, 1, Decimal("50.0")),
    ]


def test_every_documented_query_returns_rows_on_the_demo_data(db_url, psql):
    """What `aiecs-db demo` writes, then each query of the cookbook: none comes back empty."""
    import asyncio

    from aiecs_persistence import DatabaseManager
    from aiecs_persistence.demo import run_workload

    async def demo() -> None:
        async with DatabaseManager(url=db_url, auto_migrate=False) as db:
            await run_workload(db)

    asyncio.run(demo())
    for name in QUERIES:
        assert run(psql, name), name
