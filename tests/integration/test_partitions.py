"""History partitioned by the time its task began (docs/operations.md, partitions and
retention): a task's rows stay in its partition whatever their own time, saves find their
partition even after the clock passed the last one made ahead, reads touch only the partitions
they need, and retention drops whole partitions whose tasks are all inactive.

The periods here are a few seconds wide (``aiecs_set_partition_width``), so that the clock
passes them while a test runs."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import psycopg
import pytest

from aiecs_persistence import SyncDatabaseManager, WatchExpiredError
from aiecs_persistence.domain import TaskStatus, TaskStepResult

from ..conftest import conninfo


def step(name: str, status: TaskStatus = TaskStatus.COMPLETED) -> TaskStepResult:
    return TaskStepResult(step=name, result={"ok": name}, completed=status is TaskStatus.COMPLETED,
                          message="", status=status.value)


@pytest.fixture
def short(pg: Any, db_url: Any) -> Any:
    """The test database with periods of ``width`` and ``ahead`` periods made in advance."""
    if pg.citus:
        pytest.skip("changes the partition width of the database the Citus run shares")

    def set_width(width: str, ahead: int = 0) -> psycopg.Connection:
        conn = psycopg.connect(conninfo(db_url), autocommit=True)
        # The day-wide partitions made when the database was (still empty) go first.
        for (name,) in conn.execute("SELECT partition FROM aiecs_partition_bounds()").fetchall():
            conn.execute(f'DROP TABLE "{name}"')
        conn.execute("UPDATE aiecs_partitioning SET ahead = %s", [ahead])
        conn.execute("SELECT aiecs_set_partition_width(%s::interval)", [width])
        return conn

    return set_width


def partitions(conn: psycopg.Connection, parent: str = "task_history") -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT partition FROM aiecs_partition_bounds() WHERE parent = %s ORDER BY lower",
        [parent]).fetchall()]


def partition_of(conn: psycopg.Connection, task_id: str) -> str:
    """The step partition of a task's period."""
    (name,) = conn.execute(
        "SELECT b.partition FROM aiecs_partition_bounds() b, tasks t "
        "WHERE b.parent = 'task_history' AND t.task_id = %s "
        "AND b.lower <= t.bucket AND b.upper > t.bucket", [task_id]).fetchone()
    return str(name)


def wait_for_next_period(conn: psycopg.Connection) -> None:
    """Sleep until the server's clock is in a period after the current one."""
    (left,) = conn.execute(
        "SELECT extract(epoch FROM date_bin(width, now(), '2000-01-01 00:00:00+00') + width "
        "- clock_timestamp()) FROM aiecs_partitioning").fetchone()
    time.sleep(float(left) + 0.05)


def test_a_save_after_the_last_partition_made_ahead_creates_its_own(short, db_url):
    conn = short("1 second", ahead=0)
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("u", "early", 0, step("plan"))
        made = len(partitions(conn))
        wait_for_next_period(conn)
        wait_for_next_period(conn)  # the clock is past every partition made so far
        assert db.save_task_history("u", "late", 0, step("plan")) is True
        assert db.save_task_history_many([("u", "bulk", 0, step("plan"))]) == 1
        assert [e["step"] for e in db.load_task_history("u", "late")] == [0]
    assert len(partitions(conn)) > made
    counts = conn.execute("SELECT count(*) FROM task_history").fetchone()
    assert counts == (3,)


