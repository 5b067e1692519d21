"""Tenants: a scoped role sees and writes only its users' rows, whatever it runs (psql, views,
the managers, the CLI), and learns nothing of the others'."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from aiecs_persistence import DatabaseManager, SyncDatabaseManager, TaskStepResult
from aiecs_persistence.cli import app
from aiecs_persistence.errors import PermissionDeniedError

from ..conftest import conninfo
from ..database import temporary_database
from ..reliability.test_backup import client_tool, run

runner = CliRunner(env={"COLUMNS": "200"})

#: Every table and view a scoped role may read, and what it counts there.
COUNTED = ("tasks", "task_history", "task_events", "step_details", "task_summary",
           "aiecs_watched", "aiecs_period_summaries", "aiecs_scopes")


def ok(step: str) -> TaskStepResult:
    return TaskStepResult(step, {"n": 1}, True, "ok", "completed")


def failed(step: str) -> TaskStepResult:
    return TaskStepResult(step, None, False, "boom", "failed", "E003", "it broke")


#: The history of both tenants: (user, task) → its steps.
HISTORY: dict[tuple[str, str], list[TaskStepResult]] = {
    ("acme-1", "a1"): [ok("plan"), ok("call"), failed("check")],
    ("acme-2", "a2"): [ok("plan"), ok("call")],
    ("globex-1", "g1"): [ok("plan"), failed("call"), ok("retry"), ok("done")],
    ("globex-2", "secret-task"): [failed("plan")],
}


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture
def tenants(pg: Any, db_url: URL) -> Iterator[dict[str, URL]]:
    """Both tenants' history, and a login per tenant: ``acme``, ``globex`` read; ``acme_w``
    reads and writes acme's users. Dropped after."""
    if pg.citus:
        pytest.skip("a scope is refused on Citus (test_scope_is_refused_on_citus)")
    suffix = uuid.uuid4().hex[:8]
    logins = {"acme": f"acme_r_{suffix}", "globex": f"globex_r_{suffix}",
              "acme_w": f"acme_w_{suffix}"}
    with SyncDatabaseManager(url=db_url, auto_migrate=False) as db:
        for (user, task), steps in HISTORY.items():
            for i, step in enumerate(steps):
                db.save_task_history(user, task, i, step)
    url = db_url.render_as_string(hide_password=False)
    admin = psycopg.connect(conninfo(db_url), autocommit=True)
    for login in logins.values():
        admin.execute(f"CREATE ROLE {login} LOGIN")
    try:
        for kind, login in logins.items():
            pattern = "acme-%" if kind.startswith("acme") else "globex-%"
            extra = ["--write"] if kind == "acme_w" else []
            done = cli("scope", login, "--users", pattern, *extra, "--url", url)
            assert done.exit_code == 0, done.output
        yield {kind: db_url.set(username=login, password=None)
               for kind, login in logins.items()} | {"admin": db_url}
    finally:
        for login in logins.values():
            admin.execute(f"DROP OWNED BY {login}")
            admin.execute(f"DROP ROLE {login}")
        admin.close()


def counts(url: URL) -> dict[str, int]:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                for name in COUNTED}


def expected(prefix: str | None) -> dict[str, int]:
    mine = {k: v for k, v in HISTORY.items() if prefix is None or k[0].startswith(prefix)}
    steps = sum(len(v) for v in mine.values())
    return {"tasks": len(mine), "task_history": steps, "task_events": steps + len(mine),
            "step_details": steps, "task_summary": len(mine), "aiecs_watched": 0}


