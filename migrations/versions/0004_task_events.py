"""Task events: an append-only log of every committed change, for watchers.

* ``task_events``: one row per committed insert or update of a step, and per status change of a
  task, written by row-level triggers (so psql writers are logged too; the bulk path logs its
  own rows), with the writing transaction's id (``tx``) and the order of writing (``seq``);
  they go with their task (a statement-level delete trigger). Existing rows are logged once
  each, so tasks older than this revision can be watched too.
* ``aiecs_watched``: which tasks (or users) some manager watches; the triggers notify channel
  ``aiecs_events`` for those and no others.

A frozen snapshot (see 0001).

Revision ID: 0004_task_events
Revises: 0003_pin_search_path
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_task_events"
down_revision: str | Sequence[str] | None = "0003_pin_search_path"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF current_setting('aiecs.bulk_events', true) = 'on' THEN
    RETURN NULL;
  END IF;
  INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed, message,
                               status, error_code, error_message, at)
  VALUES (NEW.user_id, NEW.task_id, NEW.step, NEW.step_name, NEW.result, NEW.completed,
          NEW.message, NEW.status, NEW.error_code, NEW.error_message, NEW.updated_at);
  IF EXISTS (SELECT FROM @S@.aiecs_watched w
             WHERE w.user_id = NEW.user_id AND w.task_id = NEW.task_id AND w.until > now()) THEN
    PERFORM pg_notify('aiecs_events', NEW.user_id || chr(31) || NEW.task_id);
  END IF;
  RETURN NULL;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO @S@.task_events (user_id, task_id, status, error_code, error_message, at)
  VALUES (NEW.user_id, NEW.task_id, NEW.status, NEW.error_code, NEW.error_message,
          NEW.updated_at);
  IF EXISTS (SELECT FROM @S@.aiecs_watched w
             WHERE w.user_id = NEW.user_id AND w.task_id IN (NEW.task_id, '')
               AND w.until > now()) THEN
    PERFORM pg_notify('aiecs_events', NEW.user_id || chr(31) || NEW.task_id);
  END IF;
  RETURN NULL;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  DELETE FROM @S@.task_events e USING gone g
  WHERE e.user_id = g.user_id AND e.task_id = g.task_id;
  RETURN NULL;
END
$$
""",
)

TRIGGERS = (
    """CREATE TRIGGER tr_task_history_changed AFTER INSERT OR UPDATE ON task_history
FOR EACH ROW EXECUTE FUNCTION aiecs_task_history_changed()""",
    """CREATE TRIGGER tr_tasks_inserted AFTER INSERT ON tasks
FOR EACH ROW EXECUTE FUNCTION aiecs_tasks_changed()""",
    """CREATE TRIGGER tr_tasks_status_changed AFTER UPDATE ON tasks FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.error_code IS DISTINCT FROM NEW.error_code)
EXECUTE FUNCTION aiecs_tasks_changed()""",
    """CREATE TRIGGER tr_tasks_deleted AFTER DELETE ON tasks
REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
EXECUTE FUNCTION aiecs_tasks_deleted()""",
)

BACKFILL = (
    """INSERT INTO task_events (user_id, task_id, step, step_name, result, completed, message,
                         status, error_code, error_message, at)
SELECT user_id, task_id, step, step_name, result, completed, message, status, error_code,
       error_message, updated_at
FROM task_history ORDER BY updated_at, user_id, task_id, step""",
    """INSERT INTO task_events (user_id, task_id, status, error_code, error_message, at)
SELECT user_id, task_id, status, error_code, error_message, updated_at
FROM tasks ORDER BY updated_at, user_id, task_id""",
)


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def upgrade() -> None:
    op.create_table(
        "task_events",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False,
                  server_default=sa.text("((pg_current_xact_id())::text)::bigint")),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("step_name", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column("completed", sa.Boolean(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("status", postgresql.ENUM(name="task_status", create_type=False),
                  nullable=False),
        sa.Column("error_code", postgresql.ENUM(name="error_code", create_type=False),
                  nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("user_id", "task_id", "tx", "seq", name="pk_task_events"),
    )
    op.create_index("ix_task_events_user_id_tx", "task_events", ["user_id", "tx", "seq"],
                    postgresql_where=sa.text("step IS NULL"))
    op.create_table(
        "aiecs_watched",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("listener", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "task_id", "listener", name="pk_aiecs_watched"),
    )
    for ddl in FUNCTIONS:
        op.execute(_in_current_schema(ddl))
    for ddl in TRIGGERS:
        op.execute(ddl)
    for ddl in BACKFILL:
        op.execute(ddl)


def downgrade() -> None:
    for name, table in (("tr_tasks_deleted", "tasks"), ("tr_tasks_status_changed", "tasks"),
                        ("tr_tasks_inserted", "tasks"),
                        ("tr_task_history_changed", "task_history")):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS aiecs_tasks_deleted()")
    op.execute("DROP FUNCTION IF EXISTS aiecs_tasks_changed()")
    op.execute("DROP FUNCTION IF EXISTS aiecs_task_history_changed()")
    op.drop_table("aiecs_watched")
    op.drop_table("task_events")
