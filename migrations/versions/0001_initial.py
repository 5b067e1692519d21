"""Initial schema: enums, tasks, task_history, error_codes, triggers, reporting views.

If the database already holds upstream AIECS's ``task_history`` table, it is renamed to
``legacy_task_history`` first (revision 0002 adopts its rows; a downgrade renames it back).

A frozen snapshot: it does not import the models, so later model changes cannot rewrite it.
The drift tests compare what it builds with ``aiecs_persistence.schema``.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("pending", "running", "completed", "cancelled", "timed_out", "failed")
CODES = ("E001", "E002", "E003", "E004", "E005", "E006", "E007")
ERROR_CODES = (
    ("E001", "VALIDATION_ERROR", "client", "Parameter validation error"),
    ("E002", "TIMEOUT_ERROR", "timeout", "Execution timeout error"),
    ("E003", "EXECUTION_ERROR", "execution", "Execution error"),
    ("E004", "CANCELLED_ERROR", "system", "Cancellation error"),
    ("E005", "RETRY_EXHAUSTED", "system", "Retry exhausted error"),
    ("E006", "DATABASE_ERROR", "system", "Database error"),
    ("E007", "DSL_EVALUATION_ERROR", "system", "DSL evaluation error"),
)

RENAME_UPSTREAM = """
DO $$
BEGIN
  IF to_regclass('task_history') IS NOT NULL THEN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'task_history'
                 AND column_name = 'timestamp')
       AND NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = current_schema() AND table_name = 'task_history'
                         AND column_name = 'step_name') THEN
      ALTER TABLE task_history RENAME TO legacy_task_history;
    ELSE
      RAISE EXCEPTION 'a table task_history already exists and is not upstream AIECS history'
        USING HINT = 'Rename or drop it, or use another database or schema.';
    END IF;
  END IF;
END
$$
"""

FUNCTIONS = (
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

TRIGGERS = (
    """
CREATE TRIGGER tr_tasks_status_transition BEFORE INSERT OR UPDATE ON tasks
FOR EACH ROW EXECUTE FUNCTION aiecs_tasks_before_write()
""",
    """
CREATE TRIGGER tr_task_history_status_transition BEFORE UPDATE ON task_history
FOR EACH ROW EXECUTE FUNCTION aiecs_task_history_before_update()
""",
)

VIEWS = (
    """
CREATE VIEW step_details AS
SELECT h.user_id, h.task_id, h.step, h.step_name, h.status, h.completed, h.message,
       h.error_code, e.name AS error_name, e.category AS error_category,
       e.description AS error_description, h.error_message, h.result,
       h.created_at, h.updated_at
FROM task_history h
LEFT JOIN error_codes e ON e.code = h.error_code
""",
    """
CREATE VIEW task_summary AS
SELECT t.user_id, t.task_id, t.status, t.error_code, t.error_message,
       count(h.step) AS steps,
       count(h.step) FILTER (WHERE h.status = 'completed') AS completed_steps,
       count(h.step) FILTER (WHERE h.status IN ('failed', 'timed_out', 'cancelled'))
         AS failed_steps,
       t.created_at, t.started_at, t.finished_at,
       LEAST(t.created_at, min(h.created_at)) AS first_activity,
       GREATEST(t.updated_at, max(h.updated_at)) AS last_activity,
       COALESCE(t.finished_at, GREATEST(t.updated_at, max(h.updated_at)))
         - COALESCE(t.started_at, t.created_at) AS duration
FROM tasks t
LEFT JOIN task_history h ON h.user_id = t.user_id AND h.task_id = t.task_id
GROUP BY t.user_id, t.task_id
""",
    """
CREATE VIEW failures_by_day AS
SELECT (h.created_at AT TIME ZONE 'UTC')::date AS day,
       h.error_code, e.name AS error_name, e.category AS error_category,
       count(*) AS failures,
       count(DISTINCT (h.user_id, h.task_id)) AS tasks
