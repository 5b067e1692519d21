"""The database schema: one ``MetaData``, native enums, tables, CHECK constraints, triggers and
reporting views.

This module is the *model* of the schema. The migrations in ``migrations/versions`` are frozen
snapshots that build the same thing; the drift tests (``tests/migrations``) compare the two
through PostgreSQL's catalogs, so neither can change without the other.

Everything a rule of the contract needs is enforced inside PostgreSQL, for every writer:

* the consistency rules of §3 are CHECK constraints named ``ck_<table>_<rule>``;
* status changes follow the state machine of §2, checked by ``BEFORE`` triggers that raise
  SQLSTATE ``AE001`` with a message naming both statuses;
* the triggers also keep ``updated_at``, ``started_at`` and ``finished_at`` truthful.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ENUM, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .domain import ID_MAX_LENGTH, ErrorCode, TaskStatus

__all__ = [
    "DDL_STATEMENTS",
    "ERROR_CODE_ROWS",
    "ID_MAX_LENGTH",
    "VIEW_NAMES",
    "Base",
    "ErrorCodeRow",
    "Task",
    "TaskEvent",
    "TaskHistory",
    "Watched",
    "error_code_enum",
    "metadata",
    "task_status_enum",
]

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: Final = MetaData(naming_convention=NAMING_CONVENTION)

# Native enums whose labels are the Python enums' values; through the ORM a column reads back
# as the Python member (``TaskStatus.RUNNING``), not as its string.
task_status_enum: Final = ENUM(
    TaskStatus, name="task_status", metadata=metadata, create_type=True,
    values_callable=lambda members: [m.value for m in members],
)
error_code_enum: Final = ENUM(
    ErrorCode, name="error_code", metadata=metadata, create_type=True,
    values_callable=lambda members: [m.value for m in members],
)

_UNSUCCESSFUL_SQL: Final = "('failed', 'timed_out', 'cancelled')"
_TERMINAL_SQL: Final = "('completed', 'failed', 'timed_out', 'cancelled')"
_NOW: Final = text("now()")
_TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = metadata


def _id_checks(*columns: str) -> list[CheckConstraint]:
    return [
        CheckConstraint(
            f"char_length({c}) BETWEEN 1 AND {ID_MAX_LENGTH}", name=f"{c}_length"
        )
        for c in columns
    ]


def _error_checks() -> list[CheckConstraint]:
    return [
        CheckConstraint(
            "(error_code IS NOT NULL) = (error_message IS NOT NULL AND error_message <> '')",
            name="error_pair",
        ),
        CheckConstraint(
            f"(error_code IS NOT NULL) = (status IN {_UNSUCCESSFUL_SQL})",
            name="error_iff_unsuccessful",
        ),
    ]


class _TaskKey:
    """The key every per-task table starts with (``user_id`` is also the distribution column
    on Citus, see docs/scaling.md)."""

    user_id: Mapped[str] = mapped_column(Text, sort_order=-2)
    task_id: Mapped[str] = mapped_column(Text, sort_order=-2)


class _Outcome:
    """Status, error and activity times: shared by a task and each of its steps. (The
    ``sort_order`` keeps each table's column order as the migrations create it.)"""

    status: Mapped[TaskStatus] = mapped_column(
        task_status_enum, server_default=text("'pending'::task_status"), sort_order=1
    )
    error_code: Mapped[ErrorCode | None] = mapped_column(error_code_enum, sort_order=1)
    error_message: Mapped[str | None] = mapped_column(Text, sort_order=1)
    created_at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW, sort_order=2)
    updated_at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW, sort_order=2)


class ErrorCodeRow(Base):
    """The ``error_codes`` catalog: one row per ``ErrorCode``, for reports to join."""

    __tablename__ = "error_codes"
    __table_args__ = (
        CheckConstraint(
            "category IN ('client', 'timeout', 'execution', 'system')", name="category"
        ),
    )

    code: Mapped[ErrorCode] = mapped_column(error_code_enum, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    category: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)


class Task(_TaskKey, _Outcome, Base):
    """One row per (user_id, task_id): the task's lifecycle."""

    __tablename__ = "tasks"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "task_id"),
        *_id_checks("user_id", "task_id"),
        *_error_checks(),
        CheckConstraint(
            f"(finished_at IS NOT NULL) = (status IN {_TERMINAL_SQL})", name="finished_at"
        ),
        # Listings of a user's tasks, newest first, with a keyset on (updated_at, task_id).
        Index("ix_tasks_user_id_updated_at", "user_id", text("updated_at DESC"),
              text("task_id DESC")),
        # Retention (cleanup_old_tasks) and time-range reports across users.
        Index("ix_tasks_updated_at", "updated_at"),
    )

    started_at: Mapped[dt.datetime | None] = mapped_column(_TZ, sort_order=3)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TZ, sort_order=3)


