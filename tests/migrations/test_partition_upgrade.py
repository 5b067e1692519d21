"""Revision 0010 converts a populated database in place while writers go on: the existing
tables become the first partitions without being rewritten (their files stay the same), every
row written meanwhile is there once, and downgrade then upgrade again works."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from aiecs_persistence import migrate

from ..conftest import conninfo

PREVIOUS = "0009_immutable_keys"
TASKS, STEPS = 10_000, 10  # 100,000 existing steps


def fill(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO tasks (user_id, task_id, status) SELECT 'u' || (i %% 50), "
                 "'t' || i, 'running' FROM generate_series(1, %s) i", [TASKS])
    conn.execute("INSERT INTO task_history (user_id, task_id, step, step_name, status, "
                 "completed) SELECT 'u' || (i %% 50), 't' || i, s, 'op', 'completed', true "
                 "FROM generate_series(1, %s) i, generate_series(0, %s) s", [TASKS, STEPS - 1])


def files(conn: psycopg.Connection) -> tuple[Any, ...]:
    """The data files of the step and event rows that existed before (by their tables' oids)."""
    return conn.execute(
        "SELECT pg_relation_filenode(%s::regclass), pg_relation_filenode(%s::regclass)",
        ["task_history_p_initial", "task_events_p_initial"]).fetchone()


def test_upgrade_in_place_beside_writers_then_down_and_up(pg, empty_db_url):
    if pg.citus:
        pytest.skip("on Citus the revision copies the rows (docs/scaling.md)")
    migrate.upgrade(empty_db_url, PREVIOUS)
    admin = psycopg.connect(conninfo(empty_db_url), autocommit=True)
    fill(admin)
    before = admin.execute("SELECT pg_relation_filenode('task_history'), "
                           "pg_relation_filenode('task_events')").fetchone()
    stop = threading.Event()
    written: list[str] = []
    failures: list[Exception] = []
    waits: list[float] = []

    def writer(n: int) -> None:
        # As a service of the previous version writes: a task, then two steps, each a
        # transaction of its own (plain INSERTs, which both schemas take).
        with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            i = 0
            while not stop.is_set():
                task = f"w{n}-{i}"
                began = time.monotonic()
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO tasks (user_id, task_id, status) "
                                     "VALUES ('w', %s, 'running')", [task])
                        conn.execute(
                            "INSERT INTO task_history (user_id, task_id, step, step_name, "
                            "status, completed) VALUES ('w', %s, 0, 'a', 'completed', true), "
                            "('w', %s, 1, 'b', 'completed', true)", [task, task])
                except psycopg.Error as exc:
                    failures.append(exc)
                else:
                    written.append(task)
                    waits.append(time.monotonic() - began)
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        migrate.upgrade(empty_db_url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:3]
    assert len(written) > 20  # the writers went on during the upgrade
    # ... and waited for its locks briefly: no statement of it holds one for long.
    assert max(waits) < 3, max(waits)
    # The existing tables are the first partitions, their files untouched: nothing rewritten.
    assert files(admin) == before
    steps = admin.execute("SELECT count(*), count(DISTINCT (user_id, task_id, step)) "
                          "FROM task_history").fetchone()
    assert steps == (TASKS * STEPS + 2 * len(written),) * 2
    saved = {r[0] for r in admin.execute("SELECT task_id FROM tasks WHERE user_id = 'w'")}
    assert saved == set(written)
    assert migrate.check(empty_db_url).ok
    # The first partition is a partition like any other: a save and a load through it.
    from aiecs_persistence import SyncDatabaseManager, TaskStepResult

    with SyncDatabaseManager(url=empty_db_url) as db:
        db.save_task_history("u1", "t1", STEPS, TaskStepResult(
            step="more", result=None, completed=True, message="", status="completed"))
        assert len(db.load_task_history("u1", "t1")) == STEPS + 1
    migrate.downgrade(empty_db_url, PREVIOUS)
    assert migrate.current(empty_db_url) == PREVIOUS
    count = admin.execute("SELECT count(*) FROM task_history").fetchone()
    assert count == (TASKS * STEPS + 2 * len(written) + 1,)
    migrate.upgrade(empty_db_url)
    assert migrate.check(empty_db_url).ok
    assert admin.execute("SELECT count(*) FROM task_history").fetchone() == count
    admin.close()
