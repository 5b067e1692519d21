"""Row-level security, for tenants: ``aiecs_scopes`` holds which roles see (and write) which
users' rows; ``tasks``, ``task_history``, ``task_events``, ``aiecs_watched``,
``aiecs_period_summaries`` and ``aiecs_scopes`` get row-level security, forced on their owner
too, and one permissive policy ``aiecs_rows`` that lets every role see and write every row (the
restrictive policies of scoped roles are added by ``aiecs-db scope``). The reporting views run
as their caller (``security_invoker``), and so does ``aiecs_window_start``, so that a scoped
role sees through them only its own users. ``aiecs_scope_patterns`` gives the policies the
current role's patterns. The event triggers notify each listener watching a task on a channel
of its own (``aiecs_events_`` and its id), no longer every listener on one channel.

On Citus the tables keep no row-level security: Citus drops ``AS RESTRICTIVE`` when it passes a
policy on to the shards, and refuses a policy with a subquery; ``aiecs-db scope`` refuses there.

A frozen snapshot (see 0001).

Revision ID: 0013_row_security
Revises: 0012_partition_costs
Create Date: 2026-12-04
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0013_row_security"
down_revision: str | Sequence[str] | None = "0012_partition_costs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("task_history", "tasks", "task_events", "aiecs_watched", "aiecs_period_summaries",
          "aiecs_scopes")
#: How long the revision waits for its tables' locks at a time, and how often it tries.
LOCK_WAIT, LOCK_ATTEMPTS = "200ms", 100


def _lock() -> None:
    """Every table at once, before changing any: writers lock them in various orders (a save:
    the steps, then the task; a hand-written one: the task first), so waiting for one while
    holding another could deadlock with a writer. Each try waits at most ``LOCK_WAIT`` (a
    writer queued behind it waits no longer, well under the deadlock timeout), then lets go of
    what it holds, and tries again."""
    statement = "LOCK TABLE " + ", ".join(TABLES) + " IN ACCESS EXCLUSIVE MODE"
    # What earlier revisions of this run did is committed first: their locks (0012 swaps an
    # index of task_history) would otherwise be held while this waits for the others.
    with op.get_context().autocommit_block():
        pass
    if context.is_offline_mode():
        op.execute(statement)
        return
    conn = op.get_bind()
    kept = conn.exec_driver_sql("SELECT current_setting('lock_timeout')").scalar()
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
                conn.exec_driver_sql(statement)
            break
        except sa.exc.OperationalError:
            if attempt == LOCK_ATTEMPTS:
                raise
            time.sleep(0.01 * min(attempt, 10))
    conn.exec_driver_sql("SELECT set_config('lock_timeout', %(kept)s, true)", {"kept": kept})


VIEWS = ("step_details", "task_summary", "failures_by_day")

SCOPE_PATTERNS = """
CREATE OR REPLACE FUNCTION @S@.aiecs_scope_patterns(p_writes boolean)
RETURNS text[] LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (SELECT coalesce(array_agg(p.pattern), '{}')
          FROM @S@.aiecs_scopes s CROSS JOIN LATERAL unnest(s.patterns) AS p(pattern)
          WHERE s.role = current_user AND (s.writes OR NOT p_writes));
END
$$
"""

WINDOW_START = """
CREATE OR REPLACE FUNCTION @S@.aiecs_window_start(p_since timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE %s SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN p_since IS NULL THEN '-infinity'::timestamptz
              ELSE coalesce((SELECT min(t.bucket) FROM @S@.tasks t
                             WHERE t.updated_at >= p_since - interval '1 second'),
                            'infinity') END
$$
"""

#: Each listener is notified on a channel of its own, for the tasks it registered.
NEW_STEP_EVENTS = """
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF current_setting('aiecs.bulk_events', true) = 'on' THEN
    RETURN NULL;
  END IF;
  INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at, bucket)
  VALUES (NEW.user_id, NEW.task_id, NEW.step, NEW.step_name, NEW.result, NEW.completed,
          NEW.message, NEW.status, NEW.error_code, NEW.error_message, NEW.updated_at,
          NEW.bucket);
  -- A step written by hand is activity of its task, as a save's is (WINDOW_START_FUNCTION).
  UPDATE @S@.tasks SET updated_at = greatest(NEW.created_at, NEW.updated_at)
  WHERE user_id = NEW.user_id AND task_id = NEW.task_id
    AND updated_at < greatest(NEW.created_at, NEW.updated_at);
  PERFORM pg_notify('aiecs_events_' || w.listener, NEW.user_id || chr(31) || NEW.task_id)
  FROM @S@.aiecs_watched w
  WHERE w.user_id = NEW.user_id AND w.task_id = NEW.task_id AND w.until > now();
  RETURN NULL;
