"""The event log gets its own, shorter retention: ``aiecs_partitioning`` gains ``events_kept``
(seven days; NULL keeps the events as long as the history), ``events_dropped_before`` and
``events_horizon`` (what retention dropped of it: a watcher resuming from below that horizon is
told to reload), and ``aiecs_create_partitions`` answers -1 for a bucket whose partition
retention has detached and is about to drop, instead of failing on the name.

Reports add up summaries of closed periods: ``aiecs_period_summaries`` holds each summarized
partition's figures, made by ``aiecs_summarize_period`` (which first puts on the partition a
trigger, ``aiecs_period_written``, that counts its writes, so a summary is used only while
nothing was written since). A report's window reads only the partitions its steps can be in: ``step_details`` shows
``bucket``, ``aiecs_window_start(since)`` gives the oldest bucket of a task active since, and a
step written by hand touches its task (``aiecs_task_history_changed``), as a save does.

A frozen snapshot (see 0001).

Revision ID: 0011_events_retention
Revises: 0010_partitioned_history
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011_events_retention"
down_revision: str | Sequence[str] | None = "0010_partitioned_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "ADD COLUMN events_kept INTERVAL DEFAULT '7 days'::interval",
    "ADD COLUMN events_dropped_before TIMESTAMP WITH TIME ZONE",
    "ADD COLUMN events_horizon BIGINT DEFAULT 0 NOT NULL",
    "ADD CONSTRAINT ck_aiecs_partitioning_events_kept CHECK (events_kept >= interval '1 second')",
)

NEW_CREATE = """
CREATE OR REPLACE FUNCTION @S@.aiecs_create_partitions(p_at timestamptz DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC'
AS $$
DECLARE
  w interval;
  n integer;
  retired timestamptz;
  first timestamptz;
  lo timestamptz;
  hi timestamptz;
  t text;
  part text;
  made integer := 0;
BEGIN
  SELECT width, ahead, retired_before INTO STRICT w, n, retired
  FROM @S@.aiecs_partitioning;
  IF p_at < retired THEN
    RETURN -1;
  END IF;
  IF p_at > now() + w * (n + 1) THEN
    RAISE EXCEPTION 'no partition is created more than % buckets ahead', n
      USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('@S@.aiecs_create_partitions'));
  first := date_bin(w, coalesce(p_at, now()), '2000-01-01 00:00:00+00');
  FOR i IN 0 .. CASE WHEN p_at IS NULL THEN n ELSE 0 END LOOP
    lo := first + w * i;
    FOREACH t IN ARRAY ARRAY['task_history', 'task_events'] LOOP
      CONTINUE WHEN EXISTS (SELECT FROM @S@.aiecs_partition_bounds() b
                            WHERE b.parent = t AND b.lower <= lo AND b.upper > lo);
      SELECT least(lo + w, min(b.lower)) INTO hi FROM @S@.aiecs_partition_bounds() b
      WHERE b.parent = t AND b.lower > lo;
      part := t || '_p' || to_char(lo, 'YYYYMMDD')
              || CASE WHEN lo = date_trunc('day', lo) AND w >= interval '1 day' THEN ''
                      ELSE to_char(lo, '"_"HH24MISS') END;
      IF to_regclass(format('@S@.%I', part)) IS NOT NULL THEN
        RETURN -1;  -- detached by retention, about to be dropped
      END IF;
      EXECUTE format('CREATE TABLE @S@.%I PARTITION OF @S@.%I FOR VALUES FROM (%L) TO (%L)',
                     part, t, lo, hi);
      made := made + 1;
    END LOOP;
  END LOOP;
  RETURN made;
