"""Deletes that stay cheap beside many partitions: ``aiecs_tasks_deleted`` drops deleted
tasks' events one bucket at a time, so each delete reads the one partition of its bucket (or
none, once retention detached it), and ``aiecs_period_written`` counts a transaction's writes
to a summarized partition once, not once per row.

A frozen snapshot (see 0001).

Revision ID: 0012_cheaper_deletes
Revises: 0011_events_retention
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_cheaper_deletes"
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


def upgrade() -> None:
    op.execute(_in_current_schema(NEW_TASKS_DELETED))
    op.execute(_in_current_schema(NEW_WRITTEN))


def downgrade() -> None:
    op.execute(_in_current_schema(OLD_TASKS_DELETED))
    op.execute(_in_current_schema(OLD_WRITTEN))
