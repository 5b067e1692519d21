"""History partitioned by time: ``task_history`` and ``task_events`` become range-partitioned
tables keyed by ``bucket``, the creation time of their task truncated to the partition width,
which ``tasks`` gains (and a unique key on it, led by it, that the steps' foreign key names).
``aiecs_partitioning`` holds the width (one day) and how many partitions are kept ready ahead
(three); ``aiecs_create_partitions`` creates those due, ``aiecs_partition_bounds`` lists them,
``aiecs_set_partition_width`` changes the width. The event triggers, the cluster's save
function and the key guards carry the bucket; ``task_summary`` joins on it.

Existing tasks get the bucket 1970-01-01 (UTC), and the existing tables become the first
partition of each partitioned table, ``<table>_p_initial`` (everything before the current
period), which retention drops like any other once all of its tasks are inactive. On a plain
server with rows, in place and online: the new keys are built ``CONCURRENTLY`` and the first
partitions' bound and the steps' new foreign key validated while writers go on, then one short
transaction renames the tables, makes the partitioned ones and attaches them, scanning nothing
(no row is rewritten). Elsewhere (no rows, Citus, ``--sql``) the rows, if any, are copied.
``seq`` of the events continues where it was. Downgrade copies the rows back into plain tables.

A frozen snapshot (see 0001).

Revision ID: 0010_partitioned_history
Revises: 0009_immutable_keys
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

revision: str = "0010_partitioned_history"
down_revision: str | Sequence[str] | None = "0009_immutable_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_TASK_HISTORY = """CREATE TABLE task_history (
	user_id TEXT NOT NULL,
	task_id TEXT NOT NULL,
	step INTEGER NOT NULL,
	step_name TEXT NOT NULL,
	result JSONB,
	completed BOOLEAN DEFAULT false NOT NULL,
	message TEXT DEFAULT '' NOT NULL,
	status task_status DEFAULT 'pending'::task_status NOT NULL,
	error_code error_code,
	error_message TEXT,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	bucket TIMESTAMP WITH TIME ZONE DEFAULT date_bin('1 day'::interval, now(), '2000-01-01 00:00:00+00'::timestamp with time zone) NOT NULL,
	CONSTRAINT pk_task_history PRIMARY KEY (user_id, task_id, step, bucket),
	CONSTRAINT ck_task_history_step_index CHECK (step >= 0),
	CONSTRAINT ck_task_history_step_name CHECK (btrim(step_name, E' \\t\\n\\r\\f\\x0B') <> ''),
	CONSTRAINT ck_task_history_completed_flag CHECK (completed = (status = 'completed')),
	CONSTRAINT ck_task_history_error_pair CHECK ((error_code IS NOT NULL) = (error_message IS NOT NULL AND error_message <> '')),
	CONSTRAINT ck_task_history_error_iff_unsuccessful CHECK ((error_code IS NOT NULL) = (status IN ('failed', 'timed_out', 'cancelled')))
)
 PARTITION BY RANGE (bucket)"""

NEW_TASK_HISTORY_FKS = [
    'fk_task_history_tasks FOREIGN KEY(user_id, task_id, bucket) REFERENCES tasks (user_id, task_id, bucket) ON DELETE CASCADE',
]
NEW_TASK_HISTORY_INDEXES = [
    'CREATE INDEX ix_task_history_created_at ON task_history USING brin (created_at) WITH (pages_per_range = 32, autosummarize = on)',
    'CREATE INDEX ix_task_history_error_code_created_at ON task_history (error_code, created_at) WHERE error_code IS NOT NULL',
    'CREATE INDEX ix_task_history_user_id_step_name ON task_history (user_id, step_name, task_id)',
    'CREATE INDEX ix_task_history_user_id_updated_at ON task_history (user_id, updated_at DESC, task_id DESC, step DESC)',
]

OLD_TASK_HISTORY = """CREATE TABLE task_history (
	user_id TEXT NOT NULL,
	task_id TEXT NOT NULL,
	step INTEGER NOT NULL,
	step_name TEXT NOT NULL,
	result JSONB,
	completed BOOLEAN DEFAULT false NOT NULL,
	message TEXT DEFAULT '' NOT NULL,
	status task_status DEFAULT 'pending'::task_status NOT NULL,
	error_code error_code,
	error_message TEXT,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	CONSTRAINT pk_task_history PRIMARY KEY (user_id, task_id, step),
	CONSTRAINT ck_task_history_step_index CHECK (step >= 0),
	CONSTRAINT ck_task_history_step_name CHECK (btrim(step_name, E' \\t\\n\\r\\f\\x0B') <> ''),
	CONSTRAINT ck_task_history_completed_flag CHECK (completed = (status = 'completed')),
	CONSTRAINT ck_task_history_error_pair CHECK ((error_code IS NOT NULL) = (error_message IS NOT NULL AND error_message <> '')),
	CONSTRAINT ck_task_history_error_iff_unsuccessful CHECK ((error_code IS NOT NULL) = (status IN ('failed', 'timed_out', 'cancelled')))
)"""

OLD_TASK_HISTORY_FKS = [
    'fk_task_history_tasks FOREIGN KEY(user_id, task_id) REFERENCES tasks (user_id, task_id) ON DELETE CASCADE',
]
OLD_TASK_HISTORY_INDEXES = [
    'CREATE INDEX ix_task_history_created_at ON task_history USING brin (created_at) WITH (pages_per_range = 32, autosummarize = on)',
    'CREATE INDEX ix_task_history_error_code_created_at ON task_history (error_code, created_at) WHERE error_code IS NOT NULL',
    'CREATE INDEX ix_task_history_user_id_step_name ON task_history (user_id, step_name, task_id)',
    'CREATE INDEX ix_task_history_user_id_updated_at ON task_history (user_id, updated_at DESC, task_id DESC, step DESC)',
]

NEW_TASK_EVENTS = """CREATE TABLE task_events (
	user_id TEXT NOT NULL,
	task_id TEXT NOT NULL,
	tx BIGINT DEFAULT ((pg_current_xact_id())::text)::bigint NOT NULL,
	seq BIGINT GENERATED ALWAYS AS IDENTITY,
	step INTEGER,
	step_name TEXT,
	result JSONB,
	completed BOOLEAN,
	message TEXT,
	status task_status NOT NULL,
	error_code error_code,
	error_message TEXT,
	at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	bucket TIMESTAMP WITH TIME ZONE DEFAULT date_bin('1 day'::interval, now(), '2000-01-01 00:00:00+00'::timestamp with time zone) NOT NULL,
	CONSTRAINT pk_task_events PRIMARY KEY (user_id, task_id, tx, seq, bucket)
)
 PARTITION BY RANGE (bucket)"""

NEW_TASK_EVENTS_FKS = []
NEW_TASK_EVENTS_INDEXES = [
    'CREATE INDEX ix_task_events_user_id_tx ON task_events (user_id, tx, seq) WHERE step IS NULL',
]

OLD_TASK_EVENTS = """CREATE TABLE task_events (
	user_id TEXT NOT NULL,
	task_id TEXT NOT NULL,
	tx BIGINT DEFAULT ((pg_current_xact_id())::text)::bigint NOT NULL,
	seq BIGINT GENERATED ALWAYS AS IDENTITY,
	step INTEGER,
	step_name TEXT,
	result JSONB,
	completed BOOLEAN,
	message TEXT,
	status task_status NOT NULL,
	error_code error_code,
	error_message TEXT,
	at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	CONSTRAINT pk_task_events PRIMARY KEY (user_id, task_id, tx, seq)
)"""

OLD_TASK_EVENTS_FKS = []
OLD_TASK_EVENTS_INDEXES = [
    'CREATE INDEX ix_task_events_user_id_tx ON task_events (user_id, tx, seq) WHERE step IS NULL',
]

PARTITIONING = """CREATE TABLE aiecs_partitioning (
	one_row BOOLEAN DEFAULT true NOT NULL,
	width INTERVAL NOT NULL,
	ahead INTEGER DEFAULT 3 NOT NULL,
	retired_before TIMESTAMP WITH TIME ZONE,
	CONSTRAINT pk_aiecs_partitioning PRIMARY KEY (one_row),
	CONSTRAINT ck_aiecs_partitioning_one_row CHECK (one_row),
	CONSTRAINT ck_aiecs_partitioning_width CHECK (width >= interval '1 second'),
	CONSTRAINT ck_aiecs_partitioning_ahead CHECK (ahead BETWEEN 0 AND 366)
)"""

SEED = "INSERT INTO aiecs_partitioning (width, ahead) VALUES ('1 day', 3)"

NEW_FUNCTIONS = (
    """
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
""",
    """
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
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  k record;
BEGIN
  IF current_setting('citus.version', true) IS NULL THEN
    DELETE FROM @S@.task_events e USING gone g
    WHERE e.user_id = g.user_id AND e.task_id = g.task_id AND e.bucket = g.bucket;
  ELSE
    FOR k IN SELECT DISTINCT g.user_id, g.task_id, g.bucket FROM gone g LOOP
      DELETE FROM @S@.task_events e
      WHERE e.user_id = k.user_id AND e.task_id = k.task_id AND e.bucket = k.bucket;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_save_steps(
  p_user_id text, p_task_ids text[], p_steps integer[], p_step_names text[], p_results jsonb[],
  p_completed boolean[], p_messages text[], p_statuses @S@.task_status[],
  p_error_codes @S@.error_code[], p_error_messages text[], p_lock_timeout text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  fresh CONSTANT timestamptz := now() - interval '1 second';
  task text;
  task_bucket timestamptz;
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
    RETURNING t.status, t.error_code, t.error_message, t.updated_at, t.xmax = 0, t.bucket
      INTO row_status, row_code, row_message, row_at, created, task_bucket;
    IF created THEN
      INSERT INTO @S@.task_events (user_id, task_id, status, error_code, error_message, at,
                                   bucket)
      VALUES (p_user_id, task, row_status, row_code, row_message, row_at, task_bucket);
    END IF;
  END LOOP;
  FOR i IN 1 .. coalesce(cardinality(p_steps), 0) LOOP
    -- The task's partition: its bucket, read from its row (a new snapshot sees it).
    SELECT f.bucket INTO task_bucket FROM @S@.tasks f
    WHERE f.user_id = p_user_id AND f.task_id = p_task_ids[i];
    INSERT INTO @S@.task_history AS h (user_id, task_id, step, step_name, result, completed,
                                       message, status, error_code, error_message, bucket)
    VALUES (p_user_id, p_task_ids[i], p_steps[i], p_step_names[i], p_results[i],
            p_completed[i], p_messages[i], p_statuses[i], p_error_codes[i],
            p_error_messages[i], task_bucket)
    ON CONFLICT (user_id, task_id, step, bucket) DO UPDATE SET
      step_name = EXCLUDED.step_name, result = EXCLUDED.result,
      completed = EXCLUDED.completed, message = EXCLUDED.message, status = EXCLUDED.status,
      error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message
    RETURNING h.updated_at INTO row_at;
    INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at, bucket)
    VALUES (p_user_id, p_task_ids[i], p_steps[i], p_step_names[i], p_results[i],
            p_completed[i], p_messages[i], p_statuses[i], p_error_codes[i],
            p_error_messages[i], row_at, task_bucket);
  END LOOP;