def test_a_task_across_a_period_boundary_stays_in_one_partition(short, db_url):
    conn = short("2 seconds", ahead=1)
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("u", "long", 0, step("plan", TaskStatus.RUNNING))
        wait_for_next_period(conn)
        db.save_task_history("u", "long", 1, step("call"))
        db.save_task_history("u", "long", 0, step("plan"))  # a re-save after the boundary
        db.save_task_history("u", "other", 0, step("plan"))  # begun in the new period
        places = conn.execute(
            "SELECT task_id, count(DISTINCT tableoid), count(*) FROM task_history "
            "GROUP BY task_id ORDER BY task_id").fetchall()
        assert places == [("long", 1, 2), ("other", 1, 1)]
        events = conn.execute(
            "SELECT count(DISTINCT tableoid) FROM task_events WHERE task_id = 'long'").fetchone()
        assert events == (1,)
        assert [e["step"] for e in db.load_task_history("u", "long")] == [0, 1]
        assert [s.step for s in db.list_steps("u", limit=10).items
                if s.task_id == "long"] == [0, 1]  # newest activity first: 0 was re-saved
        steps_part = partition_of(conn, "long")
        first = steps_part, steps_part.replace("task_history", "task_events", 1)
        wait_for_next_period(conn)
        wait_for_next_period(conn)
        db.save_task_history("u", "other", 1, step("call"))
        assert triggers_off_allowed(conn)  # its tasks go with the triggers off
        deleted = db.cleanup_old_tasks(2.5 / 86_400)  # the first period ended over 2.5 s ago
        assert deleted == 1  # "long", whole; "other" is active
        assert db.load_task_history("u", "long") == []
        left = conn.execute("SELECT (SELECT count(*) FROM task_history WHERE task_id = 'long'), "
                            "(SELECT count(*) FROM task_events WHERE task_id = 'long')")
        assert left.fetchone() == (0, 0)
        assert [e["step"] for e in db.load_task_history("u", "other")] == [0, 1]
    # The first period's partitions were dropped whole (and no table of theirs is left).
    assert first[0] not in partitions(conn) and first[1] not in partitions(conn, "task_events")
    left = conn.execute("SELECT to_regclass(%s), to_regclass(%s)", list(first)).fetchone()
    assert left == (None, None)


def test_a_task_active_in_an_old_period_keeps_its_partition(short, db_url):
    conn = short("2 seconds", ahead=2)
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("u", "busy", 0, step("plan", TaskStatus.RUNNING))
        db.save_task_history("u", "idle", 0, step("plan"))
        first = partition_of(conn, "busy")
        wait_for_next_period(conn)
        wait_for_next_period(conn)
        time.sleep(0.6)  # the first period ended more than 2.5 s ago
        db.save_task_history("u", "busy", 1, step("call"))  # still running, in its period
        assert db.cleanup_old_tasks(2.5 / 86_400) == 1  # "idle", row by row
        assert [e["step"] for e in db.load_task_history("u", "busy")] == [0, 1]
        assert db.load_task_history("u", "idle") == []
    assert first in partitions(conn)


def test_retention_beside_sixteen_writers_loses_no_acknowledged_save(short, db_url):
    conn = short("2 seconds", ahead=2)
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history_many([("u", f"old-{i}", 0, step("plan")) for i in range(40)])
        first = partition_of(conn, "old-0")
        wait_for_next_period(conn)
        wait_for_next_period(conn)
        time.sleep(0.6)
        stop, cleaning = threading.Event(), threading.Event()
        acknowledged: list[tuple[str, str, int]] = []
        failures: list[Exception] = []
        began = [0.0]

        def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                # Mostly new tasks; now and then a step of an old task, which may land in
                # its period before it is dropped, or after (then the task is created anew).
                # (Each writer starts later than the one before: some reach the old period
                # before the cleanup looks at it, some while it is detached, some after.)
                late = cleaning.is_set() and time.monotonic() - began[0] > n * 0.01
                key = (("u", f"old-{(n * 7 + i) % 40}", 1 + i)
                       if i % 10 == 9 and late else ("w", f"w{n}-{i}", 0))
                try:
                    db.save_task_history(*key, step("call"))
                except Exception as exc:
                    failures.append(exc)
                else:
                    acknowledged.append(key)
                i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.3)
            began[0] = time.monotonic()
            cleaning.set()
            db.cleanup_old_tasks(2.5 / 86_400)
            took = time.monotonic() - began[0]
            time.sleep(0.3)
        finally:  # a failed cleanup fails the test: the writers stop all the same
            stop.set()
            for thread in threads:
                thread.join(30)
    assert not failures, failures[:3]
    stored = set(conn.execute("SELECT user_id, task_id, step FROM task_history").fetchall())
    assert set(acknowledged) <= stored
    assert len(acknowledged) > 100
    assert took < 10, took  # waits for locks are bounded (lock_timeout), no queue behind them
    revived = {k[1] for k in acknowledged if k[0] == "u"}
    gone = {f"old-{i}" for i in range(40)} - revived
    left = {r[0] for r in conn.execute("SELECT task_id FROM tasks WHERE user_id = 'u'")}
    assert not gone & left  # every old task never saved again was deleted
    # The first period went whole, or stayed because a save reached one of its tasks first.
    assert first not in partitions(conn) or revived


