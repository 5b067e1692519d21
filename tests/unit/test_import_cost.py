"""Importing the managers loads neither SQLAlchemy, Alembic nor psycopg: they come with the first
connect (URL parsing, migrations, the pool). The time itself is a benchmark figure
(benchmarks/run.py, import)."""

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
    assert "aiecs_persistence" in loaded and "asyncio" in loaded  # the walk sees the imports
    assert not loaded & {"sqlalchemy", "alembic", "mako", "asyncpg", "psycopg", "psycopg_pool"}


def test_the_domain_loads_no_database_module():
    loaded = loaded_after("from aiecs_persistence import TaskStatus, TaskStepResult, ErrorCode")
    assert not loaded & {"sqlalchemy", "alembic", "psycopg", "psycopg_pool"}


def test_the_libpq_constants_are_psycopgs():
    from psycopg.pq import ExecStatus, TransactionStatus

    from aiecs_persistence.core import TRANSACTION_IDLE, TUPLES_OK

    assert (TRANSACTION_IDLE, TUPLES_OK) == (TransactionStatus.IDLE, ExecStatus.TUPLES_OK)


def test_connecting_loads_them():
    loaded = loaded_after("import asyncio; from aiecs_persistence import DatabaseManager; "
                          "from aiecs_persistence.sqlstates import by_class; by_class()")
    assert {"psycopg", "psycopg_pool"} <= loaded