class TaskHistory(_TaskKey, _Outcome, Base):
    """One row per step of a task (``step`` is its 0-based position)."""

    __tablename__ = "task_history"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "task_id", "step"),
        # The primary key's prefix (user_id, task_id) is the index behind this foreign key.
        ForeignKeyConstraint(
            ["user_id", "task_id"], ["tasks.user_id", "tasks.task_id"], ondelete="CASCADE"
        ),
        CheckConstraint("step >= 0", name="step_index"),
        # The whitespace of domain.BLANK_CHARS (PostgreSQL spells \v as \x0B).
        CheckConstraint(r"btrim(step_name, E' \t\n\r\f\x0B') <> ''", name="step_name"),
        CheckConstraint("completed = (status = 'completed')", name="completed_flag"),
        *_error_checks(),
        # Step queries of one user, newest first, keyset on (updated_at, task_id, step).
        Index("ix_task_history_user_id_updated_at", "user_id", text("updated_at DESC"),
              text("task_id DESC"), text("step DESC")),
        # Failures by error code over time (reports, the failures_by_day view).
        Index("ix_task_history_error_code_created_at", "error_code", "created_at",
              postgresql_where=text("error_code IS NOT NULL")),
        # Reports over a time window: steps are appended in time order, so a BRIN index (one
        # summary per 32 pages, next to nothing per insert) finds the window's blocks;
        # autovacuum summarizes each range as it fills (an unsummarized one is always read).
        Index("ix_task_history_created_at", "created_at", postgresql_using="brin",
              postgresql_with={"pages_per_range": 32, "autosummarize": "on"}),
        # list_tasks(step_name=…): a user's tasks with a step of that name.
        Index("ix_task_history_user_id_step_name", "user_id", "step_name", "task_id"),
    )

    step: Mapped[int] = mapped_column(Integer)
    step_name: Mapped[str] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    completed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    message: Mapped[str] = mapped_column(Text, server_default=text("''"))


class TaskEvent(_TaskKey, Base):
    """One committed change: an insert or update of a step (``step`` set), or a task's status
    change (``step`` NULL). Append-only, written by the triggers below; what watchers follow
    (watch.py). ``tx`` is the writing transaction, ``seq`` the order of writing."""

    __tablename__ = "task_events"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "task_id", "tx", "seq"),
        # A user's task changes (watch_user_tasks), by transaction.
        Index("ix_task_events_user_id_tx", "user_id", "tx", "seq",
              postgresql_where=text("step IS NULL")),
    )

    tx: Mapped[int] = mapped_column(
        BigInteger, server_default=text("((pg_current_xact_id())::text)::bigint")
    )
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    step: Mapped[int | None] = mapped_column(Integer)
    step_name: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    completed: Mapped[bool | None] = mapped_column(Boolean)
    message: Mapped[str | None] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(task_status_enum)
    error_code: Mapped[ErrorCode | None] = mapped_column(error_code_enum)
    error_message: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW)


class Watched(Base):
    """The tasks (``task_id`` '' for all of a user's) that a manager's listener watches, until
    ``until`` unless renewed: the triggers notify only for these."""

    __tablename__ = "aiecs_watched"
    __table_args__ = (PrimaryKeyConstraint("user_id", "task_id", "listener"),)

    user_id: Mapped[str] = mapped_column(Text)
    task_id: Mapped[str] = mapped_column(Text)
    listener: Mapped[str] = mapped_column(Text)
    until: Mapped[dt.datetime] = mapped_column(_TZ)


#: Rows that set aside upstream history could not be adopted (see migration 0002).
legacy_rejects: Final = Table(
    "legacy_task_history_rejects",
    metadata,
    Column("legacy_id", BigInteger, primary_key=True, autoincrement=False),
    Column("reason", Text, nullable=False),
    Column("row_data", JSONB, nullable=False),
    Column("set_aside_at", _TZ, nullable=False, server_default=_NOW),
)

ERROR_CODE_ROWS: Final = tuple(
    {"code": c.value, "name": c.name, "category": c.category, "description": c.description}
    for c in ErrorCode
)

# -- functions, triggers and views ----------------------------------------------------------

