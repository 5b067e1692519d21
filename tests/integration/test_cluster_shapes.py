"""The cluster's shape of a save (``statements.saves.SAVE_STEPS_CALL``) writes what the
plain statement writes: the same rows, the same events, the same refusals. Compared on plain
PostgreSQL, where both run (on Citus only the call does: tests/integration/test_citus.py)."""

from __future__ import annotations

import psycopg
import pytest

from aiecs_persistence import TaskStepResult
from aiecs_persistence.statements import Statement, report, saves, watching

from ..database import Server

SAVES = [
    ("t1", 0, TaskStepResult("fetch", {"rows": 3}, completed=True, status="completed")),
    ("t1", 1, TaskStepResult("parse", None, status="running")),
    ("t2", 0, TaskStepResult("fetch", "x", status="failed", error_code="E003",
                             error_message="boom")),
]

STEP_ROW = ("SELECT task_id, step, step_name, result, completed, message, status::text, "
            "error_code::text, error_message FROM task_history WHERE user_id = %s ORDER BY 1, 2")
EVENT_ROW = ("SELECT task_id, step, step_name, result, completed, message, status::text, "
             "error_code::text, error_message FROM task_events WHERE user_id = %s "
             "ORDER BY 1, 2 NULLS FIRST, seq")
TASK_ROW = ("SELECT task_id, status::text, started_at IS NOT NULL FROM tasks "
            "WHERE user_id = %s ORDER BY 1")


@pytest.fixture(autouse=True)
def _plain(pg: Server) -> None:
    if pg.citus:
        pytest.skip("compares with the plain statement, which Citus cannot run")


def saves_of(user: str) -> list[Statement]:
    return [saves.save_step(user, task, step, result, max_result_bytes=1 << 20)
            for task, step, result in SAVES]


def test_the_call_writes_what_the_statement_writes(psql):
    plain = saves.save_steps(saves_of("plain"))
    psql.execute(plain.sql, plain.params)
    call = saves.save_steps_call(saves_of("call"), 1000)
    psql.execute(call.sql, call.params)
    for query in (STEP_ROW, EVENT_ROW, TASK_ROW):
        assert psql.execute(query, ["call"]).fetchall() == psql.execute(query, ["plain"]
                                                                         ).fetchall()
    assert len(psql.execute(EVENT_ROW, ["call"]).fetchall()) == 5  # 2 tasks, 3 steps


def test_the_call_refuses_an_illegal_resave_and_writes_nothing(psql):
    call = saves.save_steps_call(saves_of("u"), None)
    psql.execute(call.sql, call.params)
    before = psql.execute("SELECT count(*) FROM task_events").fetchone()
    again = saves.save_steps_call([saves.save_step(
        "u", "t1", 0, TaskStepResult("fetch", None, status="running"),
        max_result_bytes=1 << 20)], None)
    with pytest.raises(psycopg.DatabaseError) as info:
        psql.execute(again.sql, again.params)
    assert info.value.sqlstate == "AE001"
    assert psql.execute("SELECT count(*) FROM task_events").fetchone() == before


def test_the_call_takes_the_callers_lock_timeout(psql, db_url):
    from ..conftest import conninfo

    first = saves.save_steps_call(saves_of("u")[:1], None)
    psql.execute(first.sql, first.params)
    with psycopg.connect(conninfo(db_url)) as blocker:
        blocker.execute("SELECT FROM task_history WHERE user_id = 'u' FOR UPDATE")
        again = saves.save_steps_call(saves_of("u")[:1], 100)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            psql.execute(again.sql, again.params)


def test_one_users_saves_only():
    with pytest.raises(ValueError, match="one user"):
        saves.save_steps_call(saves_of("a") + saves_of("b"))


def test_the_clusters_report_counts_what_the_plain_one_counts(psql):
    import datetime as dt

    for user in ("a", "b"):
        batch = saves.save_steps(saves_of(user))
        psql.execute(batch.sql, batch.params)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for window in ({}, {"since": since}, {"since": since, "until": since}, {"top": 1}):
        plain = report.report(**window)
        cluster = report.report(**window, form=report.REPORT_CLUSTER)
        assert psql.execute(cluster.sql, cluster.params).fetchall() == psql.execute(
            plain.sql, plain.params).fetchall(), window


def test_a_catch_up_under_a_given_horizon_reads_what_its_own_snapshot_reads(psql):
    batch = saves.save_steps(saves_of("u"))
    psql.execute(batch.sql, batch.params)
    own = watching.Watch("u", "t1", None).statement()
    horizon = psql.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                           ).fetchone()[0]
    given = watching.Watch("u", "t1", None).statement(horizon)
    mine = psql.execute(own.sql, own.params).fetchall()
    theirs = psql.execute(given.sql, given.params).fetchall()
    assert [r[1:] for r in theirs] == [r[1:] for r in mine] and len(mine) == 2
    assert {r[0] for r in theirs} == {horizon}
    node = watching.Watch("u", "t1", None).node_horizon()
    assert psql.execute(node.sql, node.params).fetchone()[0] >= horizon  # a later snapshot