#: Logs the backend that runs each detach and each drop of a table (an event trigger's).
DDL_LOG = """
CREATE TABLE ddl_log (pid int, tag text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO ddl_log (pid, tag) VALUES (pg_backend_pid(), tg_tag); END $$;
CREATE EVENT TRIGGER log_detach ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
  EXECUTE FUNCTION log_ddl();
CREATE EVENT TRIGGER log_drop ON sql_drop WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION log_ddl();
"""


@pytest.mark.parametrize("pool_size", [1, 4])
@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
def test_a_periods_tables_drop_beside_the_deletion_of_its_tasks(short, db_url, pool_size,
                                                                blocking):
    """With a second connection in the pool, a dropped period's tables go on it while its
    tasks are deleted on the cleanup's; with one connection, on that one, first. Either way the
    tasks, steps, events and tables are gone and their bytes counted."""
    import asyncio

    from aiecs_persistence import DatabaseManager

    conn = short("2 seconds", ahead=2)
    conn.execute(DDL_LOG)
    settings = {"url": db_url, "pool_size": pool_size, "max_overflow": 0}
    with SyncDatabaseManager(**settings) as db:
        for t in range(30):
            db.save_task_history("u", f"old-{t}", 0, step("plan"))
    tables = {partition_of(conn, f"old-{t}") for t in range(30)}
    tables |= {table.replace("task_history", "task_events", 1) for table in tables}
    wait_for_next_period(conn)
    wait_for_next_period(conn)
    time.sleep(0.6)  # the period ended more than 2.5 s ago
    if blocking:
        with SyncDatabaseManager(**settings) as db:
            assert db.cleanup_old_tasks(2.5 / 86_400) == 30
            summary = db.last_cleanup
    else:
        async def cleanup() -> Any:
            async with DatabaseManager(**settings) as db:
                assert await db.cleanup_old_tasks(2.5 / 86_400) == 30
                return db.last_cleanup

        summary = asyncio.run(cleanup())
    assert summary.partitions_dropped >= 2 and summary.bytes_freed > 0
    left = conn.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_history),"
                        " (SELECT count(*) FROM task_events)").fetchone()
    assert left == (0, 0, 0)
    for table in tables:
        assert conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,)
    # Each drop against the backend of the last ALTER TABLE before it: its period's detach.
    pairs, altered = [], None
    for pid, tag in conn.execute("SELECT pid, tag FROM ddl_log ORDER BY at").fetchall():
        if tag == "ALTER TABLE":
            altered = pid
        else:
            pairs.append((altered, pid))
    assert len(pairs) == summary.partitions_dropped
    if pool_size == 1:
        assert all(detached == dropped for detached, dropped in pairs), pairs
    else:
        assert all(detached != dropped for detached, dropped in pairs), pairs


def test_a_period_written_since_the_cleanup_began_is_kept_after_its_detach(short, db_url):
    """The periods are picked by activity alone; a step committed after the cleanup began, by
    a transaction older than the cutoff, is found by the check after the detach, which keeps
    the period."""
    from psycopg.rows import namedtuple_row

    from aiecs_persistence.statements import cleanup
    from aiecs_persistence.statements import partitions as statements

    conn = short("2 seconds", ahead=2)
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("u", "a", 0, step("plan"))
    writer = psycopg.connect(conninfo(db_url))  # a transaction begun in the task's period
    writer.execute("INSERT INTO task_history (user_id, task_id, step, step_name, status, "
                   "completed, bucket) "
                   "SELECT user_id, task_id, 1, 'late', 'completed', true, bucket FROM tasks")
    wait_for_next_period(conn)
    wait_for_next_period(conn)
    time.sleep(0.6)  # the period ended more than 2.5 s ago
    reads = psycopg.connect(conninfo(db_url), autocommit=True, row_factory=namedtuple_row)
    start = reads.execute(cleanup.CLEANUP_START, {}).fetchone()  # the writer still running
    writer.commit()
    job = cleanup.Cleanup.starting(2.5 / 86_400, 100, start, cleanup.BY_HORIZON)
    found = [p for p in reads.execute(statements.DROPPABLE, job.params).fetchall()
             if partition_of(conn, "a") in p.partitions]
    assert len(found) == 1  # its activity is older than the cutoff
    still = reads.execute(statements.STILL_INACTIVE, statements.period(job.params, found[0]))
    assert still.fetchone().inactive is False
    reads.close()
    writer.close()


