"""The adoption rules exist twice: frozen in revision 0002 (for an upstream table found by
``upgrade``) and in the package (``adoption.py``, for ``import-legacy``). At the revision where
they coincide, both must adopt the same legacy rows identically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from aiecs_persistence import legacy, migrate

from ..conftest import conninfo
from ..database import temporary_database
from .legacy import build, create_upstream

ZONE = "America/New_York"
# (Not the bucket: a task adopted by 0002 is older than the partitions, one imported later is not.)
TASKS = "SELECT to_jsonb(t) - 'bucket' FROM tasks t ORDER BY user_id, task_id"
STEPS = "SELECT to_jsonb(h) - 'bucket' FROM task_history h ORDER BY user_id, task_id, step"
# Legacy ids depend on the order rows were copied in; the rest of a set-aside row must match.
REJECTS = ("SELECT reason, row_data - 'id' FROM legacy_task_history_rejects "
           "ORDER BY reason, (row_data - 'id')::text")


def contents(url: Any) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(conninfo(url)) as conn:
        return {q: conn.execute(q).fetchall() for q in (TASKS, STEPS, REJECTS)}


def test_import_legacy_adopts_as_revision_0002_does(pg, empty_db_url):
    data = build(seed=5, tasks=150)
    # Route 1: upstream's table in the database itself, adopted by revision 0002.
    with psycopg.connect(conninfo(empty_db_url), autocommit=True) as conn:
        create_upstream(conn, data)
    migrate.upgrade(empty_db_url, options={"legacy_timezone": ZONE})  # 0002 adopts on the way
    by_revision = contents(empty_db_url)

    # Route 2: the same rows imported into a migrated database by the package's rules.
    with temporary_database(pg) as other:
        migrate.upgrade(other)
        with psycopg.connect(conninfo(other), autocommit=True) as conn:
            summary = legacy.import_rows(conn, iter(data.rows), timezone=ZONE)
        by_import = contents(other)

    assert summary.adopted == data.adopted and summary.read == len(data.rows)
    assert len(by_revision[STEPS]) == data.adopted > 0
    assert len(by_revision[TASKS]) > 0 and len(by_revision[REJECTS]) > 0
    for query in (TASKS, STEPS, REJECTS):
        assert by_import[query] == by_revision[query], query


def test_legacy_no_longer_loads_a_migration_module():
    source = Path(legacy.__file__).read_text()
    assert "ScriptDirectory" not in source and "get_revision" not in source