END
$$
""",
)

OLD_FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF current_setting('aiecs.bulk_events', true) = 'on' THEN
    RETURN NULL;
  END IF;
  INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at)
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
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_save_steps(
  p_user_id text, p_task_ids text[], p_steps integer[], p_step_names text[], p_results jsonb[],
  p_completed boolean[], p_messages text[], p_statuses @S@.task_status[],
  p_error_codes @S@.error_code[], p_error_messages text[], p_lock_timeout text) RETURNS void
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
    INSERT INTO @S@.task_events (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at)
    VALUES (p_user_id, p_task_ids[i], p_steps[i], p_step_names[i], p_results[i],
            p_completed[i], p_messages[i], p_statuses[i], p_error_codes[i],
            p_error_messages[i], row_at);
  END LOOP;
END
$$
""",
)

PARTITION_FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_partition_bounds()
RETURNS TABLE (parent text, partition text, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET datestyle = 'ISO, YMD' SET timezone = 'UTC'
AS $$
  SELECT p.relname::text, c.relname::text,
         CASE WHEN m[1] = 'MINVALUE' THEN '-infinity' ELSE btrim(m[1], '''')::timestamptz END,
         CASE WHEN m[2] = 'MAXVALUE' THEN 'infinity' ELSE btrim(m[2], '''')::timestamptz END
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_class p ON p.oid = i.inhparent
  CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                  'FROM \\((.+)\\) TO \\((.+)\\)') AS m
  WHERE p.relnamespace = '@S@'::regnamespace AND p.relname IN ('task_history', 'task_events')
$$
""",
    """
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
""",
    """
CREATE OR REPLACE FUNCTION @S@.aiecs_set_partition_width(p_width interval) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t text;
BEGIN
  IF p_width IS NULL OR p_width < interval '1 second' THEN
    RAISE EXCEPTION 'partition width %: at least 1 second', p_width USING ERRCODE = '22023';
  END IF;
  UPDATE @S@.aiecs_partitioning SET width = p_width;
  FOREACH t IN ARRAY ARRAY['tasks', 'task_history', 'task_events'] LOOP
    EXECUTE format('ALTER TABLE @S@.%I ALTER COLUMN bucket SET DEFAULT '
                   'date_bin(%L::interval, now(), %L::timestamptz)',
                   t, p_width, '2000-01-01 00:00:00+00');
  END LOOP;
  PERFORM @S@.aiecs_create_partitions();
END
$$
""",
)

HISTORY_TRIGGERS = (
    """CREATE TRIGGER tr_task_history_status_transition BEFORE UPDATE ON task_history
FOR EACH ROW EXECUTE FUNCTION aiecs_task_history_before_update()""",
    """CREATE TRIGGER tr_task_history_changed AFTER INSERT OR UPDATE ON task_history
FOR EACH ROW WHEN (current_setting('aiecs.bulk_events', true) IS DISTINCT FROM 'on') EXECUTE FUNCTION aiecs_task_history_changed()""",
)

OLD_HISTORY_TRIGGERS = (
    """CREATE TRIGGER tr_task_history_status_transition BEFORE UPDATE ON task_history
FOR EACH ROW EXECUTE FUNCTION aiecs_task_history_before_update()""",
    """CREATE TRIGGER tr_task_history_changed AFTER INSERT OR UPDATE ON task_history
FOR EACH ROW WHEN (current_setting('aiecs.bulk_events', true) IS DISTINCT FROM 'on') EXECUTE FUNCTION aiecs_task_history_changed()""",
)

NEW_KEY_TRIGGERS = (
    """CREATE TRIGGER tr_tasks_keys_immutable BEFORE UPDATE ON tasks
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.created_at IS DISTINCT FROM OLD.created_at
   OR NEW.bucket IS DISTINCT FROM OLD.bucket)