def triggers_off_allowed(conn: psycopg.Connection) -> bool:
    from aiecs_persistence.statements.partitions import TRIGGERS_OFF_ALLOWED

    (allowed,) = conn.execute(TRIGGERS_OFF_ALLOWED).fetchone()
    return bool(allowed)


def batch_replication_role(conn: psycopg.Connection) -> str:
    """The ``session_replication_role`` a batch of a period's tasks runs under (each batch asks
    whether it may turn the triggers off)."""
    from aiecs_persistence.statements.partitions import LOCK_TASKS, TRIGGERS_OFF

    with conn.transaction():
        conn.execute(LOCK_TASKS)
        conn.execute(TRIGGERS_OFF)
        (role,) = conn.execute("SELECT current_setting('session_replication_role')").fetchone()
    return str(role)


def test_a_periods_tasks_go_without_triggers_only_when_nothing_else_fires(short, db_url):
    """A superuser's drop deletes a period's tasks with the triggers off (their steps and
    events went with the partitions); a trigger of the user's own on deleting a task keeps
    them on, and fires for each task the drop deletes."""
    conn = short("2 seconds", ahead=1)
    assert triggers_off_allowed(conn)  # the suite runs as a superuser
    assert batch_replication_role(conn) == "replica"
    conn.execute("CREATE TABLE gone_tasks (task_id text)")
    conn.execute("CREATE FUNCTION log_gone() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$BEGIN INSERT INTO gone_tasks VALUES (OLD.task_id); RETURN NULL; END$$")
    conn.execute("CREATE TRIGGER log_gone AFTER DELETE ON tasks FOR EACH ROW "
                 "EXECUTE FUNCTION log_gone()")
    assert not triggers_off_allowed(conn)
    assert batch_replication_role(conn) == "origin"  # a trigger added since an earlier batch
    conn.execute("ALTER TABLE tasks DISABLE TRIGGER log_gone")
    assert triggers_off_allowed(conn)  # a disabled trigger fires in neither case
    conn.execute("ALTER TABLE tasks ENABLE REPLICA TRIGGER log_gone")
    assert not triggers_off_allowed(conn)  # it would fire with the triggers "off"
    conn.execute("ALTER TABLE tasks ENABLE TRIGGER log_gone")
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history_many([("u", f"t{i}", s, step(f"s{s}"))
                                   for i in range(30) for s in range(3)])
        first = partition_of(conn, "t0")
        wait_for_next_period(conn)
        wait_for_next_period(conn)
        time.sleep(0.6)
        assert db.cleanup_old_tasks(2.5 / 86_400) == 30
        assert db.last_cleanup.partitions_dropped == 2
    assert first not in partitions(conn)
    logged = {r[0] for r in conn.execute("SELECT task_id FROM gone_tasks")}
    assert logged == {f"t{i}" for i in range(30)}
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_the_operators_commands(short, db_url):
    """`partitions` lists them with their sizes and what retention may drop, `cleanup` says
    what whole partitions it dropped, `check` notices missing coming partitions and
    `maintain` creates them."""
    from typer.testing import CliRunner

    from aiecs_persistence.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    url = db_url.render_as_string(hide_password=False)
    conn = short("2 seconds", ahead=1)
    wait_for_next_period(conn)  # a whole period ahead: the tasks' period is still open below
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history_many([("u", f"t{i}", 0, step("plan")) for i in range(20)])
    listed = runner.invoke(app, ["partitions", "--json", "--older-than", "0d", "--url", url])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["partitions"]
    assert {r["table"] for r in rows} == {"task_history", "task_events"}
    assert all(r["bytes"] > 0 and r["partition"].startswith(r["table"] + "_p") for r in rows)
    theirs = {r[0] for r in conn.execute(
        "SELECT b.partition FROM aiecs_partition_bounds() b, tasks t WHERE t.task_id = 't0' "
        "AND b.lower <= t.bucket AND b.upper > t.bucket").fetchall()}
    assert len(theirs) == 2  # the period of the tasks: its steps' and its events' partitions
    # (A period that ended meanwhile with no task in it may be droppable already.)
    assert not any(r["droppable"] for r in rows if r["partition"] in theirs)
    wait_for_next_period(conn)
    wait_for_next_period(conn)
    time.sleep(0.6)
    listed = json.loads(runner.invoke(
        app, ["partitions", "--json", "--older-than", "0d", "--url", url]).stdout)
    droppable = {r["partition"] for r in listed["partitions"] if r["droppable"]}
    assert theirs <= droppable  # their period ended, and none of its tasks was active since
    # The clock went past the partitions made ahead: check says so, maintain mends it.
    checked = runner.invoke(app, ["check", "--json", "--url", url])
    assert checked.exit_code != 0 and json.loads(checked.stdout)["missing_partitions"] > 0
    made = runner.invoke(app, ["maintain", "--json", "--url", url])
    assert made.exit_code == 0 and json.loads(made.stdout)["created"] > 0
    assert runner.invoke(app, ["check", "--url", url]).exit_code == 0
    done = runner.invoke(app, ["cleanup", "--older-than", "0.0007h", "--yes", "--json",
                               "--url", url])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["tasks"] == 20 and summary["partitions_dropped"] >= 2
    assert summary["bytes_freed"] > 0