def test_each_login_reads_its_own_users_only(tenants):
    for kind, prefix in (("acme", "acme-"), ("globex", "globex-")):
        seen = counts(tenants[kind])
        assert {k: seen[k] for k in expected(prefix)} == expected(prefix), kind
        assert seen["aiecs_period_summaries"] == 0  # every user's figures: none for a tenant
        assert seen["aiecs_scopes"] == 1  # its own scope, not the other's patterns
    whole = counts(tenants["admin"])
    assert {k: whole[k] for k in expected(None)} == expected(None)  # unscoped: everything
    with psycopg.connect(conninfo(tenants["acme"]), autocommit=True) as conn:
        for table in ("tasks", "task_history", "task_events", "step_details"):
            assert conn.execute(f"SELECT * FROM {table} WHERE task_id = 'secret-task'"
                                ).fetchall() == [], table
        failures = conn.execute("SELECT sum(failures) FROM failures_by_day").fetchone()[0]
        assert failures == 1  # acme's one failed step; globex's two are not counted
        # Nor can it write: a reader's UPDATE of its own rows is refused by privilege.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE task_history SET message = 'x'")


def test_report_and_cli_cover_the_logins_users_only(tenants):
    with SyncDatabaseManager(url=tenants["globex"], auto_migrate=False) as db:
        figures = db.report()
        assert db.load_task_history("acme-1", "a1") == []
        assert db.get_task("acme-1", "a1") is None
        assert [t.task_id for t in db.list_tasks("acme-1")] == []
        assert len(db.load_task_history("globex-2", "secret-task")) == 1
    assert figures["totals"]["steps"] == 5 and figures["totals"]["tasks"] == 2
    assert figures["totals"]["failures"] == 2
    url = tenants["acme"].render_as_string(hide_password=False)
    shown = cli("history", "globex-2", "secret-task", "--json", "--url", url)
    assert shown.exit_code == 0 and json.loads(shown.output) == []
    shown = cli("history", "acme-1", "a1", "--json", "--url", url)
    assert len(json.loads(shown.output)) == 3
    listed = cli("scopes", "--json", "--url", tenants["admin"].render_as_string(
        hide_password=False))
    assert {(s["patterns"][0], s["writes"]) for s in json.loads(listed.output)} >= {
        ("acme-%", False), ("globex-%", False), ("acme-%", True)}