FROM task_history h
JOIN error_codes e ON e.code = h.error_code
WHERE h.error_code IS NOT NULL
GROUP BY 1, h.error_code, e.name, e.category
""",
)


def _error_checks(table: str) -> list[sa.CheckConstraint]:
    return [
        sa.CheckConstraint(
            "(error_code IS NOT NULL) = (error_message IS NOT NULL AND error_message <> '')",
            name=op.f(f"ck_{table}_error_pair"),
        ),
        sa.CheckConstraint(
            "(error_code IS NOT NULL) = (status IN ('failed', 'timed_out', 'cancelled'))",
            name=op.f(f"ck_{table}_error_iff_unsuccessful"),
        ),
    ]


def upgrade() -> None:
    op.execute(RENAME_UPSTREAM)
    op.execute("CREATE TYPE task_status AS ENUM (" + ", ".join(f"'{s}'" for s in STATUSES) + ")")
    op.execute("CREATE TYPE error_code AS ENUM (" + ", ".join(f"'{c}'" for c in CODES) + ")")
    status = postgresql.ENUM(*STATUSES, name="task_status", create_type=False)
    code = postgresql.ENUM(*CODES, name="error_code", create_type=False)
    tz = sa.DateTime(timezone=True)
    now = sa.text("now()")

    op.create_table(
        "error_codes",
        sa.Column("code", code, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_error_codes")),
        sa.UniqueConstraint("name", name=op.f("uq_error_codes_name")),
        sa.CheckConstraint(
            "category IN ('client', 'timeout', 'execution', 'system')",
            name=op.f("ck_error_codes_category"),
        ),
    )
    op.execute(
        "INSERT INTO error_codes (code, name, category, description) VALUES "
        + ", ".join(f"('{c}', '{n}', '{cat}', '{d}')" for c, n, cat, d in ERROR_CODES)
    )

    op.create_table(
        "tasks",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("status", status, server_default=sa.text("'pending'::task_status"),
                  nullable=False),
        sa.Column("error_code", code, nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", tz, server_default=now, nullable=False),
        sa.Column("updated_at", tz, server_default=now, nullable=False),
        sa.Column("started_at", tz, nullable=True),
        sa.Column("finished_at", tz, nullable=True),
        sa.PrimaryKeyConstraint("user_id", "task_id", name=op.f("pk_tasks")),
        sa.CheckConstraint("char_length(user_id) BETWEEN 1 AND 255",
                           name=op.f("ck_tasks_user_id_length")),
        sa.CheckConstraint("char_length(task_id) BETWEEN 1 AND 255",
                           name=op.f("ck_tasks_task_id_length")),
        *_error_checks("tasks"),
        sa.CheckConstraint(
            "(finished_at IS NOT NULL) = "
            "(status IN ('completed', 'failed', 'timed_out', 'cancelled'))",
            name=op.f("ck_tasks_finished_at"),
        ),
    )
    op.create_index(
        op.f("ix_tasks_user_id_updated_at"),
        "tasks",
        ["user_id", sa.text("updated_at DESC"), sa.text("task_id DESC")],
    )
    op.create_index(op.f("ix_tasks_updated_at"), "tasks", ["updated_at"])

    op.create_table(
        "task_history",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_name", sa.Text(), nullable=False),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column("completed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("message", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("status", status, server_default=sa.text("'pending'::task_status"),
                  nullable=False),
        sa.Column("error_code", code, nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", tz, server_default=now, nullable=False),
        sa.Column("updated_at", tz, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "task_id", "step", name=op.f("pk_task_history")),
        sa.ForeignKeyConstraint(
            ["user_id", "task_id"],
            ["tasks.user_id", "tasks.task_id"],
            name=op.f("fk_task_history_tasks"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("step >= 0", name=op.f("ck_task_history_step_index")),
        sa.CheckConstraint(r"btrim(step_name, E' \t\n\r\f\v') <> ''",
                           name=op.f("ck_task_history_step_name")),
        sa.CheckConstraint("completed = (status = 'completed')",
                           name=op.f("ck_task_history_completed_flag")),
        *_error_checks("task_history"),
    )
    op.create_index(
        op.f("ix_task_history_user_id_updated_at"),
        "task_history",
        ["user_id", sa.text("updated_at DESC"), sa.text("task_id DESC"), sa.text("step DESC")],
    )
    op.create_index(
        op.f("ix_task_history_error_code_created_at"),
        "task_history",
        ["error_code", "created_at"],
        postgresql_where=sa.text("error_code IS NOT NULL"),
    )

    op.create_table(
        "legacy_task_history_rejects",
        sa.Column("legacy_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("row_data", postgresql.JSONB(), nullable=False),
        sa.Column("set_aside_at", tz, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("legacy_id", name=op.f("pk_legacy_task_history_rejects")),
    )

    for statement in (*FUNCTIONS, *TRIGGERS, *VIEWS):
        op.execute(statement)


def downgrade() -> None:
    for view in ("failures_by_day", "task_summary", "step_details"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("legacy_task_history_rejects")
    op.drop_table("task_history")
    op.drop_table("tasks")
    op.drop_table("error_codes")
    op.execute("DROP FUNCTION IF EXISTS aiecs_tasks_before_write()")
    op.execute("DROP FUNCTION IF EXISTS aiecs_task_history_before_update()")
    op.execute("DROP FUNCTION IF EXISTS aiecs_status_transition_allowed(task_status, task_status)")
    op.execute("DROP TYPE IF EXISTS error_code")
    op.execute("DROP TYPE IF EXISTS task_status")
    op.execute(
        "DO $$ BEGIN IF to_regclass('legacy_task_history') IS NOT NULL THEN "
        "ALTER TABLE legacy_task_history RENAME TO task_history; END IF; END $$"
    )
