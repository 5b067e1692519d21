"""Enum evolution without rewriting tables, and concurrent upgrades."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import psycopg
from alembic import command

from aiecs_persistence import migrate

from ..conftest import conninfo

LATER_REVISION = '''"""Add error code E008 (an example of enum evolution).

Revision ID: 0099_add_e008
Revises: {down}
"""
from alembic import op

revision = "0099_add_e008"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD VALUE cannot be used in the transaction that adds it: commit it on its own.
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE error_code ADD VALUE IF NOT EXISTS 'E008'")
    op.execute("INSERT INTO error_codes VALUES ('E008', 'EXAMPLE_ERROR', 'system', 'Example')")


def downgrade() -> None:
    raise NotImplementedError("PostgreSQL cannot drop an enum value")
'''


def test_adding_an_enum_value_does_not_rewrite_tables(db_url, tmp_path: Path):
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.script_location(), scripts,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0099_add_e008.py").write_text(
        LATER_REVISION.format(down=migrate.head()))

    with psycopg.connect(conninfo(db_url), autocommit=True) as conn:
        conn.execute("INSERT INTO tasks (user_id, task_id, status) "
                     "SELECT 'u', 't' || i, 'running' FROM generate_series(1, 500) i")
        conn.execute("INSERT INTO task_history (user_id, task_id, step, step_name, status, "
                     "completed, error_code, error_message) "
                     "SELECT 'u', 't' || i, 0, 'op', 'failed', false, 'E003', 'x' "
                     "FROM generate_series(1, 500) i")
        files = lambda: conn.execute(  # noqa: E731
            "SELECT relname, relfilenode FROM pg_class "
            "WHERE relname IN ('tasks', 'task_history') ORDER BY 1").fetchall()
        before = files()

    cfg = migrate.alembic_config(db_url)
    cfg.set_main_option("script_location", str(scripts))
    command.upgrade(cfg, "head")

    with psycopg.connect(conninfo(db_url), autocommit=True) as conn:
        assert files() == before, "no table was rewritten"
        labels = conn.execute("SELECT enum_range(NULL::error_code)::text").fetchone()[0]
        assert labels.endswith(",E008}")
        assert conn.execute("SELECT count(*) FROM task_history").fetchone() == (500,)
    # The application's enum does not know E008 yet: that is drift, reported clearly.
    assert "E008" in " ".join(migrate.inspect(db_url).enum_problems)


def _upgrade(url: str) -> str:
    try:
        migrate.upgrade(url)
        return "ok"
    except Exception as exc:  # reported to the parent
        return f"{type(exc).__name__}: {exc}"


def test_eight_processes_upgrading_at_once(empty_db_url):
    url = empty_db_url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.map(_upgrade, [url] * 8)
    assert results == ["ok"] * 8
    assert migrate.inspect(empty_db_url).ok