# The functions name every object of ours with its schema (``@S@``, the schema they are created
# in) and run with a pinned ``search_path``: a role that can create objects earlier on a
# caller's search_path cannot replace what they call, and they work under the empty
# search_path that pg_dump and pg_restore use. ``in_current_schema`` renders ``@S@`` inside the
# database, so the offline SQL of a migration works in whatever schema it is applied to.
PINNED_SEARCH_PATH: Final = "SET search_path = pg_catalog, pg_temp"

TRANSITION_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_status_transition_allowed(
  from_status @S@.task_status, to_status @S@.task_status)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE {PINNED_SEARCH_PATH} AS $$
  SELECT from_status = to_status
      OR (from_status = 'pending' AND to_status IN ('running', 'cancelled'))
      OR (from_status = 'running'
          AND to_status IN ('completed', 'failed', 'timed_out', 'cancelled'))
$$
"""

def transition_allowed_sql(before: str, after: str) -> str:
    """The state machine (``TaskStatus.can_transition_to``) as a SQL condition on two status
    expressions. The triggers inline it: calling ``aiecs_status_transition_allowed`` from them
    cost about 45 µs a save, since a function with its own ``search_path`` is never inlined."""
    moves = [
        f"({before} = '{old.value}'\n          AND {after} IN ("
        + ", ".join(f"'{new.value}'" for new in TaskStatus
                    if new is not old and old.can_transition_to(new)) + "))"
        for old in TaskStatus
        if any(new is not old and old.can_transition_to(new) for new in TaskStatus)
    ]
    return f"({before} = {after}\n      OR " + "\n      OR ".join(moves) + ")"


TASKS_TRIGGER_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_before_write() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
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
  IF NOT {transition_allowed_sql("previous", "NEW.status")} THEN
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
"""

HISTORY_TRIGGER_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_before_update() RETURNS trigger
LANGUAGE plpgsql {PINNED_SEARCH_PATH} AS $$
BEGIN
  IF NOT {transition_allowed_sql("OLD.status", "NEW.status")} THEN
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
"""


# -- task events: what watchers follow (watch.py) ------------------------------------------------
# Every committed insert or update of a step, and every status change of a task, appends one
# row to task_events. Our own writes log their events in the same statement (the saves append
# the rows their INSERTs return; the bulk path COPYs them) and set ``aiecs.bulk_events`` for
# their transaction, so the insert triggers skip them by their WHEN clause, evaluated without
# entering PL/pgSQL (the trigger cost 15 to 35 µs a row, revision 0005). Row-level AFTER
# triggers log everything else (psql writers, status changes of existing tasks). Each
# trigger also notifies the channel aiecs_events when some manager watches the task (or its
# user) in aiecs_watched, and only then: a notifying commit takes a cluster-wide lock in
# PostgreSQL. Events go with their task (a statement-level AFTER DELETE trigger; a foreign key
# would cost a check on every event).

#: Set for its transaction by every statement of ours that logs its own events (the saves, the
#: bulk path; statements.py): the insert triggers then skip, decided by their WHEN clause.
BULK_EVENTS_SETTING: Final = "aiecs.bulk_events"
EVENTS_NOT_OWN: Final = (
    f"WHEN (current_setting('{BULK_EVENTS_SETTING}', true) IS DISTINCT FROM 'on')"
)

STEP_EVENTS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_changed() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
BEGIN
  IF current_setting('{BULK_EVENTS_SETTING}', true) = 'on' THEN
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
"""

TASK_EVENTS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_changed() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
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
"""

#: On Citus a worker cannot plan a join with the transition table ("unrecognized RTE kind"):
#: there the events go task by task, each a single-shard statement (revision 0006).
TASKS_GONE_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
DECLARE
  k record;
BEGIN
  IF current_setting('citus.version', true) IS NULL THEN
    DELETE FROM @S@.task_events e USING gone g
    WHERE e.user_id = g.user_id AND e.task_id = g.task_id;
  ELSE
    FOR k IN SELECT DISTINCT g.user_id, g.task_id FROM gone g LOOP
      DELETE FROM @S@.task_events e WHERE e.user_id = k.user_id AND e.task_id = k.task_id;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$
"""

#: A save as one call, for Citus (``statements.SAVE_STEPS_CALL``; revision 0006): one user's
#: saves, distinct keys in key order — tasks first, then steps, and the events of both as the
#: plain statement logs them — which Citus runs whole on the node that owns the user
#: (``citus.py`` distributes it by ``p_user_id``). It takes the caller's ``lock_timeout``,
#: which Citus does not pass on to the node. No NOTIFY: on a worker it reaches no client.
SAVE_STEPS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_save_steps(
  p_user_id text, p_task_ids text[], p_steps integer[], p_step_names text[], p_results jsonb[],
  p_completed boolean[], p_messages text[], p_statuses @S@.task_status[],
  p_error_codes @S@.error_code[], p_error_messages text[], p_lock_timeout text) RETURNS void