def test_the_event_log_goes_sooner_and_an_expired_token_is_refused(short, db_url):
    conn = short("2 seconds", ahead=1)
    conn.execute("UPDATE aiecs_partitioning SET events_kept = '2 seconds'")
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("u", "old", 0, step("plan", TaskStatus.RUNNING))
        db.save_task_history("u", "old", 1, step("call"))
        db.finish_task("u", "old", TaskStatus.COMPLETED)
        task_tokens = [e["token"] for e in db.watch_task_history("u", "old")]
        user_watch = db.watch_user_tasks("u", poll_interval=0.1)
        user_token = next(user_watch)["token"]
        user_watch.close()
        old_events = partition_of(conn, "old").replace("task_history", "task_events", 1)
        wait_for_next_period(conn)
        wait_for_next_period(conn)  # the old period ended 2 s ago, its task inactive since
        db.save_task_history("u", "new", 0, step("plan", TaskStatus.RUNNING))
        db.finish_task("u", "new", TaskStatus.COMPLETED)
        new_token = [e["token"] for e in db.watch_task_history("u", "new")][-1]

        assert db.cleanup_old_tasks(1) == 0  # the history is kept a day ...
        assert db.last_cleanup.partitions_dropped >= 1  # ... its events two seconds
        assert db.last_cleanup.bytes_freed > 0
        assert old_events not in partitions(conn, "task_events")
        assert [e["step"] for e in db.load_task_history("u", "old")] == [0, 1]

        # A position from before the drop, and the old task's watch from its start, are told to
        # reload; so is a user's watch resumed from before it. Nothing is silently skipped.
        for watch in (lambda: db.watch_task_history("u", "old", after=task_tokens[0]),
                      lambda: db.watch_task_history("u", "old"),
                      lambda: db.watch_user_tasks("u", after=user_token, poll_interval=0.1)):
            with pytest.raises(WatchExpiredError) as caught:
                next(iter(watch()))
            assert caught.value.field == "after" and caught.value.code.value == "E001"
            assert "reload" in caught.value.message
        # Positions past the dropped events go on: the new task's, a user's watch begun now.
        assert list(db.watch_task_history("u", "new", after=new_token)) == []
        fresh = db.watch_user_tasks("u", poll_interval=0.1)
        first = next(fresh)
        fresh.close()
        assert first["task_id"] == "new"
        again = db.watch_user_tasks("u", after=first["token"], poll_interval=0.1)
        db.save_task_history("u", "third", 0, step("plan"))
        followed = [next(again)["task_id"] for _ in range(2)]
        again.close()
        assert followed == ["new", "third"]  # the rest of the new task's, then the next

        # The old task saved again: its period gets a new, empty event partition, and a watch
        # from a token taken after that follows it.
        db.save_task_history("u", "old", 2, step("report"))
        assert [e["step"] for e in db.load_task_history("u", "old")] == [0, 1, 2]
        events = conn.execute(
            "SELECT count(*) FROM task_events WHERE task_id = 'old'").fetchone()
        assert events == (1,)