END
$$
"""

OLD_STEP_EVENTS = """
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF current_setting('aiecs.bulk_events', true) = 'on' THEN
    RETURN NULL;
  END IF;
  INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at, bucket)
  VALUES (NEW.user_id, NEW.task_id, NEW.step, NEW.step_name, NEW.result, NEW.completed,
          NEW.message, NEW.status, NEW.error_code, NEW.error_message, NEW.updated_at,
          NEW.bucket);
  -- A step written by hand is activity of its task, as a save's is (WINDOW_START_FUNCTION).
  UPDATE @S@.tasks SET updated_at = greatest(NEW.created_at, NEW.updated_at)
  WHERE user_id = NEW.user_id AND task_id = NEW.task_id
    AND updated_at < greatest(NEW.created_at, NEW.updated_at);
  IF EXISTS (SELECT FROM @S@.aiecs_watched w
             WHERE w.user_id = NEW.user_id AND w.task_id = NEW.task_id AND w.until > now()) THEN
    PERFORM pg_notify('aiecs_events', NEW.user_id || chr(31) || NEW.task_id);
  END IF;
  RETURN NULL;
END
$$
"""

NEW_TASK_EVENTS = """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO @S@.task_events (user_id, task_id, status, error_code, error_message, at,
                               bucket)
  VALUES (NEW.user_id, NEW.task_id, NEW.status, NEW.error_code, NEW.error_message,
          NEW.updated_at, NEW.bucket);
  PERFORM pg_notify('aiecs_events_' || w.listener, NEW.user_id || chr(31) || NEW.task_id)
  FROM @S@.aiecs_watched w
  WHERE w.user_id = NEW.user_id AND w.task_id IN (NEW.task_id, '') AND w.until > now();
  RETURN NULL;
END
$$
"""

OLD_TASK_EVENTS = """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO @S@.task_events (user_id, task_id, status, error_code, error_message, at,
                               bucket)
  VALUES (NEW.user_id, NEW.task_id, NEW.status, NEW.error_code, NEW.error_message,
          NEW.updated_at, NEW.bucket);
  IF EXISTS (SELECT FROM @S@.aiecs_watched w
             WHERE w.user_id = NEW.user_id AND w.task_id IN (NEW.task_id, '')
               AND w.until > now()) THEN
    PERFORM pg_notify('aiecs_events', NEW.user_id || chr(31) || NEW.task_id);
  END IF;
  RETURN NULL;
END
$$
"""


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def _on_citus() -> bool:
    if context.is_offline_mode():
        return False
    return bool(op.get_bind().exec_driver_sql(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").scalar())


def _grant_readers() -> None:
    """The views now read the tables as their caller: a role that reads a view (``aiecs-db
    grant``'s reader) is granted the tables behind it, so its reports go on working."""
    if context.is_offline_mode():
        return
    readers = [str(r) for (r,) in op.get_bind().exec_driver_sql(
        "SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%(v)s) "
        "AND a.privilege_type = 'SELECT' AND a.grantee <> 0 AND a.grantee <> c.relowner "
        "ORDER BY 1", {"v": list(VIEWS)}).fetchall()]
    for reader in readers:
        op.execute(f"GRANT SELECT ON tasks, task_history, error_codes TO {reader}")


def upgrade() -> None:
    op.create_table(
        "aiecs_scopes",
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("patterns", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("writes", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("cardinality(patterns) > 0", name="patterns"),
        sa.PrimaryKeyConstraint("role"),
    )
    op.execute(_in_current_schema(SCOPE_PATTERNS))
    op.execute(_in_current_schema(WINDOW_START % ""))
    op.execute(_in_current_schema(NEW_STEP_EVENTS))
    op.execute(_in_current_schema(NEW_TASK_EVENTS))
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} SET (security_invoker = true)")
    _grant_readers()
    if _on_citus():
        return
    _lock()
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY aiecs_rows ON {table} USING (true) WITH CHECK (true)")


def downgrade() -> None:
    _lock()
    if not context.is_offline_mode():  # the scoped roles' policies too (aiecs-db scope)
        for table, policy in op.get_bind().exec_driver_sql(
                "SELECT tablename, policyname FROM pg_policies "
                "WHERE schemaname = current_schema() AND tablename = ANY(%(t)s)",
                {"t": list(TABLES)}).fetchall():
            op.execute(f'DROP POLICY "{policy}" ON {table}')
    else:
        for table in TABLES:
            op.execute(f"DROP POLICY IF EXISTS aiecs_rows ON {table}")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} RESET (security_invoker)")
    op.execute(_in_current_schema(WINDOW_START % "SECURITY DEFINER"))
    op.execute(_in_current_schema(OLD_STEP_EVENTS))
    op.execute(_in_current_schema(OLD_TASK_EVENTS))
    op.execute("DROP FUNCTION aiecs_scope_patterns(boolean)")
    op.drop_table("aiecs_scopes")
