"""A row keeps its keys and its creation time for every writer: an UPDATE of ``user_id``,
``task_id``, ``step`` or ``created_at`` (of ``tasks`` and ``task_history``; of ``task_events``,
its keys, ``tx``, ``seq`` and ``at``) fails with SQLSTATE AE002 naming the column, instead of
moving a step into another task or rewriting its history. Each trigger fires only when one of
those columns changes (its WHEN clause), so other updates do not enter PL/pgSQL.

A frozen snapshot (see 0001).

Revision ID: 0009_immutable_keys
Revises: 0008_transition_function
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009_immutable_keys"
down_revision: str | Sequence[str] | None = "0008_transition_function"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE OR REPLACE FUNCTION @S@.aiecs_keys_immutable() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  changed text;
BEGIN
  -- TG_ARGV: the table's name (a Citus shard's own name carries a suffix), then its columns.
  SELECT c INTO changed FROM unnest(TG_ARGV[1:]) AS c
  WHERE to_jsonb(NEW) -> c IS DISTINCT FROM to_jsonb(OLD) -> c
  LIMIT 1;
  RAISE EXCEPTION '%.% cannot change: a row keeps its keys and its creation time',
      TG_ARGV[0], changed
    USING ERRCODE = 'AE002', TABLE = TG_ARGV[0], COLUMN = changed,
          CONSTRAINT = TG_NAME, HINT = 'Insert a new row instead.';
END
$$
"""

TRIGGERS = (
    """CREATE TRIGGER tr_tasks_keys_immutable BEFORE UPDATE ON tasks
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.created_at IS DISTINCT FROM OLD.created_at)
EXECUTE FUNCTION aiecs_keys_immutable('tasks', 'user_id', 'task_id', 'created_at')""",
    """CREATE TRIGGER tr_task_history_keys_immutable BEFORE UPDATE ON task_history
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.step IS DISTINCT FROM OLD.step
   OR NEW.created_at IS DISTINCT FROM OLD.created_at)
EXECUTE FUNCTION aiecs_keys_immutable('task_history', 'user_id', 'task_id', 'step',
                                       'created_at')""",
    """CREATE TRIGGER tr_task_events_keys_immutable BEFORE UPDATE ON task_events
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.step IS DISTINCT FROM OLD.step
   OR NEW.tx IS DISTINCT FROM OLD.tx
   OR NEW.seq IS DISTINCT FROM OLD.seq
   OR NEW.at IS DISTINCT FROM OLD.at)
EXECUTE FUNCTION aiecs_keys_immutable('task_events', 'user_id', 'task_id', 'step', 'tx', 'seq',
                                       'at')""",
)

TABLES = ("tasks", "task_history", "task_events")


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def upgrade() -> None:
    op.execute(_in_current_schema(FUNCTION))
    for trigger in TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS tr_{table}_keys_immutable ON {table}")
    op.execute("DROP FUNCTION IF EXISTS aiecs_keys_immutable()")