LANGUAGE plpgsql {PINNED_SEARCH_PATH} AS $$
DECLARE
  fresh CONSTANT timestamptz := now() - interval '1 second';
  task text;
  i integer;
  created boolean;
  row_status @S@.task_status;
  row_code @S@.error_code;
  row_message text;
  row_at timestamptz;
BEGIN
  PERFORM set_config('{BULK_EVENTS_SETTING}', 'on', true);
  IF p_lock_timeout IS NOT NULL THEN  -- the caller's: Citus does not pass it on to the node
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
  END IF;
  FOR task IN SELECT DISTINCT k FROM unnest(p_task_ids) AS k ORDER BY 1 LOOP
    CONTINUE WHEN EXISTS (
      SELECT FROM @S@.tasks f
      WHERE f.user_id = p_user_id AND f.task_id = task AND f.status <> 'pending'
        AND f.updated_at >= fresh);
    INSERT INTO @S@.tasks AS t (user_id, task_id, status) VALUES (p_user_id, task, 'running')
    ON CONFLICT (user_id, task_id) DO UPDATE
      SET status = CASE WHEN t.status = 'pending' THEN 'running'::@S@.task_status
                        ELSE t.status END
      WHERE t.status = 'pending' OR t.updated_at < fresh
    RETURNING t.status, t.error_code, t.error_message, t.updated_at, t.xmax = 0
      INTO row_status, row_code, row_message, row_at, created;
    IF created THEN
      INSERT INTO @S@.task_events (user_id, task_id, status, error_code, error_message, at)
      VALUES (p_user_id, task, row_status, row_code, row_message, row_at);
    END IF;
  END LOOP;
  FOR i IN 1 .. coalesce(cardinality(p_steps), 0) LOOP
    INSERT INTO @S@.task_history AS h (user_id, task_id, step, step_name, result, completed,
                                       message, status, error_code, error_message)
    VALUES (p_user_id, p_task_ids[i], p_steps[i], p_step_names[i], p_results[i],
            p_completed[i], p_messages[i], p_statuses[i], p_error_codes[i],
            p_error_messages[i])
    ON CONFLICT (user_id, task_id, step) DO UPDATE SET
      step_name = EXCLUDED.step_name, result = EXCLUDED.result,
      completed = EXCLUDED.completed, message = EXCLUDED.message, status = EXCLUDED.status,
      error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message
    RETURNING h.updated_at INTO row_at;
    INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed, message,
                                 status, error_code, error_message, at)
    VALUES (p_user_id, p_task_ids[i], p_steps[i], p_step_names[i], p_results[i],
            p_completed[i], p_messages[i], p_statuses[i], p_error_codes[i],
            p_error_messages[i], row_at);
  END LOOP;
END
$$
"""


#: The xmin horizon of the node that holds a user's rows, for watchers on Citus
#: (``statements.WATCH_HORIZON``; revision 0006): their events carry that node's transaction
#: ids, to which the coordinator's own snapshot says nothing. Distributed by ``p_user_id``.
HORIZON_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_xmin_horizon(p_user_id text) RETURNS bigint
LANGUAGE plpgsql STABLE {PINNED_SEARCH_PATH} AS $$
BEGIN
  RETURN pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
END
$$
"""

EVENT_TRIGGERS: Final = (
    f"""CREATE TRIGGER tr_task_history_changed AFTER INSERT OR UPDATE ON task_history
FOR EACH ROW {EVENTS_NOT_OWN} EXECUTE FUNCTION aiecs_task_history_changed()""",
    f"""CREATE TRIGGER tr_tasks_inserted AFTER INSERT ON tasks
FOR EACH ROW {EVENTS_NOT_OWN} EXECUTE FUNCTION aiecs_tasks_changed()""",
    """CREATE TRIGGER tr_tasks_status_changed AFTER UPDATE ON tasks FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.error_code IS DISTINCT FROM NEW.error_code)
EXECUTE FUNCTION aiecs_tasks_changed()""",
    """CREATE TRIGGER tr_tasks_deleted AFTER DELETE ON tasks
REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
EXECUTE FUNCTION aiecs_tasks_deleted()""",
)


def in_current_schema(ddl: str) -> str:
    """``ddl`` as a DO block that replaces ``@S@`` by the current schema (quoted)."""
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


