"""A schema on the search path cannot shadow our tables: a role that may create schemas makes
one named after the service's login role (first on the default search_path, ``"$user"``) and
puts its own ``task_history`` there. A connected manager keeps reading and writing ours (its
connections' search_path is pinned to our schema); a new one refuses to connect, naming what
shadows ours, and so does ``aiecs-db check``."""

from __future__ import annotations

import psycopg
import psycopg.sql
import pytest

from aiecs_persistence import SchemaMismatchError, TaskStepResult, migrate

from ..database import Server
from ..managers import close, make_manager

DONE = TaskStepResult("op", {"real": True}, True, "ok", "completed")


@pytest.fixture(autouse=True)
def _own_database(pg: Server) -> None:
    if pg.citus:
        pytest.skip("creates a schema of its own, and the Citus run shares one database")


def forge(psql: psycopg.Connection) -> str:
    """A schema named after the login role, holding a forged copy of one of our steps."""
    role = psql.execute("SELECT current_user").fetchone()[0]
    schema = psycopg.sql.Identifier(role)
    psql.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(schema))
    psql.execute(psycopg.sql.SQL(
        "CREATE TABLE {}.task_history AS SELECT * FROM public.task_history").format(schema))
    psql.execute(psycopg.sql.SQL(
        "UPDATE {}.task_history SET result = '{{\"forged\": true}}'").format(schema))
    return role


def test_a_connected_manager_keeps_to_its_own_tables(kind, db_url, psql):
    db = make_manager(kind, url=db_url, pool_size=1, max_overflow=0)
    try:
        db.save_task_history("u", "t", 0, DONE)
        forge(psql)
        assert db.load_task_history("u", "t")[0]["result"]["result"] == {"real": True}
        db.save_task_history("u", "t", 1, DONE)
        assert [e["step"] for e in db.load_task_history("u", "t")] == [0, 1]
        assert db.get_task("u", "t") is not None
    finally:
        close(db)
    assert psql.execute("SELECT count(*) FROM public.task_history").fetchone() == (2,)


def test_a_new_manager_refuses_a_shadowed_schema_and_says_what_shadows_it(kind, db_url, psql):
    seed = make_manager(kind, url=db_url)
    try:
        seed.save_task_history("u", "t", 0, DONE)
    finally:
        close(seed)
    role = forge(psql)
    db = make_manager(kind, url=db_url)
    try:
        with pytest.raises(SchemaMismatchError) as info:
            db.load_task_history("u", "t")
    finally:
        close(db)
    assert f"{role}.task_history shadows aiecs-persistence's task_history in schema public" in (
        info.value.message)
    status = migrate.inspect(db_url)
    assert not status.ok and status.shadowing == (f"{role}.task_history",)
    assert status.schema == "public"


def test_an_unshadowed_database_names_its_schema(db_url):
    status = migrate.inspect(db_url)
    assert status.ok and status.schema == "public" and status.shadowing == ()


def test_aiecs_db_check_reports_the_shadowing(db_url, psql):
    import json

    from typer.testing import CliRunner

    from aiecs_persistence.cli import app

    role = forge(psql)
    url = db_url.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["check", "--url", url, "--json"])
    assert result.exit_code != 0
    found = json.loads(result.output)
    assert found["ok"] is False and found["shadowing"] == [f"{role}.task_history"]
