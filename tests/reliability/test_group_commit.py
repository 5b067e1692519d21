"""Group commit (group.py) under load, straight to PostgreSQL and through PgBouncer: every caller
gets its own outcome, saves of one step keep their order, racing re-saves move only by legal
transitions, and killed connections lose and duplicate nothing."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseManager,
    InvalidTransitionError,
    PersistenceError,
    SyncDatabaseManager,
    TaskStatus,
    TaskStepResult,
    ValidationError,
)

from ..conftest import conninfo

BATCHES = "save_task_history (batch)"


def result(status: str, step: int = 0) -> TaskStepResult:
    code = {"failed": "E003", "cancelled": "E004", "timed_out": "E002"}.get(status)
    return TaskStepResult(f"op{step}", {"step": step}, status == "completed", status, status,
                          code, "boom" if code else None)


def burst(kind: str, url: Any, saves: list[tuple[str, str, int, Any]], settings: dict[str, Any],
          ) -> tuple[list[BaseException | None], dict[str, dict[str, float]]]:
    """Every save at once (a coroutine, or a thread of 64, each); each one's outcome, in order,
    and the manager's performance report."""
    if kind == "async":
        async def main() -> tuple[list[BaseException | None], dict[str, dict[str, float]]]:
            async with DatabaseManager(url=url, auto_migrate=False, **settings) as db:
                async def one(save: tuple[str, str, int, Any]) -> BaseException | None:
                    try:
                        await db.save_task_history(*save)
                    except PersistenceError as exc:
                        return exc
                    return None

                outcomes = await asyncio.gather(*(one(save) for save in saves))
                return list(outcomes), db.get_performance_report()

        return asyncio.run(main())
    with SyncDatabaseManager(url=url, auto_migrate=False, **settings) as db:
        def call(save: tuple[str, str, int, Any]) -> BaseException | None:
            try:
                db.save_task_history(*save)
            except PersistenceError as exc:
                return exc
            return None

        with ThreadPoolExecutor(64) as pool:
            return list(pool.map(call, saves)), db.get_performance_report()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_burst_with_ten_bad_saves_stores_exactly_the_good_ones(route, kind):
    psql = psycopg.connect(conninfo(route.url), autocommit=True)
    # Ten steps already ended: re-saving them as running is an illegal transition, which only
    # the database sees (the saves are valid on their own), so they fail inside batches.
    for n in range(10):
        psql.execute("INSERT INTO tasks (user_id, task_id, status) VALUES ('u', %s, 'running')",
                     [f"bad-{n}"])
        psql.execute("INSERT INTO task_history (user_id, task_id, step, step_name, completed, "
                     "message, status) VALUES ('u', %s, 0, 'op0', true, 'done', 'completed')",
                     [f"bad-{n}"])
    saves: list[tuple[str, str, int, Any]] = [
        ("u", f"task-{i % 100}", i // 100, result("completed", i // 100)) for i in range(990)]
    bad_at = random.Random(5).sample(range(1000), 10)
    for n, at in enumerate(sorted(bad_at)):
        saves.insert(at, ("u", f"bad-{n}", 0, result("running")))
    outcomes, report = burst(kind, route.url, saves, {"pool_size": 8, "max_overflow": 0,
                                                      **route.settings})

    failed = {i for i, outcome in enumerate(outcomes) if outcome is not None}
    assert failed == set(bad_at)
    for i in failed:
        error = outcomes[i]
        assert isinstance(error, InvalidTransitionError), error
        user, task, step, _ = saves[i]
        assert f"step {step} of task {user}/{task}" in error.message  # its own save, named
        assert (error.from_status, error.to_status) == ("completed", "running")
    assert report[BATCHES]["count"] > 0  # the burst did go out in batches
    stored = psql.execute("SELECT task_id, step, status::text FROM task_history "
                          "WHERE task_id LIKE 'task-%'").fetchall()
    assert sorted((t, s) for t, s, _ in stored) == sorted((t, s) for _, t, s, _ in saves
                                                          if t.startswith("task-"))
    assert {status for *_, status in stored} == {"completed"}
    assert psql.execute("SELECT count(*) FROM task_history WHERE task_id LIKE 'bad-%' "
                        "AND status = 'completed'").fetchone() == (10,)
    psql.close()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_saves_of_one_step_awaited_in_turn_end_in_the_last_state(route, kind):
    """Each task's step moves pending → running → completed, one save after the other, while
    63 other tasks do the same: the writers are busy, so most saves go out in batches."""
    sequence = ("pending", "running", "completed")

    async def task_async(db: DatabaseManager, t: int) -> None:
        for step in range(5):
            for status in sequence:
                await db.save_task_history("u", f"task-{t}", step, result(status, step))

    def task_sync(db: SyncDatabaseManager, t: int) -> None:
        for step in range(5):
            for status in sequence:
                db.save_task_history("u", f"task-{t}", step, result(status, step))

    settings = {"url": route.url, "auto_migrate": False, "pool_size": 8, "max_overflow": 0,
                **route.settings}
    if kind == "async":
        async def main() -> dict[str, Any]:
            async with DatabaseManager(**settings) as db:
                await asyncio.gather(*(task_async(db, t) for t in range(64)))
                return db.get_performance_report()

        report = asyncio.run(main())
    else:
        with SyncDatabaseManager(**settings) as db, ThreadPoolExecutor(64) as pool:
            list(pool.map(lambda t: task_sync(db, t), range(64)))
            report = db.get_performance_report()
    assert report[BATCHES]["count"] > 0
    with psycopg.connect(conninfo(route.url)) as psql:
        rows = psql.execute("SELECT status::text, count(*) FROM task_history GROUP BY 1"
                            ).fetchall()
    assert rows == [("completed", 64 * 5)]


def legal_history(statuses: list[str]) -> bool:
    moves = itertools.pairwise(statuses)
    return all(TaskStatus(a).can_transition_to(TaskStatus(b)) for a, b in moves)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_racing_resaves_of_one_step_move_by_legal_transitions_only(route, kind):
    """Forty tasks; each task's step 0 is saved at once as running, completed and failed (twice
    each), among 400 other saves. Whatever the order, the step ends in a submitted state that
    follows its history legally, and every refused save got InvalidTransitionError."""
    choices = ("running", "completed", "failed")
    saves: list[tuple[str, str, int, Any]] = []
    for t in range(40):
        saves += [("u", f"task-{t}", 0, result(s)) for s in choices * 2]
        saves += [("u", f"task-{t}", s, result("completed", s)) for s in range(1, 11)]
    random.Random(9).shuffle(saves)
    outcomes, _ = burst(kind, route.url, saves, {"pool_size": 8, "max_overflow": 0,
                                                 **route.settings})
    for outcome in outcomes:
        assert outcome is None or isinstance(outcome, InvalidTransitionError), outcome
    with psycopg.connect(conninfo(route.url)) as psql:
        finals = dict(psql.execute("SELECT task_id, status::text FROM task_history "
                                   "WHERE step = 0").fetchall())
        events = psql.execute("SELECT task_id, status::text FROM task_events WHERE step = 0 "
                              "ORDER BY tx, seq").fetchall()
    histories: dict[str, list[str]] = {}
    for task, status in events:
        histories.setdefault(task, []).append(status)
    assert len(finals) == 40
    for task, final in finals.items():
        assert final in choices
        assert histories[task][-1] == final
        assert legal_history(histories[task]), histories[task]
        refused = [o for s, o in zip(saves, outcomes, strict=True)
                   if s[1] == task and s[2] == 0 and o is not None]
        assert len(refused) == 6 - len(histories[task])  # each save stored or refused


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_killed_connections_during_a_burst_lose_and_duplicate_nothing(db_url, kind):
    stop = threading.Event()
    kills = [0]

    def killer_loop() -> None:  # kill_loop's, counting as it goes
        # It strikes at most eight times: a batch that met ten strikes in a row would give up
        # (as it should), and on a loaded machine an attempt can outlast the killer's period.
        strikes = 0
        with psycopg.connect(conninfo(db_url), autocommit=True) as admin:
            while strikes < 8 and not stop.wait(0.05):
                killed = len(admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'").fetchall())
                kills[0] += killed
                strikes += killed > 0

    killer = threading.Thread(target=killer_loop)
    settings = {"max_attempts": 10, "backoff_base": 0.01, "backoff_max": 0.1, "pool_size": 4,
                "max_overflow": 4}
    saves: list[tuple[str, str, int, Any]] = []
    outcomes: list[BaseException | None] = []
    batches = 0
    killer.start()
    try:
        # Bursts of 1,600 saves (new steps each time) until the killer has struck a few times
        # while one ran: group commit can write a whole burst faster than the killer's period.
        for round_ in range(8):
            more = [("u", f"task-{i % 64}", 25 * round_ + i // 64,
                     result("completed", 25 * round_ + i // 64)) for i in range(64 * 25)]
            got, report = burst(kind, db_url, more, settings)
            saves += more
            outcomes += got
            batches += report[BATCHES]["count"]
            if kills[0] > 5:
                break
    finally:
        stop.set()
        killer.join(30)
    assert kills[0] > 5, "the killer did not kill"
    assert batches > 0
    with psycopg.connect(conninfo(db_url)) as psql:
        stored = psql.execute("SELECT task_id, step FROM task_history").fetchall()
    assert len(stored) == len(set(stored))  # exactly once
    ok = {(s[1], s[2]) for s, o in zip(saves, outcomes, strict=True) if o is None}
    failed = {(s[1], s[2]) for s, o in zip(saves, outcomes, strict=True) if o is not None}
    assert ok <= set(stored)  # every save that returned is there
    assert set(stored) <= ok | failed
    kinds = sorted({f"{type(o).__name__}: {o}"[:160] for o in outcomes if o is not None})
    assert len(ok) > len(saves) * 0.9, kinds[:5]


def test_a_cancelled_caller_leaves_the_others_alone(db_url):
    """Saves queued behind busy writers are cancelled: the rest are written, nothing hangs,
    and the manager goes on saving."""
    async def main() -> tuple[int, int]:
        async with DatabaseManager(url=db_url, auto_migrate=False, pool_size=2,
                                   max_overflow=0, group_commit_writers=1) as db:
            calls = [asyncio.ensure_future(db.save_task_history("u", f"t{i}", 0,
                                                                result("completed")))
                     for i in range(200)]
            await asyncio.sleep(0)
            for call in calls[100::2]:
                call.cancel()
            done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
            await db.save_task_history("u", "after", 0, result("completed"))
            return sum(r is True for r in done), sum(isinstance(r, asyncio.CancelledError)
                                                     for r in done)
    saved, cancelled = asyncio.run(main())
    assert saved + cancelled == 200 and cancelled > 0
    with psycopg.connect(conninfo(db_url)) as psql:
        stored = {r[0] for r in psql.execute("SELECT task_id FROM task_history").fetchall()}
    assert {f"t{i}" for i in range(100)} | {"after"} <= stored  # none of the others lost
    assert len(stored) >= saved + 1


@pytest.mark.parametrize("setting", [{"group_commit_writers": 0},
                                     {"group_commit_max_batch": 0}])
def test_group_commit_settings_are_checked(setting):
    with pytest.raises(ValidationError) as caught:
        SyncDatabaseManager(url="postgresql://nobody@127.0.0.1:1/none", **setting)
    assert caught.value.field == next(iter(setting))


def test_group_commit_off_saves_one_statement_each(db_url):
    with SyncDatabaseManager(url=db_url, auto_migrate=False, group_commit=False) as db, \
            ThreadPoolExecutor(16) as pool:
        save: Callable[[int], bool] = lambda i: db.save_task_history(  # noqa: E731
            "u", f"t{i}", 0, result("completed"))
        assert all(pool.map(save, range(200)))
        report = db.get_performance_report()
    assert BATCHES not in report and report["save_task_history"]["count"] == 200