def partitions_read(conn: psycopg.Connection, statement: Any) -> set[str]:
    """The history partitions ``statement`` read: those its plan ran (EXPLAIN ANALYZE; a
    partition pruned as the statement started is not in the plan, one pruned while it ran
    shows as never executed)."""
    plan = [r[0] for r in conn.execute(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + statement.sql,
        statement.params).fetchall()]
    return {word for line in plan if "never executed" not in line
            for word in line.split() if re.fullmatch(r"task_history_p\d{8}(_\d{6})?", word)}


def test_reads_touch_only_the_partitions_they_need(short, db_url):
    from aiecs_persistence.statements import reads
    from aiecs_persistence.statements import report as reporting

    conn = short("2 seconds", ahead=1)
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("u", "raw", 0, step("plan", TaskStatus.RUNNING))
        first = partition_of(conn, "raw")
        wait_for_next_period(conn)
        for task in ("idle", "long"):
            db.save_task_history("u", task, 0, step("plan", TaskStatus.RUNNING))
        db.finish_task("u", "idle", TaskStatus.CANCELLED)
        second = partition_of(conn, "idle")
        wait_for_next_period(conn)
        wait_for_next_period(conn)
        (since,) = conn.execute("SELECT now()").fetchone()
        # Steps written now into tasks of earlier periods: by a save, and by hand in psql (the
        # oldest: it is what reaches back to the first period).
        db.save_task_history("u", "long", 1, step("call", TaskStatus.RUNNING))
        conn.execute(
            "INSERT INTO task_history (user_id, task_id, step, step_name, status, bucket) "
            "SELECT user_id, task_id, 1, 'by hand', 'running', bucket FROM tasks "
            "WHERE task_id = 'raw'")
        db.save_task_history("u", "new", 0, step("plan"))
        current = partition_of(conn, "new")

        # A task's load reads its own partition only, the others pruned before they are
        # opened (none in the plan, not even as never executed); on Citus's form too.
        for form in (reads.LOAD_HISTORY, reads.LOAD_HISTORY_CLUSTER):
            assert partitions_read(conn, reads.load_history("u", "idle", form)) == {second}
            assert partitions_read(conn, reads.load_history("u", "new", form)) == {current}
        load = reads.load_history("u", "idle")
        plan = " ".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + load.sql, load.params).fetchall())
        assert "never executed" not in plan and "Subplans Removed" in plan
        assert len(db.load_task_history("u", "idle")) == 1
        assert db.load_task_history("u", "nobody") == []

        # A report since the tasks of the earlier periods came back reads from the first on, and
        # counts exactly what a scan of every partition counts.
        report = db.report(since=since)
        (scanned,) = conn.execute(
            "SELECT count(*) FROM task_history WHERE created_at >= %s", [since]).fetchone()
        assert report["totals"]["steps"] == scanned == 3
        assert {first, second, current} <= partitions_read(conn, reporting.report(since))

        # Once they are quiet, a report of the latest period reads its partition alone.
        db.finish_task("u", "long", TaskStatus.COMPLETED)
        db.finish_task("u", "raw", TaskStatus.COMPLETED)
        wait_for_next_period(conn)
        (since,) = conn.execute("SELECT now()").fetchone()
        db.save_task_history("u", "latest", 0, step("plan"))
        assert db.report(since=since)["totals"]["steps"] == 1
        assert partitions_read(conn, reporting.report(since)) == {partition_of(conn, "latest")}
        # And so does a listing of the steps written since.
        assert [s.task_id for s in db.list_steps("u", since=since).items] == ["latest"]
        assert partitions_read(conn, reads.list_steps("u", since=since)) == {
            partition_of(conn, "latest")}