END
$$
"""

OLD_CREATE = """
CREATE OR REPLACE FUNCTION @S@.aiecs_create_partitions(p_at timestamptz DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC'
AS $$
DECLARE
  w interval;
  n integer;
  retired timestamptz;
  first timestamptz;
  lo timestamptz;
  hi timestamptz;
  t text;
  part text;
  made integer := 0;
BEGIN
  SELECT width, ahead, retired_before INTO STRICT w, n, retired
  FROM @S@.aiecs_partitioning;
  IF p_at < retired THEN
    RETURN -1;
  END IF;
  IF p_at > now() + w * (n + 1) THEN
    RAISE EXCEPTION 'no partition is created more than % buckets ahead', n
      USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('@S@.aiecs_create_partitions'));
  first := date_bin(w, coalesce(p_at, now()), '2000-01-01 00:00:00+00');
  FOR i IN 0 .. CASE WHEN p_at IS NULL THEN n ELSE 0 END LOOP
    lo := first + w * i;
    FOREACH t IN ARRAY ARRAY['task_history', 'task_events'] LOOP
      CONTINUE WHEN EXISTS (SELECT FROM @S@.aiecs_partition_bounds() b
                            WHERE b.parent = t AND b.lower <= lo AND b.upper > lo);
      SELECT least(lo + w, min(b.lower)) INTO hi FROM @S@.aiecs_partition_bounds() b
      WHERE b.parent = t AND b.lower > lo;
      part := t || '_p' || to_char(lo, 'YYYYMMDD')
              || CASE WHEN lo = date_trunc('day', lo) AND w >= interval '1 day' THEN ''
                      ELSE to_char(lo, '"_"HH24MISS') END;
      EXECUTE format('CREATE TABLE @S@.%I PARTITION OF @S@.%I FOR VALUES FROM (%L) TO (%L)',
                     part, t, lo, hi);
      made := made + 1;
    END LOOP;
  END LOOP;
  RETURN made;
