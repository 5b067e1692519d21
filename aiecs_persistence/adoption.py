"""The rules that adopt upstream AIECS history: every row of ``legacy_task_history`` is either
adopted into ``tasks``/``task_history`` or set aside in ``legacy_task_history_rejects`` with
the rule it breaks; ``legacy_task_history`` itself is never changed.

* retried saves (several rows for one user/task/step) fold to the latest row (by timestamp,
  then id); the older ones are set aside as superseded;
* statuses are normalised: case and blanks, the seed's v1.0 names (``success`` → ``completed``,
  ``error`` → ``failed``) and the spellings ``canceled`` and ``timeout``; a step's own status is
  read from its stored result (upstream's cancel overwrote the status column of every step: a
  task whose rows say ``cancelled`` while its steps say otherwise is adopted as cancelled);
* naive timestamps are read in a given zone (default: the server's TimeZone);
* one task per (user, task) is created: cancelled as above, else the status of its highest
  step (a task whose last step is pending or running is running);
* a row that breaks a consistency rule, has no step name, an unknown status or error code, or
  bad ids is set aside with the rule it breaks.

This is what ``aiecs-db import-legacy`` runs, against the schema at head. Revision
``0002_adopt_upstream`` keeps its own frozen copy of the rules as they were written for its
schema; a test checks that both adopt the same data identically.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ValidationError

__all__ = ["adoption_sql", "check_timezone"]

_ZONE: Final = re.compile(r"[A-Za-z0-9_+\-/]+")

ADOPT: Final = r"""
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
    WHEN f.step_name IS NULL OR btrim(f.step_name, E' \t\n\r\f\x0B') = ''
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

CREATE TEMP TABLE aiecs_legacy_tasks ON COMMIT DROP AS
SELECT a.user_id, a.task_id,
       bool_or(a.row_cancelled AND a.status <> 'cancelled') AS cancelled,
       (CASE WHEN bool_or(a.row_cancelled AND a.status <> 'cancelled') THEN 'cancelled'
             WHEN (array_agg(a.status ORDER BY a.step DESC))[1] IN ('pending', 'running')
               THEN 'running'
             ELSE (array_agg(a.status ORDER BY a.step DESC))[1] END)::task_status
         AS final_status,
       ((array_agg(a.error_code ORDER BY a.step DESC))[1])::error_code AS last_code,
       (array_agg(a.error_message ORDER BY a.step DESC))[1] AS last_message,
       COALESCE(min(a.ts), now()) AS first_ts,
       COALESCE(max(a.ts), now()) AS last_ts
FROM aiecs_legacy a
WHERE a.reason IS NULL
GROUP BY a.user_id, a.task_id;

-- Tasks are adopted in their final state with their original times. The transition trigger
-- treats an INSERT as a move from pending, so each new task is written running (its
-- updated_at '-infinity' marks it as this adoption's), then moved to its final state: legal
-- moves only, row locks on new rows only, nothing an ALTER TABLE would lock.
INSERT INTO tasks (user_id, task_id, status, created_at, updated_at, started_at)
SELECT t.user_id, t.task_id, 'running', t.first_ts, '-infinity', t.first_ts
FROM aiecs_legacy_tasks t
ON CONFLICT (user_id, task_id) DO NOTHING;
-- (Typed in the temporary table already: Citus refuses casts of columns in an UPDATE.)
UPDATE tasks d
SET status = t.final_status, updated_at = t.last_ts,
    error_code = CASE WHEN t.cancelled THEN 'E004'::error_code
                      WHEN t.final_status IN ('failed', 'timed_out') THEN t.last_code
                 END,
    error_message = CASE WHEN t.cancelled THEN 'Task cancelled (adopted from upstream AIECS)'
                         WHEN t.final_status IN ('failed', 'timed_out') THEN t.last_message END,
    finished_at = CASE WHEN t.final_status IN ('completed', 'failed', 'timed_out', 'cancelled')
                       THEN t.last_ts END
FROM aiecs_legacy_tasks t
WHERE d.user_id = t.user_id AND d.task_id = t.task_id AND d.updated_at = '-infinity';
DROP TABLE aiecs_legacy_tasks;

-- Each step in its task's partition (its bucket: the adopted task's, the period it was adopted in).
INSERT INTO task_history (user_id, task_id, step, step_name, result, completed, message,
                          status, error_code, error_message, created_at, updated_at, bucket)
SELECT a.user_id, a.task_id, a.step, a.step_name, a.inner_result, a.completed, a.message,
       a.status::task_status, a.error_code::error_code, a.error_message,
       COALESCE(a.ts, now()), COALESCE(a.ts, now()), t.bucket
FROM aiecs_legacy a JOIN tasks t ON t.user_id = a.user_id AND t.task_id = a.task_id
WHERE a.reason IS NULL
ON CONFLICT (user_id, task_id, step, bucket) DO NOTHING;

DROP TABLE aiecs_legacy;
END
$adopt$
"""


def check_timezone(zone: str) -> str:
    """``zone`` when it can be a time zone name (it is written into the SQL as a literal)."""
    if not _ZONE.fullmatch(zone):
        raise ValidationError(f"timezone: {zone!r} is not a time zone name", field="timezone")
    return zone


def adoption_sql(timezone: str | None = None) -> str:
    """The adoption, reading upstream's naive timestamps in ``timezone`` (default: the
    server's TimeZone setting)."""
    zone = "current_setting('TimeZone')" if timezone is None else f"'{check_timezone(timezone)}'"
    return ADOPT.replace("__TZ__", zone)
