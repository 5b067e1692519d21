"""Adopt upstream AIECS history (renamed to ``legacy_task_history`` by 0001), if any.

Every legacy row is either adopted or set aside in ``legacy_task_history_rejects`` with the
reason; ``legacy_task_history`` itself is left untouched (nothing is ever deleted):

* retried saves (several rows for one user/task/step) fold to the latest row (by timestamp,
  then id); the older ones are set aside as superseded;
* statuses are normalised: case and blanks, the seed's v1.0 names (``success`` → ``completed``,
  ``error`` → ``failed``) and the spellings ``canceled`` and ``timeout``; a step's own status is
  read from its stored result (upstream's cancel overwrote the status column of every step: a
  task whose rows say ``cancelled`` while its steps say otherwise is adopted as cancelled);
* naive timestamps are read in the zone given by ``-x legacy_timezone=…`` (default: the
  server's TimeZone) and stored as ``timestamptz``;
* one task per (user, task) is created: cancelled as above, else the status of its highest
  step (a task whose last step is pending or running is running);
* a row that breaks a consistency rule, has no step name, an unknown status or error code, or
  bad ids is set aside with the rule it breaks.

Revision ID: 0002_adopt_upstream
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import context, op

revision: str = "0002_adopt_upstream"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADOPT = r"""
DO $adopt$
BEGIN
IF to_regclass('legacy_task_history') IS NULL THEN
  RETURN;
END IF;

CREATE TEMP TABLE aiecs_legacy ON COMMIT DROP AS
WITH raw AS (
  SELECT l.id AS legacy_id, l.user_id, l.task_id, l.step, l.result,
         lower(btrim(l.status)) AS row_status,
         CASE WHEN jsonb_typeof(l.result) = 'object' THEN l.result END AS obj,
         timezone(__TZ__, l."timestamp") AS ts,
         row_number() OVER (PARTITION BY l.user_id, l.task_id, l.step
                            ORDER BY l."timestamp" DESC NULLS LAST, l.id DESC) AS rn
  FROM legacy_task_history l
), norm AS (
  SELECT r.*,
         CASE s WHEN 'success' THEN 'completed' WHEN 'error' THEN 'failed'
                WHEN 'canceled' THEN 'cancelled' WHEN 'timeout' THEN 'timed_out'
                ELSE s END AS status,
         CASE WHEN r.row_status = 'cancelled' THEN true ELSE false END AS row_cancelled
  FROM raw r,
       LATERAL (SELECT lower(btrim(COALESCE(r.obj ->> 'status', r.row_status))) AS s) x
), fields AS (
  SELECT n.*,
         n.obj ->> 'step' AS step_name,
         CASE WHEN jsonb_typeof(n.obj -> 'completed') = 'boolean'
              THEN (n.obj ->> 'completed')::boolean
              ELSE n.status = 'completed' END AS completed,
         COALESCE(n.obj ->> 'message', '') AS message,
         NULLIF(n.obj ->> 'error_code', '') AS error_code,
         n.obj ->> 'error_message' AS error_message,
         CASE WHEN jsonb_typeof(n.obj -> 'result') = 'null' THEN NULL
              ELSE n.obj -> 'result' END AS inner_result
  FROM norm n
)
SELECT f.*,
  CASE
    WHEN f.rn > 1 THEN 'duplicate: superseded by a later save of the same step'
    WHEN f.user_id IS NULL OR f.task_id IS NULL OR f.step IS NULL
      THEN 'missing user_id, task_id or step'
    WHEN char_length(f.user_id) NOT BETWEEN 1 AND 255
      OR char_length(f.task_id) NOT BETWEEN 1 AND 255
      THEN 'user_id or task_id empty or longer than 255 characters'
    WHEN f.step < 0 THEN 'step index: negative step'
    WHEN f.obj IS NULL THEN 'result: not a step result object'
    WHEN f.step_name IS NULL OR btrim(f.step_name, E' \t\n\r\f\v') = ''
      THEN 'step name: missing or blank'
    WHEN f.status IS NULL
      OR f.status NOT IN (SELECT unnest(enum_range(NULL::task_status))::text)
      THEN 'status: unknown status ' || COALESCE(quote_literal(f.status), 'NULL')
    WHEN f.error_code IS NOT NULL
      AND f.error_code NOT IN (SELECT unnest(enum_range(NULL::error_code))::text)
      THEN 'error code: unknown error code ' || quote_literal(f.error_code)
    WHEN f.completed <> (f.status = 'completed')
      THEN 'completed flag: completed must be true exactly when status is completed'
    WHEN (f.error_code IS NOT NULL) <> (COALESCE(f.error_message, '') <> '')
      THEN 'error pair: error code and error message must go together'
    WHEN (f.error_code IS NOT NULL) <> (f.status IN ('failed', 'timed_out', 'cancelled'))
      THEN 'error iff unsuccessful: failed, timed_out and cancelled steps carry an error code'
  END AS reason
