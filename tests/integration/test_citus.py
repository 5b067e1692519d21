"""On a Citus cluster (docs/scaling.md): rows spread over the workers by user, every rule is
enforced on the workers, errors stay precise, a save runs on one node, bulk re-saves merge.

These tests need a Citus coordinator: ``.ci/run`` starts a three-node cluster
(``../shared/citus``) and runs the integration tests against it. Elsewhere they are skipped,
saying so; the rest of the integration suite runs on both.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from aiecs_persistence import InvalidTransitionError, TaskStepResult, ValidationError
from aiecs_persistence import citus as cluster
from aiecs_persistence.cli import app
from aiecs_persistence.statements import Statement, saves, watching

from ..database import Server

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(autouse=True)
def _on_citus(pg: Server) -> None:
    if not pg.citus:
        pytest.skip("needs a Citus coordinator as AIECS_TEST_DATABASE_URL (.ci/run starts one)")


def done(name: str = "op") -> TaskStepResult:
    return TaskStepResult(name, {"ok": True}, completed=True, message="done",
                          status="completed")


def save_function_delegations(psql) -> tuple[int]:
    """How many times ``aiecs_save_steps`` is distributed by its user argument (a row)."""
    return psql.execute(
        "SELECT count(*) FROM pg_dist_object WHERE classid = 'pg_proc'::regclass "
        "AND objid = 'aiecs_save_steps'::regproc AND distribution_argument_index = 0"
    ).fetchone()


def owner_port(psql, user: str) -> int:
    """The port of the worker that holds ``user``'s rows."""
    row = psql.execute(
        "SELECT nodeport FROM citus_shards WHERE table_name = 'tasks'::regclass "
        "AND shardid = get_shard_id_for_distribution_column('tasks', %s::text)", [user]
    ).fetchone()
    return int(row[0])


def plan_of(psql, statement: Statement) -> str:
    """``EXPLAIN VERBOSE`` of ``statement`` with its values inlined (a plan with parameters
    hides the node's)."""
    inlined = psycopg.ClientCursor(psql).mogrify(statement.sql.replace(")b", ")s"),
                                                 statement.params)
    return "\n".join(r[0] for r in psql.execute("EXPLAIN VERBOSE " + inlined).fetchall())


def test_upgrade_left_every_table_where_it_belongs(psql):
    placed = dict(psql.execute(
        "SELECT logicalrelid::regclass::text, partmethod::text || ':' || "
        "coalesce(column_to_column_name(logicalrelid, partkey), '') FROM pg_dist_partition"
    ).fetchall())
    for table in cluster.DISTRIBUTED:
        assert placed[table] == "h:user_id", table
    for table in cluster.REFERENCE:
        assert placed[table].startswith("n:"), table
    for table in cluster.LOCAL:
        assert table not in placed
    groups = {r[0] for r in psql.execute(
        "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid::regclass::text = ANY(%s)",
        [list(cluster.DISTRIBUTED)]).fetchall()}
    assert len(groups) == 1  # co-located: a user's rows of every table on one node
    delegated = save_function_delegations(psql)
    assert delegated == (1,)


def test_rows_of_50_users_land_on_both_workers(db, psql):
    users = [f"user-{i}" for i in range(50)]
    for user in users:
        db.save_task_history(user, "t", 0, done())
    nodes = set()
    for user in users:
        row = psql.execute(
            "SELECT nodename, nodeport FROM citus_shards WHERE table_name = 'tasks'::regclass "
            "AND shardid = get_shard_id_for_distribution_column('tasks', %s::text)", [user]
        ).fetchone()
        nodes.add(row)
        assert db.load_task_history(user, "t")[0]["result"]["step"] == "op"
    workers = set(psql.execute(
        "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0").fetchall())
    assert len(workers) == 2 and nodes == workers
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (50,)