def test_a_scoped_writer_saves_its_users_and_nothing_else(tenants):
    with SyncDatabaseManager(url=tenants["acme_w"], auto_migrate=False) as db:
        assert db.save_task_history("acme-3", "new", 0, ok("plan"))
        db.save_task_history_many([("acme-3", "bulk", i, ok(f"s{i}")) for i in range(50)])
        with pytest.raises(PermissionDeniedError) as refused:
            db.save_task_history("globex-1", "g1", 9, ok("intrude"))
        assert refused.value.code.value == "E006" and refused.value.sqlstate == "42501"
        assert "globex" not in str(refused.value)
        with pytest.raises(PermissionDeniedError):  # a new task of theirs: the same error
            db.save_task_history("globex-9", "new", 0, ok("plan"))
        with pytest.raises(PermissionDeniedError):  # all or nothing
            db.save_task_history_many([("acme-3", "mixed", 0, ok("a")),
                                       ("globex-1", "mixed", 0, ok("b"))])
        # Its own users' tasks only: a1, a2, new, bulk. (A cleanup keeps what transactions
        # younger than the oldest one running wrote: other tests' may still be open.)
        deleted = 0
        for _ in range(100):
            deleted += db.cleanup_old_tasks(0)
            if deleted >= 4:
                break
            time.sleep(0.1)
        assert deleted == 4

    async def burst() -> list[Any]:
        async with DatabaseManager(url=tenants["acme_w"], auto_migrate=False) as db:
            return await asyncio.gather(*(
                db.save_task_history("acme-4" if i % 4 else "globex-4", f"t{i}", 0,
                                     ok("plan")) for i in range(64)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    # Group commit: the refused saves fail alone; the others, batched with them, are written.
    assert sum(o is True for o in outcomes) == 48
    assert all(isinstance(o, PermissionDeniedError) for o in outcomes[::4])
    with psycopg.connect(conninfo(tenants["admin"]), autocommit=True) as conn:
        users = dict(conn.execute("SELECT user_id, count(*) FROM tasks GROUP BY 1").fetchall())
        assert users == {"globex-1": 1, "globex-2": 1, "acme-4": 48}
    with psycopg.connect(conninfo(tenants["acme_w"]), autocommit=True) as conn:
        for statement in ("UPDATE task_history SET message = 'x' WHERE user_id LIKE 'globex%'",
                          "DELETE FROM task_history WHERE user_id LIKE 'globex%'",
                          "DELETE FROM tasks", "UPDATE task_events SET message = 'x' "
                          "WHERE user_id LIKE 'globex%'"):
            done = conn.execute(statement)
            assert done.rowcount == 0 or statement == "DELETE FROM tasks", statement
    with psycopg.connect(conninfo(tenants["admin"]), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM task_history WHERE user_id LIKE 'globex%'"
                            ).fetchone()[0] == 5


def test_scopes_are_listed_reprinted_and_dropped(tenants):
    url = tenants["admin"].render_as_string(hide_password=False)
    login = tenants["acme"].username
    printed = cli("scope", login, "--users", "acme-%", "--print", "--url", url)
    assert printed.exit_code == 0 and "INSERT INTO" in printed.output
    assert "CREATE POLICY" not in printed.output  # they exist: a re-run only re-grants
    # A role granted the scoped one, running as itself, is confined to nothing.
    member = f"member_of_{login}"
    with psycopg.connect(conninfo(tenants["admin"]), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {member} LOGIN IN ROLE {login}")
        try:
            seen = counts(tenants["acme"].set(username=member))
            assert seen["tasks"] == seen["task_history"] == seen["step_details"] == 0
        finally:
            admin.execute(f"DROP ROLE {member}")
    assert cli("scope", login, "--drop", "--url", url).exit_code == 0
    scoped = {s["role"] for s in json.loads(cli("scopes", "--json", "--url", url).output)}
    assert login not in scoped
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        counts(tenants["acme"])
    refused = cli("scope", "postgres", "--users", "x%", "--url", url)
    assert refused.exit_code != 0 and "superuser" in refused.output


def test_check_reports_row_security_turned_off(tenants):
    url = tenants["admin"].render_as_string(hide_password=False)
    assert cli("check", "--url", url).exit_code == 0
    with psycopg.connect(conninfo(tenants["admin"]), autocommit=True) as conn:
        conn.execute("ALTER TABLE task_history NO FORCE ROW LEVEL SECURITY")
        conn.execute("DROP POLICY aiecs_scope_read ON tasks")
    found = cli("check", "--json", "--url", url)
    assert found.exit_code != 0
    problems = json.loads(found.output)["row_security_problems"]
    assert any("not forced on task_history" in p for p in problems)
    assert any("tasks.aiecs_scope_read" in p for p in problems)


def test_scope_is_refused_on_citus(pg, db_url):
    if not pg.citus:
        pytest.skip("runs on a Citus coordinator (.ci/run starts one)")
    url = db_url.render_as_string(hide_password=False)
    refused = cli("scope", "someone", "--users", "acme-%", "--url", url)
    assert refused.exit_code != 0 and "Citus" in refused.output


def test_a_scoped_listener_hears_of_its_users_only(tenants):
    with psycopg.connect(conninfo(tenants["acme"]), autocommit=True) as mine:
        # It registers its watch (as a manager's listener does) and listens on its channel and
        # on the old shared one; it cannot watch another tenant's user.
        mine.execute("INSERT INTO aiecs_watched (user_id, task_id, listener, until) VALUES "
                     "('acme-1', '', 'acme1', now() + interval '1 hour')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            mine.execute("INSERT INTO aiecs_watched (user_id, task_id, listener, until) VALUES "
                         "('globex-1', '', 'acme1', now() + interval '1 hour')")
        mine.execute("LISTEN aiecs_events_acme1")
        mine.execute("LISTEN aiecs_events")
        # Someone else watches globex's users: their new tasks notify that listener only.
        with SyncDatabaseManager(url=tenants["admin"], auto_migrate=False) as db, \
                psycopg.connect(conninfo(tenants["admin"]), autocommit=True) as admin:
            admin.execute("INSERT INTO aiecs_watched (user_id, task_id, listener, until) "
                          "VALUES ('globex-1', '', 'globex1', now() + interval '1 hour')")
            admin.execute("LISTEN aiecs_events_globex1")
            db.save_task_history("globex-1", "g-new", 0, ok("plan"))
            db.save_task_history("globex-1", "g1", 9, ok("more"))
            db.save_task_history("acme-1", "a-new", 0, ok("plan"))
            heard = {n.payload for n in mine.notifies(timeout=1.0, stop_after=10)}
            theirs = {n.payload for n in admin.notifies(timeout=1.0, stop_after=10)}
    assert heard == {"acme-1\x1fa-new"}
    assert theirs == {"globex-1\x1fg-new"}
    with SyncDatabaseManager(url=tenants["admin"], auto_migrate=False) as db:
        db.finish_task("acme-1", "a1", "failed", "E003", "it broke")
    with SyncDatabaseManager(url=tenants["acme"], auto_migrate=False) as db:
        entries = list(db.watch_task_history("acme-1", "a1"))  # a catch-up, as a scoped role
    assert [e["step"] for e in entries] == [0, 1, 2]


def test_a_scoped_roles_reads_stay_index_driven(tenants):
    """The policy adds a filter to the index scans an unscoped role's reads use, and its
    patterns are read once per statement (an initplan), not once per row."""
    with psycopg.connect(conninfo(tenants["admin"]), autocommit=True) as admin:
        admin.execute("INSERT INTO tasks (user_id, task_id, status) SELECT 'acme-' || (i % 50), "
                      "'bulk-' || i, 'running' FROM generate_series(1, 5000) i")
        admin.execute("INSERT INTO task_history (user_id, task_id, step, step_name, status, "
                      "completed) SELECT 'acme-' || (i % 50), 'bulk-' || i, s, 'op', "
                      "'completed', true FROM generate_series(1, 5000) i, "
                      "generate_series(0, 9) s")
        admin.execute("ANALYZE tasks")
        admin.execute("ANALYZE task_history")
    queries = ("SELECT * FROM task_history WHERE user_id = 'acme-7' AND task_id = 'bulk-7'",
               "SELECT * FROM tasks WHERE user_id = 'acme-7' ORDER BY task_id LIMIT 20")

    def plans(url: URL) -> list[str]:
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            return ["\n".join(r[0] for r in conn.execute(f"EXPLAIN {q}").fetchall())
                    for q in queries]

    def sequential(plan: str) -> list[str]:  # (the empty partitions of days ahead are)
        return sorted(re.findall(r"Seq Scan on (\S+)", plan))

    for unscoped, scoped in zip(plans(tenants["admin"]), plans(tenants["acme"]), strict=True):
        assert "Index Scan using" in unscoped and "Index Scan using" in scoped.replace(
            "Bitmap Index Scan on", "Index Scan using"), scoped
        assert sequential(scoped) == sequential(unscoped), scoped
        assert scoped.count("InitPlan") >= 1 and "~~ ANY" in scoped, scoped
        assert "~~ ANY" not in unscoped  # an unscoped role never evaluates the policy


def test_a_dump_and_restore_keeps_the_scopes(pg, tenants, tmp_path):
    major = int(pg.version.split(".")[0].split()[0])
    dump, restore = client_tool("pg_dump", major), client_tool("pg_restore", major)
    archive = str(tmp_path / "tenants.dump")
    run(dump, "--format=custom", f"--file={archive}",
        f"--dbname={conninfo(tenants['admin'])}")
    with temporary_database(pg) as target:
        run(restore, "--exit-on-error", f"--dbname={conninfo(target)}", archive)
        url = target.render_as_string(hide_password=False)
        listed = json.loads(cli("scopes", "--json", "--url", url).output)
        assert {s["role"] for s in listed} == {tenants[k].username for k in
                                               ("acme", "globex", "acme_w")}
        assert cli("check", "--url", url).exit_code == 0  # policies and memberships there
        seen = counts(target.set(username=tenants["globex"].username, password=None))
        assert {k: seen[k] for k in expected("globex-")} == expected("globex-")
