"""Upgrading a database that holds upstream AIECS history adopts it (contract §7)."""

from __future__ import annotations

import datetime as dt

import psycopg

from aiecs_persistence import migrate

from ..conftest import conninfo
from .legacy import build, create_upstream


def test_upgrade_adopts_upstream_history(empty_db_url):
    data = build()
    assert len(data.rows) > 2000
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        create_upstream(conn, data)

    migrate.upgrade(empty_db_url, options={"legacy_timezone": "America/New_York"})

    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        original = q("SELECT count(*) FROM legacy_task_history")[0][0]
        adopted = q("SELECT count(*) FROM task_history")[0][0]
        set_aside = q("SELECT count(*) FROM legacy_task_history_rejects")[0][0]
        assert original == len(data.rows)
        assert adopted + set_aside == original, "nothing lost"
        assert adopted == data.adopted
        reasons = dict(q("SELECT reason, count(*) FROM legacy_task_history_rejects "
                         "GROUP BY reason"))
        assert reasons == dict(data.rejected)

        # Each adopted step belongs to a task; statuses normalised.
        assert q("SELECT count(*) FROM task_history h LEFT JOIN tasks t USING (user_id, task_id)"
                 " WHERE t.task_id IS NULL")[0][0] == 0
        statuses = {s for (s,) in q("SELECT DISTINCT status::text FROM task_history")}
        assert statuses <= {"completed", "failed", "running"}
        for user, task in list(data.v10_tasks)[:5]:
            assert q(f"SELECT status::text FROM tasks WHERE user_id = '{user}' "
                     f"AND task_id = '{task}'") == [("completed",)]
        cancelled = {tuple(r) for r in q(
            "SELECT user_id, task_id FROM tasks WHERE status = 'cancelled' "
            "AND error_code = 'E004'")}
        assert cancelled == data.cancelled_tasks
        # Steps of cancelled tasks keep their own status (upstream overwrote it).
        assert q("SELECT count(*) FROM task_history h JOIN tasks t USING (user_id, task_id) "
                 "WHERE t.status = 'cancelled' AND h.status <> 'completed'")[0][0] == 0
        # Timestamps: naive New York times, stored as UTC instants (12:00 EST = 17:00 UTC).
        first = q("SELECT min(created_at) FROM task_history")[0][0]
        assert first.astimezone(dt.UTC) >= dt.datetime(2026, 1, 1, 17, 0, tzinfo=dt.UTC)
        assert first.astimezone(dt.UTC) < dt.datetime(2026, 1, 1, 17, 1, tzinfo=dt.UTC)
        # The rejected row's original data is kept.
        row = q("SELECT row_data FROM legacy_task_history_rejects "
                "WHERE reason LIKE 'result:%' LIMIT 1")[0][0]
        assert row["result"] == [1, 2, 3]

    # Downgrade gives the upstream table back, untouched.
    migrate.downgrade(empty_db_url, "base")
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM task_history").fetchone() == (len(data.rows),)
        assert conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,)


def test_a_foreign_task_history_table_is_not_touched(empty_db_url):
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE task_history (x int)")
    try:
        migrate.upgrade(empty_db_url)
    except migrate.DatabaseError as exc:
        assert "not upstream AIECS history" in str(exc)
    else:
        raise AssertionError("upgrade should refuse")
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,)
