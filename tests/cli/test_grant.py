"""`aiecs-db grant`: each role can do exactly what it should and no more."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from psycopg import errors
from typer.testing import CliRunner

from aiecs_persistence import SyncDatabaseManager, TaskStepResult, migrate
from aiecs_persistence.cli import app
from aiecs_persistence.errors import PermissionDeniedError

from ..conftest import conninfo

runner = CliRunner(env={"COLUMNS": "200"})
PASSWORD = "role-test-pw"


@pytest.fixture
def roles(db_url):
    """Group roles set up by `aiecs-db grant`, and one login role in each; dropped after."""
    suffix = uuid.uuid4().hex[:8]
    groups = {kind: f"aiecs_{kind}_{suffix}" for kind in ("owner", "writer", "reader")}
    logins = {kind: f"login_{kind}_{suffix}" for kind in groups}
    url = db_url.render_as_string(hide_password=False)
    result = runner.invoke(app, ["grant", "--url", url, "--owner", groups["owner"],
                                 "--writer", groups["writer"], "--reader", groups["reader"]])
    assert result.exit_code == 0, result.output
    # Re-running is harmless (it is meant to be run after every upgrade).
    assert runner.invoke(app, ["grant", "--url", url, "--owner", groups["owner"], "--writer",
                               groups["writer"], "--reader", groups["reader"]]).exit_code == 0
    admin = psycopg.connect(conninfo(db_url), autocommit=True)
    for kind, login in logins.items():
        admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{PASSWORD}' IN ROLE {groups[kind]}")
    try:
        yield {kind: db_url.set(username=login, password=PASSWORD)
               for kind, login in logins.items()}
    finally:
        everyone = ", ".join([*logins.values(), *groups.values()])
        admin.execute(f"REASSIGN OWNED BY {groups['owner']} TO CURRENT_USER")
        admin.execute(f"DROP OWNED BY {everyone}")
        admin.execute(f"DROP ROLE {everyone}")
        admin.close()


def denied(url, statement: str) -> bool:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        try:
            conn.execute(statement)
        except errors.InsufficientPrivilege:
            return True
    return False


def test_reader_sees_the_views_and_nothing_else(roles):
    """... and the tables the views read: they run as their caller (row-level security)."""
    with psycopg.connect(conninfo(roles["reader"]), autocommit=True) as conn:
        for view in ("step_details", "task_summary", "failures_by_day", "tasks",
                     "task_history", "error_codes"):
            conn.execute(f"SELECT count(*) FROM {view}").fetchone()
    for table in ("task_events", "aiecs_watched", "aiecs_scopes",
                  "legacy_task_history_rejects"):
        assert denied(roles["reader"], f"SELECT * FROM {table}"), table
    assert denied(roles["reader"], "INSERT INTO tasks (user_id, task_id) VALUES ('u', 't')")
    assert denied(roles["reader"], "UPDATE task_history SET message = 'x'")
    assert denied(roles["reader"], "CREATE TABLE mine (x int)")


def test_reader_runs_the_report(roles):
    """What docs/scaling.md suggests for a read replica: the reader role runs `report`."""
    url = roles["reader"].render_as_string(hide_password=False)
    done = runner.invoke(app, ["report", "--json", "--url", url])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["totals"]["steps"] == 0


def test_temporary_tables_as_the_roles_table_says(roles, db_url):
    """Every role may create temporary tables, as PostgreSQL grants PUBLIC by default; revoked
    from PUBLIC, the reader cannot, and the writer keeps what the bulk path needs."""
    def temp_table(url):
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            try:
                conn.execute("CREATE TEMP TABLE scratch (x int)")
            except errors.InsufficientPrivilege:
                return False
        return True

    assert temp_table(roles["reader"])
    database = db_url.database
    with psycopg.connect(conninfo(db_url), autocommit=True) as admin:
        admin.execute(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
    assert not temp_table(roles["reader"])
    assert temp_table(roles["writer"])
    with SyncDatabaseManager(url=roles["writer"]) as db:
        assert db.save_task_history_many([("u", "t", 0, TaskStepResult(
            "parse", 2, True, "", "completed"))] * 3) == 3


def test_writer_runs_the_managers_but_cannot_change_the_schema(roles):
    with SyncDatabaseManager(url=roles["writer"]) as db:
        db.save_task_history("u", "t", 0, TaskStepResult("fetch", 1, True, "", "completed"))
        assert db.save_task_history_many([("u", "t", 1, TaskStepResult(
            "parse", 2, True, "", "completed"))]) == 1
        db.finish_task("u", "t", "completed")
        assert [e["step"] for e in db.load_task_history("u", "t")] == [0, 1]
        assert db.report()["totals"]["steps"] == 2
        assert db.cleanup_old_tasks(0) == 1
    for statement in ("DROP TABLE task_history", "ALTER TABLE tasks ADD COLUMN x int",
                      "ALTER TYPE task_status ADD VALUE 'paused'", "DROP VIEW step_details",
                      "TRUNCATE tasks", "CREATE TABLE mine (x int)",
                      "UPDATE error_codes SET description = 'x'",
                      "DELETE FROM aiecs_alembic_version"):
        assert denied(roles["writer"], statement), statement
    with pytest.raises(PermissionDeniedError):
        migrate.downgrade(roles["writer"], "base")


def test_the_reader_still_reports_after_the_upgrade_to_row_security(roles, db_url):
    """A reader granted the views before they ran as their caller is granted the tables
    behind them by that revision."""
    reader = roles["reader"].username
    with psycopg.connect(conninfo(db_url), autocommit=True) as admin:
        group = admin.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = %s", [reader]).fetchone()[0]
        migrate.downgrade(db_url, "0012_partition_costs")
        admin.execute(f"REVOKE SELECT ON tasks, task_history, error_codes FROM {group}")
        migrate.upgrade(db_url)
    done = runner.invoke(app, ["report", "--json", "--url",
                               roles["reader"].render_as_string(hide_password=False)])
    assert done.exit_code == 0, done.output


def test_owner_migrates(roles):
    migrate.downgrade(roles["owner"], "base")
    assert migrate.current(roles["owner"]) is None
    migrate.upgrade(roles["owner"])
    assert migrate.check(roles["owner"]).ok


def test_grant_before_upgrade_and_bad_role_names(empty_db_url):
    url = empty_db_url.render_as_string(hide_password=False)
    early = runner.invoke(app, ["grant", "--url", url])
    assert early.exit_code == 4 and "aiecs-db upgrade" in early.output
    bad = runner.invoke(app, ["grant", "--url", url, "--writer", 'x"; DROP TABLE tasks; --'])
    assert bad.exit_code == 4 and "writer role" in bad.output
    printed = runner.invoke(app, ["grant", "--print", "--url", url.replace("+psycopg", "")])
    assert printed.exit_code == 4


STEP = TaskStepResult(step="a", result=None, completed=True, message="", status="completed")


def one_second_periods(db_url, events_kept: str = "7 days") -> None:
    """The test database's partitions a second wide, none made ahead."""
    with psycopg.connect(conninfo(db_url), autocommit=True) as admin:
        for (name,) in admin.execute("SELECT partition FROM aiecs_partition_bounds()").fetchall():
            admin.execute(f'DROP TABLE "{name}"')
        admin.execute("UPDATE aiecs_partitioning SET ahead = 0, events_kept = %s::interval",
                      [events_kept])
        admin.execute("SELECT aiecs_set_partition_width('1 second')")


