"""Following a task as it is written (contract §5, watch_task_history): every committed change
exactly once, in commit order per step, across racing writers, killed connections, resumed
tokens, polling mode, psql writers and the command line. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    DatabaseManager,
    SyncDatabaseManager,
    TaskStatus,
    TaskStepResult,
    ValidationError,
)
from aiecs_persistence.statements import saves

from ..conftest import conninfo, interruptible

TASKS, STEPS_PER_WRITER = 8, 50


def running(step: int) -> TaskStepResult:
    return TaskStepResult(f"op{step}", None, False, "", "running")


def completed(step: int) -> TaskStepResult:
    return TaskStepResult(f"op{step}", {"step": step}, True, "ok", "completed")


def changes(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["step"], e["status"]) for e in events]


def assert_every_change_once_in_order(events: list[dict[str, Any]], steps: int) -> None:
    seen = changes(events)
    assert len(seen) == 2 * steps, (len(seen), seen[:10])
    per_step: dict[int, list[str]] = {}
    for step, status in seen:
        per_step.setdefault(step, []).append(status)
    assert per_step == {s: ["running", "completed"] for s in range(steps)}
    assert len({e["token"] for e in events}) == len(events)


async def raw_writer(url: Any, task: str, steps: range, rng: random.Random) -> None:
    """A writer outside the library (as psql would be): each insert and each re-save in a
    transaction of its own, held open for a random while, so commits land out of start order."""
    async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as conn:
        for step in steps:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO task_history (user_id, task_id, step, step_name, status) "
                    "VALUES ('u', %s, %s, %s, 'running')", (task, step, f"op{step}"))
                await asyncio.sleep(rng.random() * 0.01)
            async with conn.transaction():
                await conn.execute(
                    "UPDATE task_history SET status = 'completed', completed = true, "
                    "result = %s, message = 'ok' WHERE user_id = 'u' AND task_id = %s "
                    "AND step = %s", (json.dumps({"step": step}), task, step))
                await asyncio.sleep(rng.random() * 0.01)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_racing_writers_every_change_seen_once_in_order(db_url, mode):
    settings = {"notifications": mode == "notify"}
    poll = 0.05

    async def main() -> dict[str, list[dict[str, Any]]]:
        async with DatabaseManager(url=db_url, pool_size=8, auto_migrate=False) as writers, \
                DatabaseManager(url=db_url, pool_size=4, auto_migrate=False,
                                **settings) as watching:
            tasks = [f"task-{t}" for t in range(TASKS)]
            for task in tasks:
                await writers.start_task("u", task)
            seen: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}

            async def watcher(task: str) -> None:
                async for event in watching.watch_task_history("u", task, poll_interval=poll):
                    seen[task].append(event)

            async def library_writer(task: str) -> None:
                for step in range(STEPS_PER_WRITER):
                    await writers.save_task_history("u", task, step, running(step))
                    await writers.save_task_history("u", task, step, completed(step))

            watchers = [asyncio.ensure_future(watcher(t)) for t in tasks]
            await asyncio.sleep(0.2)
            await asyncio.gather(*(
                w for i, t in enumerate(tasks) for w in (
                    library_writer(t),
                    raw_writer(db_url, t, range(STEPS_PER_WRITER, 2 * STEPS_PER_WRITER),
                               random.Random(i)))))
            for task in tasks:
                await writers.finish_task("u", task, TaskStatus.COMPLETED)
            await asyncio.wait_for(asyncio.gather(*watchers), timeout=60)
            return seen

    seen = asyncio.run(asyncio.wait_for(main(), timeout=180))
    for task, events in seen.items():
        assert_every_change_once_in_order(events, 2 * STEPS_PER_WRITER), task


RESUME_SCRIPT = """
import json, sys
from aiecs_persistence import SyncDatabaseManager
with SyncDatabaseManager(url=sys.argv[1], auto_migrate=False) as db:
    for e in db.watch_task_history("u", "t", after=sys.argv[2]):
        print(json.dumps([e["step"], e["status"], e["token"]]), flush=True)
