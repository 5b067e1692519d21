"""Harden the schema's functions, and make the step-name rule match Python's.

* Every function names our objects with their schema and runs with ``search_path`` pinned to
  ``pg_catalog, pg_temp``: a role that can create objects earlier on a caller's search_path can
  no longer replace what the triggers call, and the triggers work under the empty search_path
  that pg_dump and pg_restore use (a data-only restore into an upgraded database).
* ``ck_task_history_step_name`` strips vertical tab as Python does: PostgreSQL has no ``\\v``
  escape, so the old rule stripped the letter ``v`` (a step named ``vv`` was refused). It is
  added ``NOT VALID`` and validated in its own transaction, so writers are not blocked while
  the table is scanned.

A frozen snapshot (see 0001).

Revision ID: 0003_pin_search_path
Revises: 0002_adopt_upstream
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_pin_search_path"
down_revision: str | Sequence[str] | None = "0002_adopt_upstream"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_status_transition_allowed(
  from_status @S@.task_status, to_status @S@.task_status)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
  SELECT from_status = to_status
      OR (from_status = 'pending' AND to_status IN ('running', 'cancelled'))
      OR (from_status = 'running'
          AND to_status IN ('completed', 'failed', 'timed_out', 'cancelled'))
$$
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_before_write() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  previous @S@.task_status;
BEGIN
  -- A task comes into existence pending: an INSERT is checked as a move from pending.
  IF TG_OP = 'INSERT' THEN
    previous := 'pending';
  ELSE
    previous := OLD.status;
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
      NEW.updated_at := now();
    END IF;
  END IF;
  IF NOT @S@.aiecs_status_transition_allowed(previous, NEW.status) THEN
    RAISE EXCEPTION 'illegal status transition for task %/%: % -> %',
        NEW.user_id, NEW.task_id, previous, NEW.status
      USING ERRCODE = 'AE001',
            DETAIL = format('tasks.status cannot move from %s to %s', previous, NEW.status),
            HINT = 'Allowed: pending -> running | cancelled; running -> completed | failed '
                   '| timed_out | cancelled; and a status to itself.',
            TABLE = 'tasks', COLUMN = 'status', CONSTRAINT = 'tr_tasks_status_transition';
  END IF;
  IF NEW.status <> 'pending' AND NEW.status <> 'cancelled' AND NEW.started_at IS NULL THEN
    NEW.started_at := NEW.updated_at;
  END IF;
  IF NEW.status IN ('completed', 'failed', 'timed_out', 'cancelled') THEN
    IF NEW.finished_at IS NULL THEN
      NEW.finished_at := NEW.updated_at;
    END IF;
  ELSE
    NEW.finished_at := NULL;
  END IF;
  RETURN NEW;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_before_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF NOT @S@.aiecs_status_transition_allowed(OLD.status, NEW.status) THEN
    RAISE EXCEPTION 'illegal status transition for step % of task %/%: % -> %',
        OLD.step, OLD.user_id, OLD.task_id, OLD.status, NEW.status
      USING ERRCODE = 'AE001',
            DETAIL = format('task_history.status cannot move from %s to %s',
                            OLD.status, NEW.status),
            HINT = 'Allowed: pending -> running | cancelled; running -> completed | failed '
                   '| timed_out | cancelled; and a status to itself.',
            TABLE = 'task_history', COLUMN = 'status',
            CONSTRAINT = 'tr_task_history_status_transition';
  END IF;
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END
$$
""",
)


OLD_FUNCTIONS = (
    """
CREATE FUNCTION aiecs_status_transition_allowed(from_status task_status, to_status task_status)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT from_status = to_status
      OR (from_status = 'pending' AND to_status IN ('running', 'cancelled'))
      OR (from_status = 'running'
          AND to_status IN ('completed', 'failed', 'timed_out', 'cancelled'))
$$
""",
    """
CREATE FUNCTION aiecs_tasks_before_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  previous task_status;
BEGIN
  -- A task comes into existence pending: an INSERT is checked as a move from pending.
  IF TG_OP = 'INSERT' THEN
    previous := 'pending';
  ELSE
    previous := OLD.status;
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
      NEW.updated_at := now();
    END IF;
  END IF;
  IF NOT aiecs_status_transition_allowed(previous, NEW.status) THEN
    RAISE EXCEPTION 'illegal status transition for task %/%: % -> %',
        NEW.user_id, NEW.task_id, previous, NEW.status
      USING ERRCODE = 'AE001',
            DETAIL = format('tasks.status cannot move from %s to %s', previous, NEW.status),
            HINT = 'Allowed: pending -> running | cancelled; running -> completed | failed '
                   '| timed_out | cancelled; and a status to itself.',
            TABLE = 'tasks', COLUMN = 'status',
            CONSTRAINT = 'tr_tasks_status_transition';
  END IF;
  IF NEW.status <> 'pending' AND NEW.status <> 'cancelled' AND NEW.started_at IS NULL THEN
    NEW.started_at := NEW.updated_at;
  END IF;
  IF NEW.status IN ('completed', 'failed', 'timed_out', 'cancelled') THEN
    IF NEW.finished_at IS NULL THEN
      NEW.finished_at := NEW.updated_at;
    END IF;
  ELSE
    NEW.finished_at := NULL;
  END IF;
  RETURN NEW;
END
$$
""",
    """
CREATE FUNCTION aiecs_task_history_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT aiecs_status_transition_allowed(OLD.status, NEW.status) THEN
    RAISE EXCEPTION 'illegal status transition for step % of task %/%: % -> %',
        OLD.step, OLD.user_id, OLD.task_id, OLD.status, NEW.status
      USING ERRCODE = 'AE001',
            DETAIL = format('task_history.status cannot move from %s to %s',
                            OLD.status, NEW.status),
            HINT = 'Allowed: pending -> running | cancelled; running -> completed | failed '
                   '| timed_out | cancelled; and a status to itself.',
            TABLE = 'task_history', COLUMN = 'status',
            CONSTRAINT = 'tr_task_history_status_transition';
  END IF;
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END
$$
""",
)


STEP_NAME_RULE = r"btrim(step_name, E' \t\n\r\f\x0B') <> ''"
OLD_STEP_NAME_RULE = r"btrim(step_name, E' \t\n\r\f\v') <> ''"


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def _replace_step_name_rule(rule: str) -> None:
    op.execute(
        "ALTER TABLE task_history DROP CONSTRAINT ck_task_history_step_name, "
        f"ADD CONSTRAINT ck_task_history_step_name CHECK ({rule}) NOT VALID"
    )
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE task_history VALIDATE CONSTRAINT ck_task_history_step_name")


def upgrade() -> None:
    for ddl in FUNCTIONS:
        op.execute(_in_current_schema(ddl))
    _replace_step_name_rule(STEP_NAME_RULE)


def downgrade() -> None:
    for ddl in OLD_FUNCTIONS:
        op.execute(ddl.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    _replace_step_name_rule(OLD_STEP_NAME_RULE)
