"""Importing the managers loads neither SQLAlchemy nor Alembic: they come with the first connect
(URL parsing, migrations). The time itself is a benchmark figure (benchmarks/run.py, import)."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return {name.split(".")[0] for name in json.loads(done.stdout)}


def test_importing_the_managers_loads_no_sqlalchemy_nor_alembic():
    loaded = loaded_after("from aiecs_persistence import DatabaseManager, SyncDatabaseManager")
    assert "psycopg" in loaded  # the walk sees what was imported
    assert not loaded & {"sqlalchemy", "alembic", "mako", "asyncpg"}


def test_the_domain_loads_no_database_module():
    loaded = loaded_after("from aiecs_persistence import TaskStatus, TaskStepResult, ErrorCode")
    assert not loaded & {"sqlalchemy", "alembic", "psycopg", "psycopg_pool"}
