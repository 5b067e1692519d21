"""Costs that stay flat beside many partitions: ``aiecs_tasks_deleted`` drops deleted tasks'
events one bucket at a time, so each delete reads the one partition of its bucket (or none,
once retention detached it); ``aiecs_period_written`` counts a transaction's writes to a
summarized partition once, not once per row; ``aiecs_task_bucket`` gives a task's bucket to a
load, which then opens the one partition of its steps.

``ix_task_history_user_id_step_name`` loses its last column, ``task_id``: a user's steps of one
name then share one key, which PostgreSQL stores once with the list of their rows (10 bytes a
step, where the three columns took 56). On a plain server the new index is built on each
partition ``CONCURRENTLY``, while writers go on; one short transaction then swaps the
partitioned index (on Citus, and offline, it is built in place).

A frozen snapshot (see 0001).

Revision ID: 0012_partition_costs
Revises: 0011_events_retention
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

revision: str = "0012_partition_costs"
down_revision: str | Sequence[str] | None = "0011_events_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_TASKS_DELETED = """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  k record;
  b timestamptz;
BEGIN
  IF current_setting('citus.version', true) IS NULL THEN
    FOR b IN SELECT DISTINCT g.bucket FROM gone g LOOP
      DELETE FROM @S@.task_events e USING gone g
      WHERE e.bucket = b AND g.bucket = b
        AND e.user_id = g.user_id AND e.task_id = g.task_id;
    END LOOP;
  ELSE
    FOR k IN SELECT DISTINCT g.user_id, g.task_id, g.bucket FROM gone g LOOP
      DELETE FROM @S@.task_events e
      WHERE e.user_id = k.user_id AND e.task_id = k.task_id AND e.bucket = k.bucket;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$
"""

OLD_TASKS_DELETED = """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  k record;
BEGIN
  IF current_setting('citus.version', true) IS NULL THEN
    DELETE FROM @S@.task_events e USING gone g
    WHERE e.user_id = g.user_id AND e.task_id = g.task_id AND e.bucket = g.bucket;
  ELSE
    FOR k IN SELECT DISTINCT g.user_id, g.task_id, g.bucket FROM gone g LOOP
      DELETE FROM @S@.task_events e
      WHERE e.user_id = k.user_id AND e.task_id = k.task_id AND e.bucket = k.bucket;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$
"""

TASK_BUCKET = """
CREATE OR REPLACE FUNCTION @S@.aiecs_task_bucket(p_user_id text, p_task_id text)
RETURNS timestamptz LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (SELECT t.bucket FROM @S@.tasks t
          WHERE t.user_id = p_user_id AND t.task_id = p_task_id);
END
$$
"""

NEW_WRITTEN = """
CREATE OR REPLACE FUNCTION @S@.aiecs_period_written() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF current_setting('aiecs.written_' || TG_TABLE_NAME, true) IS DISTINCT FROM 'on' THEN
    UPDATE @S@.aiecs_period_summaries SET writes = writes + 1 WHERE partition = TG_TABLE_NAME;
    PERFORM set_config('aiecs.written_' || TG_TABLE_NAME, 'on', true);
  END IF;
  RETURN NULL;
END
$$
"""

OLD_WRITTEN = """
CREATE OR REPLACE FUNCTION @S@.aiecs_period_written() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  UPDATE @S@.aiecs_period_summaries SET writes = writes + 1 WHERE partition = TG_TABLE_NAME;
  RETURN NULL;
END
$$
"""


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


STEP_NAME_INDEX = "ix_task_history_user_id_step_name"
NEW_STEP_NAME_COLUMNS = ("user_id", "step_name")
OLD_STEP_NAME_COLUMNS = ("user_id", "step_name", "task_id")


def _partitions() -> list[str]:
    return [str(name) for (name,) in op.get_bind().exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'task_history'::regclass ORDER BY 1").fetchall()]


def _online() -> bool:
    """Whether to build the index partition by partition, concurrently: on a plain server."""
    if context.is_offline_mode():
        return False
    return not op.get_bind().exec_driver_sql(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").scalar()


def _step_name_index(columns: Sequence[str]) -> None:
    """``STEP_NAME_INDEX`` on ``columns``. Online: each partition's index built concurrently
    first (named as PostgreSQL names a partition's index), then, in the migration's
    transaction, the partitioned index dropped and made again over them (a partition created
    meanwhile gets its index there)."""
    listed = ", ".join(columns)
    suffix = "_".join(columns) + "_idx"
    if not _online():
        op.execute(f"DROP INDEX {STEP_NAME_INDEX}")
        op.execute(f"CREATE INDEX {STEP_NAME_INDEX} ON task_history ({listed})")
        return
    with op.get_context().autocommit_block():
        for partition in _partitions():
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {partition}_{suffix} "
                       f"ON {partition} ({listed})")
    op.execute(f"DROP INDEX {STEP_NAME_INDEX}")
    op.execute(f"CREATE INDEX {STEP_NAME_INDEX} ON ONLY task_history ({listed})")
    for partition in _partitions():
        op.execute(f"CREATE INDEX IF NOT EXISTS {partition}_{suffix} ON {partition} ({listed})")
        op.execute(f"ALTER INDEX {STEP_NAME_INDEX} ATTACH PARTITION {partition}_{suffix}")


def upgrade() -> None:
    _step_name_index(NEW_STEP_NAME_COLUMNS)
    op.execute(_in_current_schema(NEW_TASKS_DELETED))
    op.execute(_in_current_schema(NEW_WRITTEN))
    op.execute(_in_current_schema(TASK_BUCKET))


def downgrade() -> None:
    op.execute("DROP FUNCTION aiecs_task_bucket(text, text)")
    op.execute(_in_current_schema(OLD_TASKS_DELETED))
    op.execute(_in_current_schema(OLD_WRITTEN))
    _step_name_index(OLD_STEP_NAME_COLUMNS)