EXECUTE FUNCTION aiecs_keys_immutable('tasks', 'user_id', 'task_id', 'created_at', 'bucket')""",
    """CREATE TRIGGER tr_task_history_keys_immutable BEFORE UPDATE ON task_history
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.step IS DISTINCT FROM OLD.step
   OR NEW.created_at IS DISTINCT FROM OLD.created_at
   OR NEW.bucket IS DISTINCT FROM OLD.bucket)
EXECUTE FUNCTION aiecs_keys_immutable('task_history', 'user_id', 'task_id', 'step', 'created_at', 'bucket')""",
    """CREATE TRIGGER tr_task_events_keys_immutable BEFORE UPDATE ON task_events
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.step IS DISTINCT FROM OLD.step
   OR NEW.tx IS DISTINCT FROM OLD.tx
   OR NEW.seq IS DISTINCT FROM OLD.seq
   OR NEW.at IS DISTINCT FROM OLD.at
   OR NEW.bucket IS DISTINCT FROM OLD.bucket)
EXECUTE FUNCTION aiecs_keys_immutable('task_events', 'user_id', 'task_id', 'step', 'tx', 'seq', 'at', 'bucket')""",
)

OLD_KEY_TRIGGERS = (
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
EXECUTE FUNCTION aiecs_keys_immutable('task_history', 'user_id', 'task_id', 'step', 'created_at')""",
    """CREATE TRIGGER tr_task_events_keys_immutable BEFORE UPDATE ON task_events
FOR EACH ROW WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
   OR NEW.task_id IS DISTINCT FROM OLD.task_id
   OR NEW.step IS DISTINCT FROM OLD.step
   OR NEW.tx IS DISTINCT FROM OLD.tx
   OR NEW.seq IS DISTINCT FROM OLD.seq
   OR NEW.at IS DISTINCT FROM OLD.at)
EXECUTE FUNCTION aiecs_keys_immutable('task_events', 'user_id', 'task_id', 'step', 'tx', 'seq', 'at')""",
)