END
$$
"""


WINDOW_START = """
CREATE OR REPLACE FUNCTION @S@.aiecs_window_start(p_since timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN p_since IS NULL THEN '-infinity'::timestamptz
              ELSE coalesce((SELECT min(t.bucket) FROM @S@.tasks t
                             WHERE t.updated_at >= p_since - interval '1 second'),
                            'infinity') END
$$
"""

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
  IF EXISTS (SELECT FROM @S@.aiecs_watched w
             WHERE w.user_id = NEW.user_id AND w.task_id = NEW.task_id AND w.until > now()) THEN
    PERFORM pg_notify('aiecs_events', NEW.user_id || chr(31) || NEW.task_id);
  END IF;
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
  IF EXISTS (SELECT FROM @S@.aiecs_watched w
             WHERE w.user_id = NEW.user_id AND w.task_id = NEW.task_id AND w.until > now()) THEN
    PERFORM pg_notify('aiecs_events', NEW.user_id || chr(31) || NEW.task_id);
  END IF;
  RETURN NULL;
END
$$
"""

NEW_STEP_DETAILS = """
CREATE OR REPLACE VIEW step_details AS
SELECT h.user_id, h.task_id, h.step, h.step_name, h.status, h.completed, h.message,
       h.error_code, e.name AS error_name, e.category AS error_category,
       e.description AS error_description, h.error_message, h.result,
       h.created_at, h.updated_at, h.bucket
FROM task_history h
LEFT JOIN error_codes e ON e.code = h.error_code
"""

OLD_STEP_DETAILS = """
CREATE VIEW step_details AS
SELECT h.user_id, h.task_id, h.step, h.step_name, h.status, h.completed, h.message,
       h.error_code, e.name AS error_name, e.category AS error_category,
       e.description AS error_description, h.error_message, h.result,
       h.created_at, h.updated_at
FROM task_history h
LEFT JOIN error_codes e ON e.code = h.error_code
"""


SUMMARIES = """CREATE TABLE aiecs_period_summaries (
	partition TEXT NOT NULL,
	writes BIGINT DEFAULT 0 NOT NULL,
	writes_seen BIGINT DEFAULT -1 NOT NULL,
	first_created TIMESTAMP WITH TIME ZONE,
	last_created TIMESTAMP WITH TIME ZONE,
	figures JSONB,
	made_at TIMESTAMP WITH TIME ZONE,
	CONSTRAINT pk_aiecs_period_summaries PRIMARY KEY (partition)
)"""

WRITTEN = """
CREATE OR REPLACE FUNCTION @S@.aiecs_period_written() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  UPDATE @S@.aiecs_period_summaries SET writes = writes + 1 WHERE partition = TG_TABLE_NAME;
  RETURN NULL;
END
$$
"""

SUMMARIZE = """
CREATE OR REPLACE FUNCTION @S@.aiecs_summarize_period(p_partition text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_first timestamptz;
  v_last timestamptz;
  v_figures jsonb;
  v_seen bigint;
BEGIN
  IF NOT EXISTS (SELECT FROM @S@.aiecs_partition_bounds() b
                 WHERE b.parent = 'task_history' AND b.partition = p_partition) THEN
    RAISE EXCEPTION 'no partition % of task_history', p_partition USING ERRCODE = '22023';
  END IF;
  DELETE FROM @S@.aiecs_period_summaries s
  WHERE NOT EXISTS (SELECT FROM @S@.aiecs_partition_bounds() b
                    WHERE b.parent = 'task_history' AND b.partition = s.partition);
  IF NOT EXISTS (SELECT FROM @S@.aiecs_period_summaries WHERE partition = p_partition) THEN
    INSERT INTO @S@.aiecs_period_summaries (partition) VALUES (p_partition);
    EXECUTE format('CREATE OR REPLACE TRIGGER tr_period_written '
                   'AFTER INSERT OR UPDATE OR DELETE ON @S@.%I '
                   'FOR EACH ROW EXECUTE FUNCTION @S@.aiecs_period_written()', p_partition);
    RETURN false;
  END IF;
  EXECUTE format($f$
WITH h AS MATERIALIZED (
  SELECT h.user_id, h.task_id, h.step_name, h.status, h.error_code::text AS error_code,
         e.name AS error_name, e.category AS error_category, h.created_at,
         ((h.created_at AT TIME ZONE 'UTC')::date)::text AS day
  FROM @S@.%I h LEFT JOIN @S@.error_codes e ON e.code = h.error_code
)
SELECT (SELECT min(created_at) FROM h), (SELECT max(created_at) FROM h), jsonb_build_object(
  'steps', (SELECT count(*) FROM h),
  'tasks', (SELECT count(*) FROM (SELECT DISTINCT user_id, task_id FROM h) d),
  'failures', (SELECT count(*) FROM h WHERE error_code IS NOT NULL),
  'by_code', (SELECT COALESCE(jsonb_agg(x), '[]') FROM (
    SELECT error_code, error_name, error_category, sum(n) AS failures, count(*) AS tasks
    FROM (SELECT error_code, error_name, error_category, count(*) AS n FROM h
          WHERE error_code IS NOT NULL
          GROUP BY error_code, error_name, error_category, user_id, task_id) f
    GROUP BY error_code, error_name, error_category) x),
  'by_name', (SELECT COALESCE(jsonb_agg(x), '[]') FROM (
    SELECT step_name, count(*) AS steps, count(*) FILTER (WHERE error_code IS NOT NULL)
      AS failures
    FROM h GROUP BY step_name) x),
  'per_day', (SELECT COALESCE(jsonb_agg(x), '[]') FROM (
    SELECT day, count(*) AS steps, count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE error_code IS NOT NULL) AS failures
    FROM h GROUP BY day) x)),
  (SELECT s.writes FROM @S@.aiecs_period_summaries s WHERE s.partition = %L)
$f$, p_partition, p_partition)
    INTO v_first, v_last, v_figures, v_seen;
  UPDATE @S@.aiecs_period_summaries s
  SET first_created = v_first, last_created = v_last, figures = v_figures,
      writes_seen = v_seen, made_at = now()
  WHERE s.partition = p_partition;
  RETURN true;
END
$$
"""


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def upgrade() -> None:
    op.execute("ALTER TABLE aiecs_partitioning " + ", ".join(COLUMNS))
    op.execute(_in_current_schema(NEW_CREATE))
    op.execute(_in_current_schema(WINDOW_START))
    op.execute(_in_current_schema(NEW_STEP_EVENTS))
    op.execute(NEW_STEP_DETAILS)
    op.execute(SUMMARIES)
    op.execute(_in_current_schema(WRITTEN))
    op.execute(_in_current_schema(SUMMARIZE))


def downgrade() -> None:
    op.execute("DROP FUNCTION aiecs_summarize_period(text)")
    op.execute("DROP FUNCTION aiecs_period_written() CASCADE")  # and the partitions' triggers
    op.execute("DROP TABLE aiecs_period_summaries")
    op.execute(_in_current_schema(OLD_CREATE))
    op.execute("DROP FUNCTION aiecs_window_start(timestamptz)")
    op.execute(_in_current_schema(OLD_STEP_EVENTS))
    op.execute("DROP VIEW step_details")
    op.execute(OLD_STEP_DETAILS)
    op.execute("ALTER TABLE aiecs_partitioning DROP CONSTRAINT ck_aiecs_partitioning_events_kept, "
               "DROP COLUMN events_horizon, DROP COLUMN events_dropped_before, "
               "DROP COLUMN events_kept")
