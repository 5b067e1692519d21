"""aiecs-db through its real entry points, against real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from typer.testing import CliRunner

from aiecs_persistence import SyncDatabaseManager, TaskStepResult, migrate
from aiecs_persistence.cli import app
from aiecs_persistence.config import libpq_conninfo

from ..conftest import conninfo, interruptible

runner = CliRunner(env={"COLUMNS": "200"})


def url_of(db_url) -> str:
    return db_url.render_as_string(hide_password=False)


@pytest.fixture
def seeded(db_url):
    with SyncDatabaseManager(url=db_url) as db:
        db.save_task_history("alice", "t1", 0, TaskStepResult("fetch", 1, True, "", "completed"))
        db.save_task_history("alice", "t1", 1, TaskStepResult(
            "parse", None, False, "bad", "failed", "E003", "parse crashed"))
        db.finish_task("alice", "t1", "failed", "E003", "parse crashed")
        db.save_task_history("alice", "t2", 0, TaskStepResult("fetch", 2, True, "", "completed"))
    return url_of(db_url)


def test_tasks_table_and_json_agree(seeded):
    human = runner.invoke(app, ["tasks", "alice", "--url", seeded])
    assert human.exit_code == 0, human.output
    assert "t1" in human.output and "failed" in human.output and "E003" in human.output
    machine = runner.invoke(app, ["tasks", "alice", "--url", seeded, "--json"])
    rows = json.loads(machine.output)
    assert [(r["task_id"], r["status"], r["error_code"]) for r in rows] == [
        ("t2", "running", None), ("t1", "failed", "E003")]
    only = json.loads(runner.invoke(app, ["tasks", "alice", "--status", "failed", "--json",
                                          "--url", seeded]).output)
    assert [r["task_id"] for r in only] == ["t1"]


def test_history_shows_error_meaning(seeded):
    result = runner.invoke(app, ["history", "alice", "t1", "--url", seeded])
    assert result.exit_code == 0, result.output
    assert "Execution error" in result.output and "parse crashed" in result.output
    data = json.loads(runner.invoke(app, ["history", "alice", "t1", "--json", "--url",
                                          seeded]).output)
    assert [e["step"] for e in data] == [0, 1]


def test_cleanup_dry_run_then_for_real(seeded, db_url):
    with psycopg.connect(conninfo(db_url), autocommit=True) as conn:
        conn.execute("UPDATE tasks SET updated_at = now() - interval '40 days' "
                     "WHERE task_id = 't1'")
    dry = json.loads(runner.invoke(app, ["cleanup", "--older-than", "30d", "--dry-run",
                                         "--json", "--url", seeded]).output)
    assert dry == {"tasks": 1, "dry_run": True, "older_than_days": 30.0,
                   "partitions_dropped": 0, "bytes_freed": 0}
    refused = runner.invoke(app, ["cleanup", "--older-than", "4w", "--url", seeded])
    assert refused.exit_code == 4 and "without --yes" in refused.output
    real = runner.invoke(app, ["cleanup", "--older-than", "4w", "--yes", "--url", seeded])
    assert real.exit_code == 0 and "deleted 1 task(s)" in real.output
    bad = runner.invoke(app, ["cleanup", "--older-than", "soon", "--url", seeded])
    assert bad.exit_code == 2


def test_migration_commands(empty_db_url):
    url = url_of(empty_db_url)
    check = runner.invoke(app, ["check", "--url", url, "--json"])
    assert check.exit_code == 1 and json.loads(check.output)["ok"] is False
    assert runner.invoke(app, ["upgrade", "--url", url]).exit_code == 0
    check = runner.invoke(app, ["check", "--url", url])
    assert check.exit_code == 0 and "at head" in check.output
    current = json.loads(runner.invoke(app, ["current", "--url", url, "--json"]).output)
    assert current["at_head"] is True
    assert runner.invoke(app, ["downgrade", "base", "--yes", "--url", url]).exit_code == 0
    sql = runner.invoke(app, ["sql"])
    assert sql.exit_code == 0 and "CREATE TABLE task_history" in sql.output


def test_entry_point_errors_are_one_line_without_password():
    env = {k: v for k, v in os.environ.items() if k != "AIECS_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "aiecs_persistence", "current", "--url",
         "postgresql://bob:hunter2@127.0.0.1:1/db"],
        capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 3
    assert "hunter2" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error [E")
    bad = subprocess.run([sys.executable, "-m", "aiecs_persistence", "current", "--url",
                          "mysql://x@y/z"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 4 and "unsupported scheme" in bad.stderr


@pytest.mark.parametrize("command", [
    ["tasks", "alice"], ["history", "alice", "t1"], ["report"], ["cleanup", "--dry-run"],
    ["grant"],
])
def test_a_database_not_at_head_is_one_clear_line(empty_db_url, command):
    result = runner.invoke(app, [*command, "--url", url_of(empty_db_url)])
    assert result.exit_code == 4, result.output  # docs/operations.md: not migrated yet
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error [E0"), result.stderr
    assert "aiecs-db upgrade" in lines[0]


@pytest.mark.parametrize("command", [
    ["tasks", "alice"], ["history", "alice", "t1"], ["report"], ["cleanup"], ["grant"],
    ["upgrade"], ["downgrade", "base", "--yes"], ["stamp", "head"], ["current"], ["check"],
    ["revisions"], ["demo"], ["import-legacy", "--from-jsonl", "/dev/null"],
])
def test_an_unreachable_server_is_one_line_without_password(command):
    result = runner.invoke(app, [*command, "--url", "postgresql://bob:hunter2@127.0.0.1:1/db"])
    assert result.exit_code == 3, result.output
    assert "hunter2" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error [E0"), result.stderr


def test_version():
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output.startswith("aiecs-db (aiecs-persistence) ")


def test_piping_into_head_is_not_a_failure(db_url, psql):
    psql.execute("INSERT INTO tasks (user_id, task_id) "
                 "SELECT 'bulk', 'task-' || g FROM generate_series(1, 5000) g")
    url = url_of(db_url)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f'"{sys.executable}" -m aiecs_persistence tasks bulk --limit 5000 --json '
         f'--url "{url}" | head -c 100 > /dev/null'],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr


def contents(url):
    with psycopg.connect(libpq_conninfo(url)) as conn:
        return [conn.execute(q).fetchall() for q in (
            "SELECT * FROM tasks ORDER BY 1, 2", "SELECT * FROM task_history ORDER BY 1, 2, 3",
            "SELECT version_num FROM aiecs_alembic_version")]


def test_destructive_commands_refuse_without_a_terminal_or_yes(seeded):
    """No terminal (as here) and no --yes: refuse, say what would be destroyed, change
    nothing. With --yes: act."""
    before = contents(seeded)
    down = runner.invoke(app, ["downgrade", "base", "--url", seeded])
    assert down.exit_code == 4 and "without --yes" in down.output
    assert "tasks 2" in down.output and "task_history 3" in down.output
    clean = runner.invoke(app, ["cleanup", "--older-than", "0h", "--url", seeded])
    assert clean.exit_code == 4 and "delete 2 task(s)" in clean.output
    assert contents(seeded) == before
    assert runner.invoke(app, ["downgrade", "base", "--yes", "--url", seeded]).exit_code == 0
    with psycopg.connect(libpq_conninfo(seeded)) as conn:
        assert conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,)


def test_demo_on_a_server_asks_before_dropping_an_existing_demo_database(pg):
    server = pg.admin_url.render_as_string(hide_password=False)
    with psycopg.connect(conninfo(pg.admin_url), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS aiecs_demo WITH (FORCE)")
        conn.execute("CREATE DATABASE aiecs_demo")
    try:
        with psycopg.connect(conninfo(pg.admin_url.set(database="aiecs_demo")),
                             autocommit=True) as conn:
            conn.execute("CREATE TABLE precious (x int)")
        refused = runner.invoke(app, ["demo", "--url", server])
        assert refused.exit_code == 4 and "drop the existing database aiecs_demo" in (
            refused.output)
        with psycopg.connect(conninfo(pg.admin_url.set(database="aiecs_demo"))) as conn:
            assert conn.execute("SELECT to_regclass('precious')").fetchone() != (None,)
    finally:
        with psycopg.connect(conninfo(pg.admin_url), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS aiecs_demo WITH (FORCE)")


def test_alembic_verbs(empty_db_url):
    url = url_of(empty_db_url)
    up = runner.invoke(app, ["upgrade", "head", "-x", "lock_timeout=5s", "--url", url])
    assert up.exit_code == 0, up.output
    head = runner.invoke(app, ["heads"]).output.strip()
    assert head == migrate.head() and f"at revision {head}" in up.output
    history = runner.invoke(app, ["revisions", "--url", url, "--json"])
    rows = json.loads(history.output)
    assert rows[0] == {"revision": head, "revises": rows[1]["revision"],
                       "title": rows[0]["title"], "current": True}
    assert rows[-1]["revises"] is None and len(rows) >= 4
    down = runner.invoke(app, ["downgrade", "-1", "--yes", "--url", url])
    assert down.exit_code == 0, down.output
    assert migrate.current(url) == rows[1]["revision"]
    stamped = runner.invoke(app, ["stamp", "head", "--url", url])
    assert stamped.exit_code == 0 and migrate.current(url) == head
    sql_down = runner.invoke(app, ["downgrade", rows[1]["revision"], "--sql"])
    assert sql_down.exit_code == 0, sql_down.output
    assert f"Running downgrade {head} -> {rows[1]['revision']}" in sql_down.output
    sql_up = runner.invoke(app, ["upgrade", "--sql", "-x", "lock_timeout=3s"])
    assert sql_up.exit_code == 0 and "SET lock_timeout = '3s'" in sql_up.output
    for command in (["upgrade", "bogus", "--url", url], ["downgrade", "bogus", "--yes",
                    "--url", url], ["sql", "--revision", "bogus"], ["stamp", "bogus",
                    "--url", url]):
        bad = runner.invoke(app, command)
        assert bad.exit_code == 4, (command, bad.output)
        assert bad.output.count("\n") == 1 and "bogus" in bad.output, bad.output
    assert runner.invoke(app, ["upgrade", "-x", "nonsense", "--url", url]).exit_code == 2


def test_json_errors_with_json():
    done = runner.invoke(app, ["tasks", "u", "--json", "--url",
                               "postgresql://bob:hunter2@127.0.0.1:1/x"])
    assert done.exit_code == 3
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "E005" and error["exit"] == 3 and "cannot connect" in (
        error["message"])  # refused, asked again, then given up (docs/operations.md)
    assert "hunter2" not in done.output


def test_ctrl_c_is_one_line_and_exit_130():
    """Interrupted while it waits (here, for a server that never answers): one line, 130."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"postgresql://u@127.0.0.1:{listener.getsockname()[1]}/x?connect_timeout=30"
    command = subprocess.Popen([sys.executable, "-m", "aiecs_persistence", "report", "--url",
                                url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=interruptible)
    accepted = None
    try:
        # Started and waiting for the server's answer once its connection arrives (under load,
        # importing alone can take seconds: a fixed sleep would interrupt the imports).
        listener.settimeout(60)
        accepted, _ = listener.accept()
        time.sleep(0.3)
        command.send_signal(signal.SIGINT)
        _, err = command.communicate(timeout=30)
    finally:
        command.kill()
        if accepted is not None:
            accepted.close()
        listener.close()
    assert command.returncode == 130, err
    assert err.strip() == "interrupted"


def test_upgrade_says_what_it_adopted(empty_db_url):
    from ..migrations.legacy import build, create_upstream

    data = build(seed=3, tasks=40)
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        create_upstream(conn, data)
    done = runner.invoke(app, ["upgrade", "--json", "--url", url_of(empty_db_url)])
    assert done.exit_code == 0, done.output
    adoption = json.loads(done.stdout)["adoption"]
    assert adoption["read"] == len(data.rows) and adoption["adopted"] == data.adopted
    assert adoption["reasons"] == dict(data.rejected)
    again = runner.invoke(app, ["upgrade", "--url", url_of(empty_db_url)])
    assert again.exit_code == 0 and "adopted" not in again.output  # only when it adopts


def test_grant_json_and_log_level(seeded):
    done = runner.invoke(app, ["grant", "--json", "--url", seeded])
    assert done.exit_code == 0 and json.loads(done.stdout)["statements"] > 5
    logged = runner.invoke(app, ["--log-level", "debug", "tasks", "alice", "--url", seeded])
    assert logged.exit_code == 0 and "DEBUG aiecs_persistence" in logged.stderr
    bad = runner.invoke(app, ["--log-level", "chatty", "tasks", "alice", "--url", seeded])
    assert bad.exit_code == 2


EVERY_COMMAND = [
    ["upgrade"], ["downgrade", "base"], ["stamp"], ["heads"], ["revisions"], ["current"], ["check"],
    ["sql"], ["tasks"], ["history"], ["report"], ["cleanup"], ["partitions"], ["maintain"],
    ["grant"], ["scope", "someone"], ["scopes"], ["import-legacy"], ["demo"],
    ["embedded", "status"], ["embedded", "url"], ["embedded", "stop"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_a_usage_error_is_one_line_and_exit_2(command):
    """docs/operations.md's exit codes, row 2, for every command: one line, no traceback."""
    done = runner.invoke(app, [*command, "--no-such-option"])
    assert done.exit_code == 2, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "no-such-option" in lines[0] and "--help" in lines[0]
    assert "Traceback" not in done.output


def test_every_command_is_in_the_exit_code_tests():
    from aiecs_persistence.cli import app as cli

    names = {c.name or c.callback.__name__ for c in cli.registered_commands} | {"embedded"}
    assert names == {c[0] for c in EVERY_COMMAND}


def test_demo_json_and_quiet(pg, seeded):
    server = pg.admin_url.render_as_string(hide_password=False)
    try:
        done = runner.invoke(app, ["demo", "--url", server, "--yes", "--json"])
        assert done.exit_code == 0, done.output
        data = json.loads(done.stdout)
        assert len(data["tasks"]) == 9 and data["report"]["totals"]["tasks"] == 9
        assert len(data["explore"]) == 3 and data["followed"]
    finally:
        with psycopg.connect(conninfo(pg.admin_url), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS aiecs_demo WITH (FORCE)")
    quiet = runner.invoke(app, ["--quiet", "cleanup", "--older-than", "0h", "--yes",
                                "--url", seeded])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert "deleted 2 task(s)" in quiet.stdout


def json_values(text: str) -> list[object]:
    """Every JSON value printed one after the other (the command's output, then the console
    exporter's spans)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def test_the_command_line_is_a_trace_when_the_environment_asks(seeded, db_url):
    url = url_of(db_url.set(password="s3cret-Pa55"))  # trusted: the password is never checked
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_SERVICE_NAME": "aiecs-db-test"}
    done = subprocess.run([sys.executable, "-m", "aiecs_persistence", "tasks", "alice", "--url",
                           url, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    output, *spans = json_values(done.stdout)
    assert [row["task_id"] for row in output] == ["t2", "t1"]  # type: ignore[index]
    by_name = {span["name"]: span for span in spans}  # type: ignore[index]
    root, listing = by_name["aiecs-db tasks"], by_name["list_tasks"]
    assert root["parent_id"] is None and root["status"]["status_code"] == "UNSET"
    assert listing["parent_id"] == root["context"]["span_id"]
    assert listing["attributes"]["db.operation.name"] == "list_tasks"
    assert root["resource"]["attributes"]["service.name"] == "aiecs-db-test"
    assert "s3cret-Pa55" not in done.stdout + done.stderr

    failed = subprocess.run([sys.executable, "-m", "aiecs_persistence", "tasks", "alice",
                             "--url", "postgresql://bob:hunter2@127.0.0.1:1/db"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert failed.returncode == 3
    by_name = {s["name"]: s for s in json_values(failed.stdout)}  # type: ignore[index]
    assert by_name["aiecs-db tasks"]["status"]["status_code"] == "ERROR"
    connecting = by_name["connect"]  # the manager's call that failed, with its code
    assert connecting["status"]["status_code"] == "ERROR"
    assert connecting["attributes"]["error.type"].startswith("E00")
    assert "hunter2" not in failed.stdout + failed.stderr

    quiet = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    plain = subprocess.run([sys.executable, "-m", "aiecs_persistence", "tasks", "alice", "--url",
                            url, "--json"], capture_output=True, text=True, timeout=120,
                           env=quiet)
    assert len(json_values(plain.stdout)) == 1  # nothing asked for: no spans


def test_an_upgrade_is_a_trace_of_its_revisions(empty_db_url):
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"}
    done = subprocess.run([sys.executable, "-m", "aiecs_persistence", "upgrade", "--url",
                           url_of(empty_db_url), "--json"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    output, *spans = json_values(done.stdout)
    assert output["revision"] == migrate.head()  # type: ignore[index]
    by_name = {span["name"]: span for span in spans}  # type: ignore[index]
    command, upgrade = by_name["aiecs-db upgrade"], by_name["migrate: upgrade to head"]
    assert upgrade["parent_id"] == command["context"]["span_id"]
    revisions = [s for s in spans if s["name"].startswith("migrate 0")]  # type: ignore[index]
    assert [s["attributes"]["aiecs.migration.revision"] for s in revisions] == [
        r for r, _, _ in reversed(migrate.revisions())]
    assert all(s["parent_id"] == upgrade["context"]["span_id"] for s in revisions)