"""


def test_killed_connections_and_a_resumed_token_miss_nothing(db_url, psql):
    steps = 20

    async def main() -> list[dict[str, Any]]:
        async with DatabaseManager(url=db_url, auto_migrate=False) as writer, \
                DatabaseManager(url=db_url, auto_migrate=False) as watching:
            await writer.start_task("u", "t")
            events: list[dict[str, Any]] = []

            async def write() -> None:
                for step in range(steps):
                    await writer.save_task_history("u", "t", step, running(step))
                    await writer.save_task_history("u", "t", step, completed(step))
                    if step == steps // 2:  # mid-stream: kill every connection but psql's
                        psql.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = current_database() AND pid <> pg_backend_pid()")
                    await asyncio.sleep(0.01)
                await writer.finish_task("u", "t", TaskStatus.COMPLETED)

            async def watch() -> None:
                async for event in watching.watch_task_history("u", "t", poll_interval=0.1):
                    events.append(event)

            await asyncio.wait_for(asyncio.gather(write(), watch()), timeout=60)
            return events

    events = asyncio.run(main())
    assert_every_change_once_in_order(events, steps)

    # A new process resumes from the 15th event's token: it sees exactly the rest.
    done = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, db_url.render_as_string(hide_password=False),
         events[14]["token"]], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rest = [tuple(json.loads(line)[:2]) for line in done.stdout.splitlines()]
    assert rest == changes(events)[15:]


def test_a_step_inserted_by_psql_wakes_a_watcher(db_url, psql):
    with SyncDatabaseManager(url=db_url, auto_migrate=False) as db:
        db.start_task("u", "t")
        watcher = db.watch_task_history("u", "t", poll_interval=30)  # woken, not polling
        started = time.monotonic()
        psql.execute("INSERT INTO task_history (user_id, task_id, step, step_name, status) "
                     "VALUES ('u', 't', 0, 'typed in psql', 'running')")
        first = next(watcher)
        assert (first["step"], first["result"]["step"]) == (0, "typed in psql")
        psql.execute("UPDATE tasks SET status = 'cancelled', error_code = 'E004', "
                     "error_message = 'stopped by hand'")
        assert list(watcher) == []  # the task ended: the watch ends
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("options", [{}, {"prepare_threshold": None}], ids=["lean", "execute"])
def test_each_shape_of_save_wakes_exactly_its_watchers(db_url, psql, options):
    """A lone save that creates its task, a step-only save and a group-committed batch each
    notify for the tasks they wrote that someone watches, or whose user someone watches when
    the save created the task; steps of an unwatched task wake nobody. (A watcher that is woken
    late still catches up when it polls, so only the notifications themselves show this.)"""
    psql.execute("INSERT INTO aiecs_watched (user_id, task_id, listener, until) VALUES "
                 "('u', 't', 'test', now() + interval '1 hour'), "
                 "('u', '', 'test', now() + interval '1 hour')")
    with psycopg.connect(conninfo(db_url), autocommit=True) as listener, \
            SyncDatabaseManager(url=db_url, auto_migrate=False, **options) as db:
        listener.execute("LISTEN aiecs_events_test")  # the channel of the listener named test

        def woken() -> set[str]:
            return {n.payload for n in listener.notifies(timeout=0.5)}

        db.save_task_history("u", "t", 0, running(0))  # creates t: full save
        assert woken() == {"u\x1ft"}
        step_only = replace(db._save_statements("u", "t", 1, running(1))[0],
                            sql=saves.SAVE_STEP_ONLY)  # as for a task saved within the second
        db._run(step_only, writer=True)
        assert woken() == {"u\x1ft"}
        db.save_task_history("u", "other", 0, running(0))  # creates other: its user's watcher
        assert woken() == {"u\x1fother"}
        db.save_task_history("u", "other", 1, running(1))  # a step of an unwatched task
        db.save_task_history("v", "t", 0, running(0))  # an unwatched user
        assert woken() == set()
        batch = [db._save_statements(user, task, step, running(step))[0]
                 for user, task, step in [("u", "new", 0), ("u", "other", 2), ("u", "t", 2),
                                          ("v", "t", 1)]]
        db._run(db._saves(batch), writer=True)
        assert woken() == {"u\x1fnew", "u\x1ft"}
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (9,)


def test_watch_user_tasks_follows_status_changes(db_url):
    async def main() -> list[tuple[str, str]]:
        async with DatabaseManager(url=db_url, auto_migrate=False) as db:
            seen: list[tuple[str, str]] = []

            async def dashboard() -> None:
                async for change in db.watch_user_tasks("u", poll_interval=0.1):
                    seen.append((change["task_id"], change["status"]))
                    if len(seen) == 4:
                        return

            follower = asyncio.ensure_future(dashboard())
            await asyncio.sleep(0.1)
            for task in ("a", "b"):
                await db.save_task_history("u", task, 0, completed(0))
            await db.finish_task("u", "a", TaskStatus.COMPLETED)
            await db.mark_task_as_cancelled("u", "b")
            await asyncio.wait_for(follower, 30)
            return seen

    seen = asyncio.run(main())
    assert sorted(seen) == [("a", "completed"), ("a", "running"), ("b", "cancelled"),
                            ("b", "running")]
    assert seen.index(("a", "running")) < seen.index(("a", "completed"))


def test_follow_on_the_command_line_prints_steps_and_ends_with_the_task(db_url):
    url = db_url.render_as_string(hide_password=False)
    with SyncDatabaseManager(url=db_url, auto_migrate=False) as db:
        db.start_task("u", "t")
        follower = subprocess.Popen(
            [sys.executable, "-m", "aiecs_persistence", "history", "u", "t", "--follow",
             "--json", "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            time.sleep(1.0)
            for step in range(3):
                db.save_task_history("u", "t", step, completed(step))
            db.finish_task("u", "t", TaskStatus.COMPLETED)
            out, err = follower.communicate(timeout=30)
        finally:
            follower.kill()
    assert follower.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["step"], e["status"]) for e in lines] == [(s, "completed") for s in range(3)]


def test_bad_tokens_and_intervals_are_refused(db):
    for token in ("not-a-token", "W10", 42):
        with pytest.raises(ValidationError) as info:
            next_event(db, "u", "t", after=token)
        assert info.value.field == "after"
    with pytest.raises(ValidationError) as info:
        next_event(db, "u", "t", poll_interval=0)
    assert info.value.field == "poll_interval"


def next_event(db: Any, *args: Any, **kwargs: Any) -> Any:
    iterator = db.manager.watch_task_history(*args, **kwargs)
    if db.loop is None:
        return next(iterator)
    return db.loop.run_until_complete(iterator.__anext__())


def test_watching_through_pgbouncer_polls_and_misses_nothing(route, db_url):
    """Behind a transaction-mode pooler notifications cannot reach the client: the watcher
    polls, with the same results."""
    async def main() -> list[dict[str, Any]]:
        async with DatabaseManager(url=db_url, auto_migrate=False) as writer, \
                DatabaseManager(url=route.url, auto_migrate=False,
                                **route.settings) as watching:
            await writer.start_task("u", "t")
            events: list[dict[str, Any]] = []

            async def watch() -> None:
                async for event in watching.watch_task_history("u", "t", poll_interval=0.05):
                    events.append(event)

            async def write() -> None:
                for step in range(10):
                    await writer.save_task_history("u", "t", step, running(step))
                    await writer.save_task_history("u", "t", step, completed(step))
                await writer.finish_task("u", "t", TaskStatus.COMPLETED)

            await asyncio.wait_for(asyncio.gather(watch(), write()), timeout=60)
            return events

    assert_every_change_once_in_order(asyncio.run(main()), 10)


def test_ctrl_c_ends_follow_with_exit_0(db_url):
    url = db_url.render_as_string(hide_password=False)
    with SyncDatabaseManager(url=db_url, auto_migrate=False) as db:
        db.save_task_history("u", "t", 0, completed(0))  # the task never ends
        follower = subprocess.Popen(
            [sys.executable, "-m", "aiecs_persistence", "history", "u", "t", "--follow",
             "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=interruptible)
        try:
            assert "op0" in (follower.stdout.readline() if follower.stdout else "")
            follower.send_signal(signal.SIGINT)
            _, err = follower.communicate(timeout=30)
        finally:
            follower.kill()
    assert follower.returncode == 0, err
    assert "Traceback" not in err


def test_bulk_loads_are_followed_and_deleted_tasks_leave_no_events(db_url, psql):
    async def main() -> list[dict[str, Any]]:
        async with DatabaseManager(url=db_url, auto_migrate=False, bulk_chunk_size=7) as db:
            await db.start_task("u", "t")
            events: list[dict[str, Any]] = []

            async def watch() -> None:
                async for event in db.watch_task_history("u", "t", poll_interval=30):
                    events.append(event)

            async def write() -> None:
                await asyncio.sleep(0.2)
                await db.save_task_history_many([("u", "t", s, running(s)) for s in range(20)])
                await db.save_task_history_many(  # re-saves: the merge path
                    [("u", "t", s, completed(s)) for s in range(20)])
                await db.finish_task("u", "t", TaskStatus.COMPLETED)

            await asyncio.wait_for(asyncio.gather(watch(), write()), timeout=60)
            return events

    assert_every_change_once_in_order(asyncio.run(main()), 20)
    assert psql.execute("SELECT count(*) FROM task_events").fetchone()[0] > 40
    psql.execute("DELETE FROM tasks")
    assert psql.execute("SELECT count(*) FROM task_events").fetchone() == (0,)


def test_cancelled_watchers_always_end(db_url):
    """Watchers cancelled while they wait, their waits timing out every millisecond, all end.
    (The benchmark's watchers, cancelled while a group-committed burst woke them, once never
    ended: on Python 3.11 ``asyncio.timeout`` lost the cancellation. That exact race could not
    be staged here; this guards the behaviour around it.)"""
    from aiecs_persistence.listen import AsyncWaiter

    async def main() -> int:
        async def waiting(waiter: AsyncWaiter) -> None:
            while True:
                await waiter.wait(0.001)

        ended = 0
        for _ in range(20):
            waiters = [asyncio.ensure_future(waiting(AsyncWaiter())) for _ in range(100)]
            await asyncio.sleep(0.01)
            for task in waiters:
                task.cancel()
            done, pending = await asyncio.wait(waiters, timeout=5)
            assert not pending, f"{len(pending)} cancelled watchers never ended"
            ended += len(done)
        return ended

    assert asyncio.run(main()) == 2000
