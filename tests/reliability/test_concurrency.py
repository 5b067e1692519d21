"""Overlapping writers, straight to PostgreSQL and through PgBouncer (contract §5, §6).

Sixteen tasks. Every step of every task is saved by four writers at once (duplicates of the
same step racing each other); tasks 0-3 are cancelled while their steps are being saved, tasks
4-7 are finished as completed while saves are still arriving. The final state is exact: one row
per step, every step completed, tasks 0-3 cancelled, 4-7 completed, the rest running, and no
error of any kind reached a caller (no deadlock, no unique violation, no retry exhausted).
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import psycopg
import pytest

from aiecs_persistence import DatabaseManager, SyncDatabaseManager, TaskStepResult

from ..conftest import conninfo

TASKS, STEPS, WRITERS = 16, 10, 4
CANCELLED, FINISHED = range(0, 4), range(4, 8)


def done(step: int) -> TaskStepResult:
    return TaskStepResult(f"op{step}", {"step": step}, True, "ok", "completed")


def expected_state(psql: psycopg.Connection[Any]) -> None:
    rows = psql.execute("SELECT task_id, step, status::text FROM task_history").fetchall()
    assert len(rows) == TASKS * STEPS
    assert {r[2] for r in rows} == {"completed"}
    assert len({(r[0], r[1]) for r in rows}) == TASKS * STEPS
    statuses = dict(psql.execute("SELECT task_id, status::text FROM tasks").fetchall())
    assert statuses == {
        f"task-{t}": "cancelled" if t in CANCELLED else "completed" if t in FINISHED
        else "running" for t in range(TASKS)
    }


def test_64_coroutines_race_saves_cancels_and_finishes(route, db_url):
    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with DatabaseManager(url=route.url, pool_size=8, max_overflow=0,
                                   auto_migrate=False, **route.settings) as db:
            first_saved = {t: asyncio.Event() for t in range(TASKS)}

            async def writer(n: int) -> None:
                # 64 writers, four tasks each: every step is saved by four of them.
                rng = random.Random(n)
                order = [((n + k) % TASKS, s) for k in range(WRITERS) for s in range(STEPS)]
                rng.shuffle(order)
                for t, s in order:
                    await db.save_task_history("u", f"task-{t}", s, done(s))
                    first_saved[t].set()

            async def canceller(t: int) -> None:
                await asyncio.sleep(random.Random(t).random() / 50)
                assert await db.mark_task_as_cancelled("u", f"task-{t}") is True

            async def finisher(t: int) -> None:
                await first_saved[t].wait()  # an unknown task cannot be completed
                await db.finish_task("u", f"task-{t}", "completed")

            jobs = [writer(n) for n in range(64)]
            jobs += [canceller(t) for t in CANCELLED] + [finisher(t) for t in FINISHED]
            for outcome in await asyncio.gather(*jobs, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    errors.append(outcome)
        return errors

    assert asyncio.run(main()) == []
    with psycopg.connect(conninfo(db_url), autocommit=True) as psql:
        expected_state(psql)


def test_16_threads_race_saves_cancels_and_finishes(route, db_url):
    errors: list[BaseException] = []
    with SyncDatabaseManager(url=route.url, pool_size=8, auto_migrate=False,
                             **route.settings) as db:
        first_saved = {t: threading.Event() for t in range(TASKS)}

        def guarded(job: Any, *args: Any) -> None:
            try:
                job(*args)
            except BaseException as exc:
                errors.append(exc)

        def writer(n: int) -> None:
            rng = random.Random(n)
            order = [(t, s) for t in range(TASKS) for s in range(STEPS)]
            rng.shuffle(order)
            for t, s in order:
                db.save_task_history("u", f"task-{t}", s, done(s))
                first_saved[t].set()

        def canceller(t: int) -> None:
            assert db.mark_task_as_cancelled("u", f"task-{t}") is True

        def finisher(t: int) -> None:
            assert first_saved[t].wait(60)
            db.finish_task("u", f"task-{t}", "completed")

        threads = [threading.Thread(target=guarded, args=(writer, n)) for n in range(16)]
        threads += [threading.Thread(target=guarded, args=(canceller, t)) for t in CANCELLED]
        threads += [threading.Thread(target=guarded, args=(finisher, t)) for t in FINISHED]
        random.Random(1).shuffle(threads)
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    with psycopg.connect(conninfo(db_url), autocommit=True) as psql:
        expected_state(psql)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_bulk_and_single_saves_of_the_same_steps(route, db_url, kind):
    """Bulk loads racing single saves of the very same steps: one row per step, no error."""
    records = [("u", f"task-{t}", s, done(s)) for t in range(8) for s in range(STEPS)]
    errors: list[BaseException] = []
    if kind == "sync":
        with SyncDatabaseManager(url=route.url, pool_size=6, auto_migrate=False,
                                 **route.settings) as db:
            def bulk() -> None:
                try:
                    db.save_task_history_many(records)
                except BaseException as exc:
                    errors.append(exc)

            def single() -> None:
                try:
                    for r in records:
                        db.save_task_history(*r)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=f) for f in (bulk, single, bulk, single)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
    else:
        async def main() -> None:
            async with DatabaseManager(url=route.url, pool_size=6, auto_migrate=False,
                                       **route.settings) as db:
                async def single() -> None:
                    for r in records:
                        await db.save_task_history(*r)

                outcomes = await asyncio.gather(
                    db.save_task_history_many(records), single(),
                    db.save_task_history_many(records), single(), return_exceptions=True)
                errors.extend(o for o in outcomes if isinstance(o, BaseException))

        asyncio.run(main())
    assert errors == []
    with psycopg.connect(conninfo(db_url), autocommit=True) as psql:
        assert psql.execute("SELECT count(*), count(DISTINCT (task_id, step)) "
                            "FROM task_history").fetchone() == (80, 80)