def failed(name: str, code: str = "E003") -> TaskStepResult:
    return TaskStepResult(step=name, result=None, completed=False, message="",
                          status=TaskStatus.FAILED.value, error_code=code,
                          error_message=f"{name} failed")


def test_a_report_adds_up_summaries_of_closed_periods_exactly(short, db_url):
    from psycopg.rows import namedtuple_row

    from aiecs_persistence.statements import report as reporting
    from aiecs_persistence.statements.rows import report_data

    def scanned(**window: Any) -> dict[str, Any]:
        """The report as a scan of every partition computes it (the form with no summaries)."""
        statement = reporting.report(**window, form=reporting.REPORT_CLUSTER)
        with conn.cursor(row_factory=namedtuple_row) as cur:
            return report_data(cur.execute(statement.sql, statement.params).fetchall())

    conn = short("2 seconds", ahead=1)
    with SyncDatabaseManager(url=db_url) as db:
        for i in range(6):  # the first period: steps, failures of two codes, two step names
            db.save_task_history("u", f"a{i}", 0, step("plan", TaskStatus.RUNNING))
            db.save_task_history("u", f"a{i}", 1, failed("call", "E003" if i % 2 else "E005")
                                 if i % 3 else step("call"))
        first = partition_of(conn, "a0")
        wait_for_next_period(conn)
        for i in range(4):  # the second
            db.save_task_history("v", f"b{i}", 0, failed("plan", "E003"))
        wait_for_next_period(conn)
        wait_for_next_period(conn)  # both ended, their tasks quiet for a period since
        (since,) = conn.execute("SELECT now()").fetchone()
        db.save_task_history("u", "c", 0, step("plan"))  # the open period
        current = partition_of(conn, "c")

        before = db.report()
        assert before == scanned() and before["totals"]["steps"] == 17
        db.cleanup_old_tasks(1)  # deletes nothing (a day), summarizes the closed periods
        made = conn.execute("SELECT partition FROM aiecs_period_summaries "
                            "WHERE writes_seen = writes AND figures IS NOT NULL").fetchall()
        assert {first, partition_of(conn, "b0")} <= {r[0] for r in made}

        # The whole history: the closed periods from their summaries, the open one read.
        assert db.report() == scanned() == before
        assert db.report(top=1) == scanned(top=1)
        assert partitions_read(conn, reporting.report()) == {current}
        # A window that cuts no summarized period in two is answered the same way; one that
        # holds none of their steps skips them.
        assert db.report(since=since) == scanned(since=since)
        assert partitions_read(conn, reporting.report(since)) == {current}

        # A step written to a task of a summarized period: its partition is read again, and
        # the figures stay exact, until the next summary.
        db.save_task_history("u", "a0", 2, failed("retry", "E005"))
        assert db.report() == scanned() != before
        assert first in partitions_read(conn, reporting.report())
        assert conn.execute("SELECT count(*) FROM aiecs_period_summaries "
                            "WHERE partition = %s AND writes_seen = writes",
                            [first]).fetchone() == (0,)

        # The count moves once a transaction, however many rows it writes to the partition
        # (not once a row: the one summary row updated for each would cost the square of
        # their number), and not at all for a transaction rolled back.
        def writes() -> int:
            return int(conn.execute("SELECT writes FROM aiecs_period_summaries "
                                    "WHERE partition = %s", [first]).fetchone()[0])

        counted = writes()
        with conn.transaction():
            updated = conn.execute("UPDATE task_history SET message = 'again' "
                                   "WHERE user_id = 'u' AND task_id LIKE 'a%'").rowcount
            conn.execute("DELETE FROM task_history WHERE user_id = 'u' AND task_id = 'a5' "
                         "AND step = 1")
        assert updated == 13 and writes() == counted + 1
        with conn.transaction():
            conn.execute("UPDATE task_history SET message = 'lost' WHERE task_id = 'a1'")
            raise psycopg.Rollback()
        assert writes() == counted + 1
        assert db.report() == scanned()