def test_an_illegal_update_in_psql_fails_on_the_worker_naming_both_statuses(psql):
    psql.execute("INSERT INTO tasks (user_id, task_id, status) VALUES ('u', 't', 'running')")
    psql.execute("UPDATE tasks SET status = 'completed' WHERE user_id = 'u' AND task_id = 't'")
    with pytest.raises(psycopg.DatabaseError) as info:
        psql.execute("UPDATE tasks SET status = 'running' WHERE user_id = 'u' AND task_id = 't'")
    assert info.value.sqlstate == "AE001"
    assert "completed -> running" in str(info.value)
    assert "while executing command on" in (info.value.diag.context or "")  # on a worker


def test_a_check_violation_through_a_manager_names_its_rule(db, psql):
    # A rule the managers do not check themselves (a DBA's), so only a worker can refuse it.
    psql.execute("ALTER TABLE task_history ADD CONSTRAINT ck_task_history_short_message "
                 "CHECK (char_length(message) < 20)")
    try:
        with pytest.raises(ValidationError) as info:
            db.save_task_history("u", "t", 0, TaskStepResult(
                "op", None, completed=True, message="x" * 30, status="completed"))
        assert info.value.constraint == "ck_task_history_short_message"
        assert info.value.field == "ck_task_history_short_message"
        assert "task_history_1" not in info.value.message  # the table, not its shard
    finally:
        psql.execute("ALTER TABLE task_history DROP CONSTRAINT ck_task_history_short_message")
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (0,)


def test_an_illegal_resave_through_a_manager_is_an_invalid_transition(db):
    db.save_task_history("u", "t", 0, done())
    with pytest.raises(InvalidTransitionError) as info:
        db.save_task_history("u", "t", 0, TaskStepResult("op", None, status="running"))
    assert (info.value.from_status, info.value.to_status) == ("completed", "running")


def test_a_save_runs_on_the_one_node_that_owns_its_user(psql):
    save = saves.save_step("u", "t", 0, done(), max_result_bytes=1 << 20)
    plan = plan_of(psql, saves.save_steps_call([save], 1000))
    assert "Task Count: 1" in plan, plan
    assert "Distributed Subplan" not in plan and "intermediate_result" not in plan, plan
    assert "SELECT public.aiecs_save_steps(" in plan, plan  # the whole call is sent
    assert f"port={owner_port(psql, 'u')} " in plan, plan  # to the worker that owns the user


def test_bulk_resaves_merge_and_events_are_logged_once(db, psql):
    records = [(f"u{i % 7}", f"t{i}", s, done()) for i in range(30) for s in range(3)]
    assert db.save_task_history_many(records) == 90
    assert db.save_task_history_many(records) == 90  # every step exists: merged
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (90,)
    steps, tasks = psql.execute(
        "SELECT count(*) FILTER (WHERE step IS NOT NULL), count(*) FILTER (WHERE step IS NULL) "
        "FROM task_events").fetchone()
    assert (steps, tasks) == (180, 30)  # each write logged once, by the workers' triggers


