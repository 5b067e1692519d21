"""Schema and models can never silently diverge: the migrations and the models build the same
schema, compared through the catalogs."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from aiecs_persistence import ErrorCode, SchemaMismatchError, TaskStatus, migrate
from aiecs_persistence.schema import metadata

from ..conftest import conninfo
from .snapshot import objects, snapshot


def test_a_autogenerate_finds_no_difference(db_url):
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "compare_server_default": True,
            "version_table": migrate.VERSION_TABLE, "target_metadata": metadata,
                "include_object": migrate.include_object})
        diff = compare_metadata(context, metadata)
    engine.dispose()
    assert diff == []


def test_b_migrations_and_models_build_the_same_schema(db_url, empty_db_url):
    engine = sa.create_engine(empty_db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        metadata.create_all(conn)
    engine.dispose()
    migrated, modelled = snapshot(db_url), snapshot(empty_db_url)
    for kind in migrated:
        assert migrated[kind] == modelled[kind], kind
    # And the picture is not trivially empty.
    # (10 triggers: 7, and a guard of keys on 3 tables; 16 functions: 8, that guard's, the
    # six of the partitions and their summaries, a task's bucket, and a scope's patterns.)
    assert len(migrated["constraints"]) >= 15 and len(migrated["triggers"]) == 10
    assert len(migrated["views"]) == 3 and len(migrated["functions"]) == 17
    # Row-level security, forced, with the open policy on each of its six tables; views run
    # as their caller.
    assert len(migrated["policies"]) == 6
    assert sum(v.startswith("t t") for v in migrated["row_security"].values()) == 6
    assert sum("security_invoker=true" in v for v in migrated["row_security"].values()) == 3


def test_c_upgrade_downgrade_upgrade_with_data(empty_db_url, pg):
    migrate.upgrade(empty_db_url)
    engine = sa.create_engine(empty_db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO tasks (user_id, task_id, status) VALUES ('u', 't', 'running')")
        conn.exec_driver_sql(
            "INSERT INTO task_history (user_id, task_id, step, step_name, status, completed) "
            "VALUES ('u', 't', 0, 'a', 'completed', true)")
    migrate.downgrade(empty_db_url, "base")
    assert objects(empty_db_url) == [], "downgrade to base removes everything"
    migrate.upgrade(empty_db_url)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar_one() == 0
        conn.exec_driver_sql("INSERT INTO tasks (user_id, task_id) VALUES ('u','t')")
    engine.dispose()
    assert migrate.inspect(empty_db_url).ok


def test_d_single_head():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1
    assert migrate.head() == script.get_current_head()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_e_offline_sql_applied_with_psql_builds_the_same_schema(db_url, empty_db_url):
    sql = migrate.offline_sql()
    done = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", conninfo(empty_db_url)],
        input=sql, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert snapshot(empty_db_url) == snapshot(db_url)
    assert migrate.current(empty_db_url) == migrate.head()


def test_f_python_enums_match_the_database(db_url):
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        labels = dict(conn.exec_driver_sql(migrate.ENUM_LABELS_SQL).all())
        catalog = conn.exec_driver_sql(
            "SELECT code::text, name, category, description FROM error_codes ORDER BY code"
        ).all()
    engine.dispose()
    assert labels["task_status"] == [s.value for s in TaskStatus]
    assert labels["error_code"] == [c.value for c in ErrorCode]
    assert [tuple(r) for r in catalog] == [
        (c.value, c.name, c.category, c.description) for c in ErrorCode]


def test_enum_drift_is_reported(db_url):
    engine = sa.create_engine(db_url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("ALTER TYPE error_code ADD VALUE 'E999'")
    engine.dispose()
    status = migrate.inspect(db_url)
    assert status.at_head and not status.ok
    # `aiecs-db upgrade` would change nothing: the advice names what does.
    assert "E999" in status.describe() and "aiecs-db upgrade" not in status.describe()
    assert "upgrade aiecs-persistence, or remove them" in status.describe()
    with pytest.raises(SchemaMismatchError):
        migrate.check(db_url)


def test_a_foreign_table_in_the_way_is_named_with_its_remedy(empty_db_url):
    engine = sa.create_engine(empty_db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE task_history (x int)")
    engine.dispose()
    advice = migrate.inspect(empty_db_url).describe()
    assert "not aiecs-persistence's" in advice and "rename or drop it" in advice
    assert "aiecs-db upgrade" not in advice


def test_an_older_schema_is_told_to_upgrade(empty_db_url):
    migrate.upgrade(empty_db_url, "0001_initial")
    assert "run `aiecs-db upgrade`" in migrate.inspect(empty_db_url).describe()
