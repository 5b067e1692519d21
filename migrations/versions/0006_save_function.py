"""For Citus: a save as one function call (``aiecs_save_steps``), a watcher's horizon from the
user's node (``aiecs_xmin_horizon``), and a cleanup trigger Citus can run.

On a Citus cluster a save must run on the node that owns its user: Citus sends a whole call of
a function distributed by its user argument to that node (``citus.py`` distributes it), where
each statement of the function is a single-shard statement on local shards. It takes the
caller's ``lock_timeout``, which Citus does not pass on to the node. The function is the
cluster's shape of ``statements.SAVE_STEPS`` (one user's saves: distinct keys in key order):
the tasks first (created running, pending → running, or their activity refreshed when more
than a second old), then each step, and the events of both, as the plain statement logs them.
It exists on plain PostgreSQL too (one schema everywhere; the tests compare both shapes there),
where the managers keep using the single statement.

``aiecs_tasks_deleted`` (the statement trigger that drops a deleted task's events) reads its
transition table in a join, which Citus cannot plan on a worker ("unrecognized RTE kind"): on
Citus it now deletes task by task (each a single-shard statement); elsewhere it is unchanged.

A frozen snapshot (see 0001).

Revision ID: 0006_save_function
Revises: 0005_saves_and_reports
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_save_function"
down_revision: str | Sequence[str] | None = "0005_saves_and_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = """aiecs_save_steps(
  p_user_id text, p_task_ids text[], p_steps integer[], p_step_names text[], p_results jsonb[],
  p_completed boolean[], p_messages text[], p_statuses @S@.task_status[],
  p_error_codes @S@.error_code[], p_error_messages text[], p_lock_timeout text)"""

# Every statement names one user (single-shard on Citus). No NOTIFY: on a cluster it would fire
# on a worker, out of reach of the coordinator's listeners (watchers poll there).
FUNCTION = f"""
CREATE OR REPLACE FUNCTION @S@.{SIGNATURE} RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
  PERFORM set_config('aiecs.bulk_events', 'on', true);
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


# Watchers on Citus read events stamped with the transaction ids of the user's node: their
# horizon must come from that node's snapshot, not the coordinator's.
HORIZON = """
CREATE OR REPLACE FUNCTION @S@.aiecs_xmin_horizon(p_user_id text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
END
$$
"""

DELETED = """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
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

DELETED_BEFORE = """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  DELETE FROM @S@.task_events e USING gone g
  WHERE e.user_id = g.user_id AND e.task_id = g.task_id;
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
    op.execute(_in_current_schema(FUNCTION))
    op.execute(_in_current_schema(HORIZON))
    op.execute(_in_current_schema(DELETED))


def downgrade() -> None:
    op.execute(_in_current_schema(DELETED_BEFORE))
    op.execute(_in_current_schema("DROP FUNCTION IF EXISTS @S@.aiecs_xmin_horizon(text)"))
    # By its argument types alone (the names are not part of its identity).
    op.execute(_in_current_schema(
        "DROP FUNCTION IF EXISTS @S@.aiecs_save_steps(text, text[], integer[], text[], jsonb[], "
        "boolean[], text[], @S@.task_status[], @S@.error_code[], text[], text)"))