NEW_VIEWS = (
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
LEFT JOIN task_history h
  ON h.user_id = t.user_id AND h.task_id = t.task_id AND h.bucket = t.bucket
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

OLD_VIEWS = (
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

BUCKET_DEFAULT = "date_bin('1 day'::interval, now(), '2000-01-01 00:00:00+00'::timestamp with time zone)"

TABLES = ("task_history", "task_events")
VIEWS = ("step_details", "task_summary", "failures_by_day")
KEYS = ("tasks", "task_history", "task_events")
EVENTS_OFF = "SELECT set_config('aiecs.bulk_events', 'on', true)"


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def _citus() -> bool:
    """Whether ``tasks`` is distributed on a Citus coordinator already (a new database is
    distributed after its last revision, by env.py; never offline: ``--sql`` is for plain
    PostgreSQL). A table rebuilt here is then distributed beside it before its foreign key."""
    if context.is_offline_mode():
        return False
    bind = op.get_bind()
    if not bind.exec_driver_sql(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").scalar():
        return False
    return bool(bind.exec_driver_sql(
        "SELECT EXISTS (SELECT FROM pg_dist_partition "
        "WHERE logicalrelid = 'tasks'::regclass)").scalar())


def _rebuild(table: str, create: str, fks: Sequence[str], indexes: Sequence[str],
             bucket: str | None, citus: bool) -> None:
    """``table`` replaced by the table ``create`` makes, with its rows (``bucket``: the value
    they get in the new table's bucket column; None: the column is dropped)."""
    op.execute(f"CREATE TEMP TABLE aiecs_moving ON COMMIT DROP AS SELECT * FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(create)
    if citus:
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
        op.execute(f"SELECT create_distributed_table('{table}', 'user_id', "
                   "colocate_with => 'tasks')")
    for fk in fks:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {fk}")
    for index in indexes:
        op.execute(index)
    columns = ("user_id, task_id, step, step_name, result, completed, message, status, "
               "error_code, error_message, created_at, updated_at"
               if table == "task_history" else
               "user_id, task_id, tx, step, step_name, result, completed, message, status, "
               "error_code, error_message, at")
    if bucket is not None:
        op.execute("""
DO $aiecs$ BEGIN
  IF EXISTS (SELECT FROM aiecs_moving) THEN
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (MINVALUE) TO (%L)',
                   '""" + table + """_p_initial', '""" + table + """',
                   (SELECT date_bin(width, now(), '2000-01-01 00:00:00+00')
                    FROM aiecs_partitioning));
  END IF;
END $aiecs$""")
    seq_column = ", seq" if table == "task_events" else ""
    overriding = " OVERRIDING SYSTEM VALUE" if table == "task_events" else ""
    target = f"{columns}{seq_column}" + (", bucket" if bucket is not None else "")
    source = f"{columns}{seq_column}" + (f", {bucket}" if bucket is not None else "")
    op.execute(EVENTS_OFF)
    op.execute(f"INSERT INTO {table} ({target}){overriding} SELECT {source} FROM aiecs_moving")
    op.execute("DROP TABLE aiecs_moving")
    # The order of writing goes on where it was (on Citus each node draws seq from its own
    # range, and a distributed identity cannot be restarted).
    if table == "task_events" and not citus:
        op.execute("""
DO $aiecs$ BEGIN
  EXECUTE format('ALTER TABLE task_events ALTER COLUMN seq RESTART WITH %s',
                 (SELECT coalesce(max(seq), 0) + 1 FROM task_events));
END $aiecs$""")


#: The history tables' other indexes, as the model names them: an existing table's own are
#: renamed for its partition, so that the partitioned table's take their names and adopt them.
INDEX_NAMES = {
    "task_history": ("ix_task_history_created_at", "ix_task_history_error_code_created_at",
                     "ix_task_history_user_id_step_name", "ix_task_history_user_id_updated_at"),
    "task_events": ("ix_task_events_user_id_tx",),
}
#: Each history table's old key, which its partition's key extends with the bucket.
OLD_KEYS = {"task_history": "user_id, task_id, step", "task_events": "user_id, task_id, tx, seq"}
#: The triggers of the history tables that the partitioned tables take over.
TABLE_TRIGGERS = {
    "task_history": ("tr_task_history_status_transition", "tr_task_history_changed"),
    "task_events": (),
}
BEFORE = "'1970-01-01 00:00:00+00'"


def _in_place() -> bool:
    """Whether to convert in place: online, on a plain server, with rows to keep."""
    if context.is_offline_mode():
        return False
    bind = op.get_bind()
    if bind.exec_driver_sql(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").scalar():
        return False
    return bool(bind.exec_driver_sql(
        "SELECT EXISTS (SELECT FROM task_history) OR EXISTS (SELECT FROM task_events)").scalar())


def _prepare_in_place() -> str:
    """Everything that takes long, while writers go on: the new keys built concurrently, the
    first partitions' bound and the steps' new foreign key validated (``SHARE UPDATE
    EXCLUSIVE``), each step committed. Rows written meanwhile get the bucket of the existing
    ones. Returns the first partitions' upper bound (the current period's start)."""
    bind = op.get_bind()
    first = str(bind.exec_driver_sql(
        "SELECT date_bin('1 day', now(), '2000-01-01 00:00:00+00')::text").scalar())
    for table in ("tasks", *TABLE_TRIGGERS):
        op.execute(f"ALTER TABLE {table} ADD COLUMN bucket timestamptz NOT NULL DEFAULT {BEFORE}")
    with op.get_context().autocommit_block():
        op.execute("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "
                   "uq_tasks_bucket_user_id_task_id ON tasks (bucket, user_id, task_id) "
                   "INCLUDE (updated_at)")
        for table, key in OLD_KEYS.items():
            op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {table}_p_initial_pkey "
                       f"ON {table} ({key}, bucket)")
    op.execute("ALTER TABLE tasks ADD CONSTRAINT uq_tasks_bucket_user_id_task_id "
               "UNIQUE USING INDEX uq_tasks_bucket_user_id_task_id")
    for table in OLD_KEYS:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_p_initial_bound "
                   f"CHECK (bucket < '{first}') NOT VALID")
    op.execute("ALTER TABLE task_history ADD CONSTRAINT task_history_p_initial_fk "
               "FOREIGN KEY (user_id, task_id, bucket) REFERENCES tasks (user_id, task_id, bucket) "
               "ON DELETE CASCADE NOT VALID")
    with op.get_context().autocommit_block():
        for table in OLD_KEYS:
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {table}_p_initial_bound")
        op.execute("ALTER TABLE task_history VALIDATE CONSTRAINT task_history_p_initial_fk")
    return first


def _swap_in_place(table: str, create: str, fks: Sequence[str], indexes: Sequence[str],
                   first: str) -> None:
    """In the migration's last transaction: ``table`` renamed to its first partition, with the
    key built for it, and attached to the partitioned table made in its place. Nothing is
    scanned: the validated bound lets ATTACH skip its check, the indexes and the foreign key
    match the table's own, which it adopts."""
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, "
               f"ADD CONSTRAINT {table}_p_initial_pkey PRIMARY KEY "
               f"USING INDEX {table}_p_initial_pkey")
    if table == "task_history":
        op.execute("ALTER TABLE task_history DROP CONSTRAINT fk_task_history_tasks")
    for trigger in TABLE_TRIGGERS[table]:
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for index in INDEX_NAMES[table]:
        op.execute(f"ALTER INDEX {index} RENAME TO {table}_p_initial{index[len('ix_' + table):]}")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_p_initial")
    if table == "task_events":  # a partition has no identity of its own
        op.execute("ALTER TABLE task_events_p_initial ALTER COLUMN seq DROP IDENTITY")
    op.execute(create)
    if table == "task_events":  # the order of writing goes on where it was
        op.execute("""
DO $aiecs$ BEGIN
  EXECUTE format('ALTER TABLE task_events ALTER COLUMN seq RESTART WITH %s',
                 (SELECT coalesce(max(seq), 0) + 1 FROM task_events_p_initial));
END $aiecs$""")
    for fk in fks:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {fk}")
    for index in indexes:
        op.execute(index)
    op.execute(f"ALTER TABLE {table} ATTACH PARTITION {table}_p_initial "
               f"FOR VALUES FROM (MINVALUE) TO ('{first}')")
    op.execute(f"ALTER TABLE {table}_p_initial DROP CONSTRAINT {table}_p_initial_bound")


def upgrade() -> None:
    citus = _citus()
    first = _prepare_in_place() if _in_place() else None
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW {view}")
    for table in KEYS:
        op.execute(f"DROP TRIGGER tr_{table}_keys_immutable ON {table}")
    op.execute(PARTITIONING)
    op.execute(SEED)
    for function in PARTITION_FUNCTIONS:
        op.execute(_in_current_schema(function))
    if first is not None:
        op.execute(f"ALTER TABLE tasks ALTER COLUMN bucket SET DEFAULT {BUCKET_DEFAULT}")
        _swap_in_place("task_history", NEW_TASK_HISTORY, NEW_TASK_HISTORY_FKS,
                       NEW_TASK_HISTORY_INDEXES, first)
        _swap_in_place("task_events", NEW_TASK_EVENTS, NEW_TASK_EVENTS_FKS,
                       NEW_TASK_EVENTS_INDEXES, first)
    else:
        op.execute(f"ALTER TABLE tasks ADD COLUMN bucket timestamptz NOT NULL DEFAULT {BEFORE}")
        op.execute(f"ALTER TABLE tasks ALTER COLUMN bucket SET DEFAULT {BUCKET_DEFAULT}")
        op.execute("ALTER TABLE tasks ADD CONSTRAINT uq_tasks_bucket_user_id_task_id "
                   "UNIQUE (bucket, user_id, task_id) INCLUDE (updated_at)")
        _rebuild("task_history", NEW_TASK_HISTORY, NEW_TASK_HISTORY_FKS,
                 NEW_TASK_HISTORY_INDEXES, BEFORE, citus)
        _rebuild("task_events", NEW_TASK_EVENTS, NEW_TASK_EVENTS_FKS, NEW_TASK_EVENTS_INDEXES,
                 BEFORE, citus)
    for function in NEW_FUNCTIONS:
        op.execute(_in_current_schema(function))
    for trigger in (*HISTORY_TRIGGERS, *NEW_KEY_TRIGGERS):
        op.execute(trigger)
    for view in NEW_VIEWS:
        op.execute(view)
    op.execute("SELECT aiecs_create_partitions()")


def downgrade() -> None:
    citus = _citus()
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW {view}")
    for table in KEYS:
        op.execute(f"DROP TRIGGER tr_{table}_keys_immutable ON {table}")
    _rebuild("task_history", OLD_TASK_HISTORY, OLD_TASK_HISTORY_FKS, OLD_TASK_HISTORY_INDEXES,
             None, citus)
    _rebuild("task_events", OLD_TASK_EVENTS, OLD_TASK_EVENTS_FKS, OLD_TASK_EVENTS_INDEXES,
             None, citus)
    op.execute("ALTER TABLE tasks DROP COLUMN bucket")
    for function in OLD_FUNCTIONS:
        op.execute(_in_current_schema(function))
    for trigger in (*OLD_HISTORY_TRIGGERS, *OLD_KEY_TRIGGERS):
        op.execute(trigger)
    for view in OLD_VIEWS:
        op.execute(view)
    op.execute("DROP FUNCTION aiecs_set_partition_width(interval)")
    op.execute("DROP FUNCTION aiecs_create_partitions(timestamptz)")
    op.execute("DROP FUNCTION aiecs_partition_bounds()")
    op.execute("DROP TABLE aiecs_partitioning")