TASKS_TRIGGER: Final = """
CREATE TRIGGER tr_tasks_status_transition BEFORE UPDATE ON tasks
FOR EACH ROW EXECUTE FUNCTION aiecs_tasks_before_write()
"""

#: The same function for a new task, unless it is created running with its start time and no
#: finish time (the rows the saves write: nothing to check, since pending → running is
#: allowed, and nothing to fill in), which spares a save of a new task the PL/pgSQL call
#: (revision 0007). Every other insert is checked and completed as an update is.
TASKS_INSERT_TRIGGER: Final = """
CREATE TRIGGER tr_tasks_status_created BEFORE INSERT ON tasks
FOR EACH ROW WHEN (NEW.status <> 'running' OR NEW.started_at IS NULL
                   OR NEW.finished_at IS NOT NULL)
EXECUTE FUNCTION aiecs_tasks_before_write()
"""

HISTORY_TRIGGER: Final = """
CREATE TRIGGER tr_task_history_status_transition BEFORE UPDATE ON task_history
FOR EACH ROW EXECUTE FUNCTION aiecs_task_history_before_update()
"""

STEP_DETAILS_VIEW: Final = """
CREATE VIEW step_details AS
SELECT h.user_id, h.task_id, h.step, h.step_name, h.status, h.completed, h.message,
       h.error_code, e.name AS error_name, e.category AS error_category,
       e.description AS error_description, h.error_message, h.result,
       h.created_at, h.updated_at
FROM task_history h
LEFT JOIN error_codes e ON e.code = h.error_code
"""

TASK_SUMMARY_VIEW: Final = """
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
"""

FAILURES_BY_DAY_VIEW: Final = """
CREATE VIEW failures_by_day AS
SELECT (h.created_at AT TIME ZONE 'UTC')::date AS day,
       h.error_code, e.name AS error_name, e.category AS error_category,
       count(*) AS failures,
       count(DISTINCT (h.user_id, h.task_id)) AS tasks
FROM task_history h
JOIN error_codes e ON e.code = h.error_code
WHERE h.error_code IS NOT NULL
GROUP BY 1, h.error_code, e.name, e.category
"""

VIEW_NAMES: Final = ("step_details", "task_summary", "failures_by_day")

#: Everything that is not a table, in creation order (``metadata.create_all`` runs these too).
DDL_STATEMENTS: Final = (
    in_current_schema(TRANSITION_FUNCTION),
    in_current_schema(TASKS_TRIGGER_FUNCTION),
    in_current_schema(HISTORY_TRIGGER_FUNCTION),
    TASKS_TRIGGER,
    TASKS_INSERT_TRIGGER,
    HISTORY_TRIGGER,
    in_current_schema(STEP_EVENTS_FUNCTION),
    in_current_schema(TASK_EVENTS_FUNCTION),
    in_current_schema(TASKS_GONE_FUNCTION),
    *EVENT_TRIGGERS,
    in_current_schema(SAVE_STEPS_FUNCTION),
    in_current_schema(HORIZON_FUNCTION),
    STEP_DETAILS_VIEW,
    TASK_SUMMARY_VIEW,
    FAILURES_BY_DAY_VIEW,
)

SEED_ERROR_CODES: Final = "INSERT INTO error_codes (code, name, category, description) VALUES " + (
    ", ".join(
        "('{code}', '{name}', '{category}', '{description}')".format(**row)
        for row in ERROR_CODE_ROWS
    )
)

def _executor(statement: str) -> Any:
    """An event listener running ``statement`` through ``text()`` (``DDL()`` would treat the
    ``%`` of PL/pgSQL's ``RAISE`` as a format character)."""

    def run(target: Any, connection: Any, **kw: Any) -> None:
        connection.execute(text(statement))

    return run


for _ddl in (*DDL_STATEMENTS, SEED_ERROR_CODES):
    event.listen(metadata, "after_create", _executor(_ddl))
for _drop in (
    *(f"DROP VIEW IF EXISTS {v}" for v in reversed(VIEW_NAMES)),
    "DROP FUNCTION IF EXISTS aiecs_save_steps(text, text[], integer[], text[], jsonb[], "
    "boolean[], text[], task_status[], error_code[], text[], text)",
    "DROP FUNCTION IF EXISTS aiecs_xmin_horizon(text)",
    "DROP FUNCTION IF EXISTS aiecs_tasks_changed() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_tasks_deleted() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_task_history_changed() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_tasks_before_write() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_task_history_before_update() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_status_transition_allowed(task_status, task_status)",
):
    event.listen(metadata, "before_drop", _executor(_drop))
