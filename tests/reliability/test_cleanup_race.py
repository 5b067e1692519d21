"""Retention never deletes what was acknowledged after it began (contract §5: saves were lost
to a racing ``cleanup_old_tasks(0)``). 64 coroutines save and re-save steps, most of them to
tasks touched less than a second ago (the step-only fast path), while another manager runs
``cleanup_old_tasks(0)`` over and over in small batches; after each cleanup call, every save
acknowledged since that call began must be in the table. A call begins when its first
statement runs on the server (nothing earlier is visible to it); the test takes the end of
the call's first batch, which is later, as its start. Bounded: about 20,000 saves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from aiecs_persistence import DatabaseManager, TaskStepResult

from ..conftest import conninfo

WRITERS, TASKS_PER_WRITER, STEPS = 64, 16, 10  # 64 * 16 * 10 = 10,240 steps, saved twice


def running(step: int) -> TaskStepResult:
    return TaskStepResult(f"op{step}", None, False, "", "running")


def completed(step: int) -> TaskStepResult:
    return TaskStepResult(f"op{step}", {"step": step}, True, "ok", "completed")


def present(conn: psycopg.Connection[Any], keys: list[tuple[str, int, str]]) -> set[Any]:
    rows = conn.execute(
        "SELECT h.task_id, h.step, h.status::text FROM task_history h "
        "JOIN unnest(%s::text[], %s::int[]) AS k(task_id, step) USING (task_id, step)",
        [[k[0] for k in keys], [k[1] for k in keys]]).fetchall()
    return {tuple(r) for r in rows}


@pytest.mark.slow
def test_saves_acknowledged_after_a_cleanup_began_survive_it(db_url, pg):
    if pg.citus:
        pytest.skip("checks plain PostgreSQL's guarantee (a cleanup's xmin horizon); on Citus "
                    "a cleanup keeps the last 15 minutes instead (tests/integration/"
                    "test_citus.py checks that)")
    acked: list[tuple[float, tuple[str, int, str]]] = []  # (time, (task, step, status))
    failures: list[str] = []
    checked = [0, 0]  # saves checked, cleanup calls

    async def main() -> None:
        async with DatabaseManager(url=db_url, pool_size=8, auto_migrate=False) as writers, \
                DatabaseManager(url=db_url, pool_size=2, auto_migrate=False,
                                cleanup_batch_size=8) as cleaner:
            done = asyncio.Event()

            # At least the planned tasks, then more until the cleaner has raced the writers
            # through several multi-batch calls (group commit makes the planned ones quick).
            deadline = time.monotonic() + 120

            async def writer(w: int) -> None:
                t = -1
                while (t := t + 1) < TASKS_PER_WRITER or (
                        checked[1] < 5 and time.monotonic() < deadline):
                    task = f"w{w}-t{t}"
                    for s in range(STEPS):
                        await writers.save_task_history("u", task, s, running(s))
                        acked.append((time.monotonic(), (task, s, "running")))
                        await writers.save_task_history("u", task, s, completed(s))
                        acked.append((time.monotonic(), (task, s, "completed")))

            async def cleanup_loop() -> None:
                with psycopg.connect(conninfo(db_url), autocommit=True) as conn:
                    while not done.is_set():
                        began: list[float] = []
                        await cleaner.cleanup_old_tasks(
                            0, on_batch=lambda _, began=began: began.append(time.monotonic()))
                        since = {key for when, key in list(acked) if when > began[0]}
                        # A step re-saved completed is present as completed: count it once.
                        wanted = {(t, s) for t, s, _ in since}
                        found = {(t, s) for t, s, _ in present(conn, sorted(since))}
                        if wanted - found:
                            failures.append(f"{len(wanted - found)} of {len(wanted)} saves "
                                            f"acknowledged after a cleanup began are gone: "
                                            f"{sorted(wanted - found)[:5]}")
                        checked[0] += len(wanted)
                        checked[1] += len(began) > 1
                        await asyncio.sleep(0)

            cleaning = asyncio.create_task(cleanup_loop())
            try:
                await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))),
                                       timeout=240)
            finally:
                done.set()
                await cleaning

    asyncio.run(main())
    assert len(acked) >= WRITERS * TASKS_PER_WRITER * STEPS * 2 >= 20_000
    assert not failures, failures[:3]
    assert checked[1] >= 5 and checked[0] > 1000, checked  # calls of several batches