def test_concurrent_saves_of_several_users_all_land(db):
    # Many saves at once, of a few users: group commit batches them per user on Citus
    # (tests/unit/test_group.py checks the batches themselves).
    import threading

    errors: list[BaseException] = []

    def write(user: str) -> None:
        try:
            for step in range(20):
                db.save_task_history(user, "t", step, done())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    if db.kind == "async":
        import asyncio

        async def burst() -> None:
            await asyncio.gather(*(db.manager.save_task_history(f"u{u}", "t", s, done())
                                   for u in range(4) for s in range(20)))

        db.loop.run_until_complete(burst())
    else:
        threads = [threading.Thread(target=write, args=(f"u{u}",)) for u in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    for u in range(4):
        assert len(db.load_task_history(f"u{u}", "t")) == 20


def test_check_reports_a_table_left_local_and_upgrade_places_it(psql, db_url):
    from typer.testing import CliRunner

    from aiecs_persistence.cli import app

    runner = CliRunner()
    url = db_url.render_as_string(hide_password=False)
    psql.execute("SELECT undistribute_table('aiecs_watched')")
    try:
        found = runner.invoke(app, ["check", "--url", url])
        assert found.exit_code == 1, found.output
        assert "aiecs_watched is not distributed by user_id" in found.output
    finally:
        fixed = runner.invoke(app, ["upgrade", "--url", url])
    assert fixed.exit_code == 0, fixed.output
    assert runner.invoke(app, ["check", "--url", url]).exit_code == 0
    assert psql.execute("SELECT partmethod FROM pg_dist_partition "
                        "WHERE logicalrelid = 'aiecs_watched'::regclass").fetchone() == ("h",)


def test_a_cleanup_beside_writers_takes_old_tasks_and_keeps_every_acknowledged_save(db, psql):
    import threading

    psql.execute("INSERT INTO tasks (user_id, task_id, status, updated_at) "
                 "SELECT 'u' || (i % 20), 'old-' || i, 'running', now() - interval '60 days' "
                 "FROM generate_series(1, 200) i")
    revived = [(f"u{i % 20}", f"old-{i}") for i in range(1, 200, 10)]  # written meanwhile
    saved: list[tuple[str, str, int]] = []
    stop = threading.Event()

    def write() -> None:
        from aiecs_persistence import SyncDatabaseManager

        with SyncDatabaseManager(url=str(db.manager.url.render_as_string(False)),
                                 auto_migrate=False) as writer:
            for n in range(400):
                if stop.is_set() and n > len(revived):
                    break
                user, task = revived[n] if n < len(revived) else (f"u{n % 20}", f"new-{n}")
                writer.save_task_history(user, task, 0, done())
                saved.append((user, task, 0))

    thread = threading.Thread(target=write)
    thread.start()
    deleted = 0
    try:
        for _ in range(5):
            deleted += db.cleanup_old_tasks(30)
    finally:
        stop.set()
        thread.join(60)
    deleted += db.cleanup_old_tasks(30)
    left = {(u, t) for u, t in psql.execute("SELECT user_id, task_id FROM tasks").fetchall()}
    assert not {(u, t) for u, t in left if t.startswith("old-")} - set(revived)
    assert set(revived) <= left  # written meanwhile: kept (or deleted first, then created)
    assert 200 - len(revived) <= deleted <= 200
    stored = set(psql.execute("SELECT user_id, task_id, step FROM task_history").fetchall())
    assert set(saved) <= stored  # every acknowledged save is there


def test_retention_drops_an_old_periods_partitions_on_the_cluster(db, psql, db_url):
    """A period whose tasks are all inactive loses its partitions, on every node; a period
    with a task active since keeps them (Citus detaches without CONCURRENTLY)."""
    days = [psql.execute("SELECT date_bin('1 day', now() - make_interval(days => %s), "
                         "'2000-01-01'::timestamptz)", [n]).fetchone()[0] for n in (41, 40)]
    names: dict[object, list[str]] = {}
    try:
        for n, day in enumerate(days):
            psql.execute("SELECT aiecs_create_partitions(%s)", [day])
            psql.execute(
                "INSERT INTO tasks (user_id, task_id, status, bucket, created_at, updated_at) "
                f"SELECT 'u' || i, 'p{n}', 'running', %(day)s, %(day)s, %(day)s "
                "FROM generate_series(1, 20) i", {"day": day})
            psql.execute(
                "INSERT INTO task_history (user_id, task_id, step, step_name, status, completed, "
                f"bucket, created_at) SELECT 'u' || i, 'p{n}', s, 'op', 'completed', true, "
                "%(day)s, %(day)s "
                "FROM generate_series(1, 20) i, generate_series(0, 4) s", {"day": day})
            # (A step written by hand touches its task: its activity is set afterwards.)
            psql.execute(f"UPDATE tasks SET updated_at = %(day)s WHERE task_id = 'p{n}'",
                         {"day": day})
            if n == 1:  # (setting the same time again would set now(): the trigger's rule)
                psql.execute("UPDATE tasks SET updated_at = now() WHERE task_id = 'p1' "
                             "AND user_id = 'u1'")
        names = {b: [r[0] for r in psql.execute(
            "SELECT partition FROM aiecs_partition_bounds() WHERE lower = %s ORDER BY 1",
            [b]).fetchall()] for b in days}
        assert [len(v) for v in names.values()] == [2, 2]
        psql.execute("ANALYZE task_history")
        # What an operator sees first: the rows and bytes are the shards'.
        listed = runner.invoke(app, ["partitions", "--json", "--url", db_url.render_as_string(
            hide_password=False)])
        assert listed.exit_code == 0, listed.output
        rows = {r["partition"]: r for r in json.loads(listed.stdout)["partitions"]}
        old = rows[f"task_history_p{days[0]:%Y%m%d}"]
        assert old["droppable"] and old["rows"] == 100 and old["bytes"] > 0
        assert not rows[f"task_history_p{days[1]:%Y%m%d}"]["droppable"]
        deleted = db.cleanup_old_tasks(30)
        summary = db.manager.last_cleanup
        left = psql.execute("SELECT task_id, user_id, updated_at FROM tasks ORDER BY 1, 2"
                            ).fetchall()
        assert deleted == 19 + 20, (summary, left)  # the old period whole; 19 of the other's
        assert summary.partitions_dropped == 2 and summary.tasks_in_partitions == 20
        assert summary.bytes_freed > 0
        there = {r[0] for r in psql.execute(
            "SELECT DISTINCT logicalrelid::regclass::text FROM pg_dist_partition").fetchall()}
        assert not set(names[days[0]]) & there  # gone from the cluster's catalog
        assert set(names[days[1]]) <= there  # kept: a task of its period is active
        assert psql.execute("SELECT count(*) FROM task_history WHERE task_id = 'p1'"
                            ).fetchone()[0] == 5
    finally:
        psql.execute("DELETE FROM tasks WHERE task_id IN ('p0', 'p1')")
        for partition in [p for v in names.values() for p in v]:
            psql.execute(f"DROP TABLE IF EXISTS {partition}")
        psql.execute("UPDATE aiecs_partitioning SET retired_before = NULL")


def test_a_later_revision_runs_over_the_distributed_tables(db, psql, db_url):
    """Down to 0005 and up again: revisions 0006 (a function, a trigger function) and 0007
    (the tasks' status triggers) run over tables that are already distributed, in one
    transaction each way, and the upgrade delegates the new function again."""
    from aiecs_persistence import migrate

    db.save_task_history("u", "t", 0, done())
    try:
        migrate.downgrade(db_url, "0005_saves_and_reports")
        assert psql.execute("SELECT to_regproc('aiecs_save_steps')").fetchone() == (None,)
    finally:
        migrate.upgrade(db_url)
    assert migrate.inspect(db_url).ok
    assert db.load_task_history("u", "t")[0]["status"] == "completed"
    db.save_task_history("u", "t", 1, done())  # through the function, delegated again
    triggers = psql.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal "
        "AND tgname LIKE 'tr_tasks_status%' ORDER BY 1").fetchall()
    assert triggers == [("tr_tasks_status_changed",), ("tr_tasks_status_created",),
                        ("tr_tasks_status_transition",)]
    delegated = save_function_delegations(psql)
    assert delegated == (1,)


def test_a_watcher_follows_a_task_with_its_nodes_horizon(db, psql):
    events: list[tuple[int, str]] = []

    def save_and_finish() -> None:
        for step in range(4):
            db.save_task_history("u", "t", step, TaskStepResult(f"op{step}", None,
                                                                status="running"))
            db.save_task_history("u", "t", step, done(f"op{step}"))
        db.finish_task("u", "t", "completed")

    save_and_finish()
    watch = db.manager.watch_task_history("u", "t", poll_interval=0.05)
    if db.kind == "async":
        async def collect() -> None:
            async for entry in watch:
                events.append((entry["step"], entry["status"]))

        db.loop.run_until_complete(collect())
    else:
        events.extend((entry["step"], entry["status"]) for entry in watch)
    assert events == [(s, status) for s in range(4) for status in ("running", "completed")]
    plan = plan_of(psql, watching.Watch("u", "t", None).node_horizon())
    assert "Task Count: 1" in plan and f"port={owner_port(psql, 'u')} " in plan, plan