def test_the_owner_drops_periods_with_the_triggers_on_unless_granted_otherwise(roles, db_url):
    """The owner (no superuser) drops whole periods, and deletes their tasks with the foreign
    key's cascade (which has nothing left to delete); granted ``SET`` on
    ``session_replication_role``, with the triggers off (docs/operations.md)."""
    from aiecs_persistence.statements.partitions import TRIGGERS_OFF_ALLOWED

    one_second_periods(db_url)
    owner = roles["owner"].username
    with psycopg.connect(conninfo(db_url), autocommit=True) as admin:
        (group,) = admin.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = %s", [owner]).fetchone()
        for granted in (False, True):
            if granted:
                admin.execute(f"GRANT SET ON PARAMETER session_replication_role TO {group}")
            with psycopg.connect(conninfo(roles["owner"]), autocommit=True) as conn:
                assert conn.execute(TRIGGERS_OFF_ALLOWED).fetchone() == (granted,)
            keys = [("u", f"{granted}-{i}") for i in range(5)]
            with SyncDatabaseManager(url=roles["owner"]) as db:
                db.save_task_history_many([(*key, 0, STEP) for key in keys])
                time.sleep(2.5)
                assert db.cleanup_old_tasks(1 / 86_400) == 5
                # Its period's partitions of steps and events (and empty periods' since).
                assert db.last_cleanup.partitions_dropped >= 2
            left = admin.execute(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_history), "
                "(SELECT count(*) FROM task_events)").fetchone()
            assert left == (0, 0, 0)


def test_a_writer_saves_past_the_last_partition_made(roles, db_url):
    """Row security hides the failing row's bucket from PostgreSQL's message to a role it
    applies to: a save (alone, and in bulk) into a period with no partition yet still creates
    the partitions due and is saved."""
    one_second_periods(db_url)
    with SyncDatabaseManager(url=roles["writer"]) as db:
        db.save_task_history("u", "early", 0, STEP)
        time.sleep(2.2)  # past the period of every partition made so far
        assert db.save_task_history("u", "late", 0, STEP) is True
        time.sleep(1.1)
        assert db.save_task_history_many([("u", "bulk", 0, STEP)]) == 1
        assert [e["step"] for e in db.load_task_history("u", "late")] == [0]
        assert [e["step"] for e in db.load_task_history("u", "bulk")] == [0]


def test_the_writer_cleans_up_row_by_row(roles, db_url):
    """Detaching partitions takes ownership of the tables: a cleanup by the writer role goes
    row by row and keeps the expired event log (and raises no privilege error), where the
    owner's drops whole partitions."""
    # Its event log expired too: the writer may not drop that either, and says nothing.
    one_second_periods(db_url, events_kept="1 second")
    with SyncDatabaseManager(url=roles["writer"]) as db:
        db.save_task_history("u", "t", 0, STEP)  # its partition made by the writer's save
        time.sleep(2.5)
        assert db.cleanup_old_tasks(1 / 86_400) == 1
        assert db.last_cleanup.partitions_dropped == 0
        assert db.load_task_history("u", "t") == []