FROM fields f;

INSERT INTO legacy_task_history_rejects (legacy_id, reason, row_data)
SELECT a.legacy_id, a.reason, to_jsonb(l)
FROM aiecs_legacy a JOIN legacy_task_history l ON l.id = a.legacy_id
WHERE a.reason IS NOT NULL
ON CONFLICT (legacy_id) DO NOTHING;

-- Tasks are adopted in their final state with their original times, so the transition
-- trigger (which treats an INSERT as a move from pending) is off while they are written;
-- the CHECK constraints still apply.
ALTER TABLE tasks DISABLE TRIGGER tr_tasks_status_transition;
INSERT INTO tasks (user_id, task_id, status, error_code, error_message,
                   created_at, updated_at, started_at, finished_at)
SELECT t.user_id, t.task_id, t.final_status::task_status,
       CASE WHEN t.cancelled THEN 'E004'::error_code
            WHEN t.final_status IN ('failed', 'timed_out') THEN t.last_code::error_code END,
       CASE WHEN t.cancelled THEN 'Task cancelled (adopted from upstream AIECS)'
            WHEN t.final_status IN ('failed', 'timed_out') THEN t.last_message END,
       t.first_ts, t.last_ts, t.first_ts,
       CASE WHEN t.final_status IN ('completed', 'failed', 'timed_out', 'cancelled')
            THEN t.last_ts END
FROM (
  SELECT a.user_id, a.task_id,
         bool_or(a.row_cancelled AND a.status <> 'cancelled') AS cancelled,
         CASE WHEN bool_or(a.row_cancelled AND a.status <> 'cancelled') THEN 'cancelled'
              WHEN (array_agg(a.status ORDER BY a.step DESC))[1] IN ('pending', 'running')
                THEN 'running'
              ELSE (array_agg(a.status ORDER BY a.step DESC))[1] END AS final_status,
         (array_agg(a.error_code ORDER BY a.step DESC))[1] AS last_code,
         (array_agg(a.error_message ORDER BY a.step DESC))[1] AS last_message,
         COALESCE(min(a.ts), now()) AS first_ts,
         COALESCE(max(a.ts), now()) AS last_ts
  FROM aiecs_legacy a
  WHERE a.reason IS NULL
  GROUP BY a.user_id, a.task_id
) t
ON CONFLICT (user_id, task_id) DO NOTHING;
ALTER TABLE tasks ENABLE TRIGGER tr_tasks_status_transition;

INSERT INTO task_history (user_id, task_id, step, step_name, result, completed, message,
                          status, error_code, error_message, created_at, updated_at)
SELECT a.user_id, a.task_id, a.step, a.step_name, a.inner_result, a.completed, a.message,
       a.status::task_status, a.error_code::error_code, a.error_message,
       COALESCE(a.ts, now()), COALESCE(a.ts, now())
FROM aiecs_legacy a
WHERE a.reason IS NULL
ON CONFLICT (user_id, task_id, step) DO NOTHING;

DROP TABLE aiecs_legacy;
END
$adopt$
"""


def _timezone_literal() -> str:
    zone = context.get_x_argument(as_dictionary=True).get("legacy_timezone")
    if zone is None:
        return "current_setting('TimeZone')"
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", zone):
        raise SystemExit(f"-x legacy_timezone={zone!r} is not a time zone name")
    return f"'{zone}'"


def upgrade() -> None:
    op.execute(ADOPT.replace("__TZ__", _timezone_literal()))


def downgrade() -> None:
    # Adopted rows cannot be told apart from later ones; 0001's downgrade drops them all and
    # renames legacy_task_history back. Here only the record of set-aside rows goes.
    op.execute("DELETE FROM legacy_task_history_rejects")
