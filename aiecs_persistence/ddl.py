"""The server-side DDL beside the tables (``schema.py``): the state machine's functions and
triggers, the event log's triggers, the cluster's save and horizon functions, and the reporting
views. ``schema.py`` runs these after creating its tables (``metadata.create_all``); the frozen
migration revisions carry their own copies, and the drift tests compare the two.

The state machine's SQL is generated from ``TaskStatus.can_transition_to``; names shared with
the statements and the listeners come from ``names.py``.
"""

from __future__ import annotations

from typing import Final

from . import names
from .domain import ErrorCode, TaskStatus

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

def _transitions(before: str, after: str) -> str:
    """The state machine (``TaskStatus.can_transition_to``) as a SQL condition on two status
    expressions: a status to itself, or one of the moves it allows."""
    moves = [
        f"({before} = '{old.value}'\n          AND {after} IN ("
        + ", ".join(f"'{new.value}'" for new in TaskStatus
                    if new is not old and old.can_transition_to(new)) + "))"
        for old in TaskStatus
        if any(new is not old and old.can_transition_to(new) for new in TaskStatus)
    ]
    return f"{before} = {after}\n      OR " + "\n      OR ".join(moves)


def transition_allowed_sql(before: str, after: str) -> str:
    """``_transitions`` as one parenthesized condition. The triggers inline it: calling
    ``aiecs_status_transition_allowed`` from them cost about 45 µs a save, since a function
    with its own ``search_path`` is never inlined."""
    return f"({_transitions(before, after)})"


#: The state machine as a function, for people and for SQL of their own.
TRANSITION_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_status_transition_allowed(
  from_status @S@.task_status, to_status @S@.task_status)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE {PINNED_SEARCH_PATH} AS $$
  SELECT {_transitions("from_status", "to_status")}
$$
"""


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
      USING ERRCODE = '{names.INVALID_TRANSITION_SQLSTATE}',
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
      USING ERRCODE = '{names.INVALID_TRANSITION_SQLSTATE}',
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



# -- keys and creation times never change ---------------------------------------------------------
# A row keeps its keys and its creation time for every writer: a hand-written UPDATE cannot move
# a step into another task or rewrite when it was created. Each table's trigger fires only when
# one of those columns changes (its WHEN clause, evaluated without entering PL/pgSQL), and its
# function names the column in the error (SQLSTATE ``names.IMMUTABLE_SQLSTATE``).

#: The columns no UPDATE may change, by table.
IMMUTABLE_COLUMNS: Final = {
    "tasks": ("user_id", "task_id", "created_at", names.BUCKET),
    "task_history": ("user_id", "task_id", "step", "created_at", names.BUCKET),
    names.EVENTS_TABLE: ("user_id", "task_id", "step", "tx", "seq", "at", names.BUCKET),
}

KEYS_IMMUTABLE_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_keys_immutable() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
DECLARE
  changed text;
BEGIN
  -- TG_ARGV: the table's name (a Citus shard's own name carries a suffix), then its columns.
  SELECT c INTO changed FROM unnest(TG_ARGV[1:]) AS c
  WHERE to_jsonb(NEW) -> c IS DISTINCT FROM to_jsonb(OLD) -> c
  LIMIT 1;
  RAISE EXCEPTION '%.% cannot change: a row keeps its keys and its creation time',
      TG_ARGV[0], changed
    USING ERRCODE = '{names.IMMUTABLE_SQLSTATE}', TABLE = TG_ARGV[0], COLUMN = changed,
          CONSTRAINT = TG_NAME, HINT = 'Insert a new row instead.';
END
$$
"""


def _keys_immutable_trigger(table: str, columns: tuple[str, ...]) -> str:
    changed = "\n   OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in columns)
    arguments = ", ".join(f"'{c}'" for c in (table, *columns))
    return (f"CREATE TRIGGER tr_{table}_keys_immutable BEFORE UPDATE ON {table}\n"
            f"FOR EACH ROW WHEN ({changed})\n"
            f"EXECUTE FUNCTION aiecs_keys_immutable({arguments})")


KEYS_IMMUTABLE_TRIGGERS: Final = tuple(
    _keys_immutable_trigger(table, columns) for table, columns in IMMUTABLE_COLUMNS.items())

# -- partitions: history by the time its task began -------------------------------------------
# task_history and task_events are range-partitioned by ``names.BUCKET``: the creation time of
# their task, truncated to the partition width (``tasks.bucket``, set once by its column
# default). Every row of a task therefore lives in one partition, whatever the time of the row,
# and retention drops a partition whole. The width and how many partitions are kept ready ahead
# live in ``names.PARTITIONING_TABLE``; ``PARTITIONS_FUNCTION`` creates what is due (there is
# no DEFAULT partition: PostgreSQL refuses DETACH ... CONCURRENTLY beside one), and runs as
# the schema's owner, so that a writer role can create the partition its save needs.

#: Buckets are aligned on this instant (midnight UTC): a width of a day gives UTC days.
BUCKET_ORIGIN: Final = "2000-01-01 00:00:00+00"
#: The partition width a new schema gets, and the partitions kept ready past the current one.
DEFAULT_WIDTH: Final = "1 day"
DEFAULT_AHEAD: Final = 3
#: How long the event log (what watchers resume from) is kept, unless set otherwise.
DEFAULT_EVENTS_KEPT: Final = "7 days"

_PARTITIONED: Final = ", ".join(f"'{t}'" for t in names.PARTITIONED_TABLES)


def bucket_sql(width: str = DEFAULT_WIDTH) -> str:
    """The bucket of a task created now: the columns' default (``width`` a SQL interval)."""
    return f"date_bin('{width}'::interval, now(), '{BUCKET_ORIGIN}'::timestamp with time zone)"


#: Each partition of ours with its range, read from the catalog (DateStyle and TimeZone are
#: pinned, so the bounds parse back whatever the caller's session uses).
BOUNDS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_partition_bounds()
RETURNS TABLE (parent text, partition text, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE {PINNED_SEARCH_PATH} SET datestyle = 'ISO, YMD' SET timezone = 'UTC'
AS $$
  SELECT p.relname::text, c.relname::text,
         CASE WHEN m[1] = 'MINVALUE' THEN '-infinity' ELSE btrim(m[1], '''')::timestamptz END,
         CASE WHEN m[2] = 'MAXVALUE' THEN 'infinity' ELSE btrim(m[2], '''')::timestamptz END
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_class p ON p.oid = i.inhparent
  CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                  'FROM \\((.+)\\) TO \\((.+)\\)') AS m
  WHERE p.relnamespace = '@S@'::regnamespace AND p.relname IN ({_PARTITIONED})
$$
"""

#: Create the partitions due: with no argument, the current bucket's and ``ahead`` more; given
#: a time, the one of its bucket (a save's task begun while no partition was there). A range
#: that an existing partition overlaps (the width changed) is clipped to fit. Returns how many
#: partitions it created, or -1 for a bucket of a period retention dropped (``retired_before``:
#: its tasks are being deleted) or whose partition retention has detached and is dropping.
#: Serialized by an advisory lock; at most ``ahead`` buckets ahead.
PARTITIONS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.PARTITIONS_FUNCTION}(p_at timestamptz DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER {PINNED_SEARCH_PATH} SET timezone = 'UTC'
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
  FROM @S@.{names.PARTITIONING_TABLE};
  IF p_at < retired THEN
    RETURN -1;
  END IF;
  IF p_at > now() + w * (n + 1) THEN
    RAISE EXCEPTION 'no partition is created more than % buckets ahead', n
      USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('@S@.{names.PARTITIONS_FUNCTION}'));
  first := date_bin(w, coalesce(p_at, now()), '{BUCKET_ORIGIN}');
  FOR i IN 0 .. CASE WHEN p_at IS NULL THEN n ELSE 0 END LOOP
    lo := first + w * i;
    FOREACH t IN ARRAY ARRAY[{_PARTITIONED}] LOOP
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

#: Where a window of steps created since ``p_since`` begins among the partitions: the oldest
#: bucket of a task active since (``tasks.updated_at``, indexed). Every write of a step is
#: activity of its task: a save touches the task unless it did within the last second
#: (``statements/saves.py``, ``_FRESH``), and a step written by hand touches it through the
#: event trigger. So no step created since ``p_since`` lies in an older partition, and a
#: report of the last day skips last month's partitions whatever its tasks' ages. Runs as the
#: caller, under its row-level security: a scoped role learns nothing of others' tasks.
WINDOW_START_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.WINDOW_START_FUNCTION}(p_since timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE {PINNED_SEARCH_PATH} AS $$
  SELECT CASE WHEN p_since IS NULL THEN '-infinity'::timestamptz
              ELSE coalesce((SELECT min(t.{names.BUCKET}) FROM @S@.tasks t
                             WHERE t.updated_at >= p_since - interval '1 second'),
                            'infinity') END
$$
"""

#: A task's bucket, for a read of its steps: a stable function's result is known when the
#: statement starts, so PostgreSQL prunes the other partitions before it opens them (a bucket
#: read by a subquery is known only while the statement runs: every partition is opened, then
#: skipped). PL/pgSQL keeps the lookup's plan for the session, where an SQL function would be
#: planned at each call.
TASK_BUCKET_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.TASK_BUCKET_FUNCTION}(p_user_id text, p_task_id text)
RETURNS timestamptz LANGUAGE plpgsql STABLE PARALLEL SAFE {PINNED_SEARCH_PATH} AS $$
BEGIN
  RETURN (SELECT t.{names.BUCKET} FROM @S@.tasks t
          WHERE t.user_id = p_user_id AND t.task_id = p_task_id);
END
$$
"""

# -- summaries of closed periods ---------------------------------------------------------------
# A report over a long period adds up the figures of each closed period instead of reading its
# partition (``statements/report.py``). A summary is made in two transactions: the first puts
# a row trigger on the partition that counts every write from then on (only closed partitions
# have it: a save to an open period pays nothing), the second computes the figures and records
# the count its own snapshot saw. A summary is used only while the two counts agree, so a write
# to an old task after it was made, or a deletion by retention, sends the report back to the
# partition until the next summary. Whatever the order of a write and the second transaction,
# either the write is in the figures or the count moved past them.

#: Counts the transactions that write to a summarized partition (its row trigger): the first
#: write of a transaction counts it, and a transaction-local setting named after the partition
#: skips the rest (updating the one summary row for every row written would make a
#: transaction's writes cost the square of their number). A summary is used only while the
#: count is the one its snapshot saw, so one count per transaction is enough: the count and
#: the writes commit, or roll back, together.
WRITTEN_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_period_written() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER {PINNED_SEARCH_PATH} AS $$
BEGIN
  IF current_setting('aiecs.written_' || TG_TABLE_NAME, true) IS DISTINCT FROM 'on' THEN
    UPDATE @S@.{names.SUMMARIES_TABLE} SET writes = writes + 1 WHERE partition = TG_TABLE_NAME;
    PERFORM set_config('aiecs.written_' || TG_TABLE_NAME, 'on', true);
  END IF;
  RETURN NULL;
END
$$
"""

#: The figures a report adds up, of one partition (``%I``): as ``statements/report.py``
#: reads them of the partitions it scans.
_PERIOD_FIGURES: Final = f"""
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
  (SELECT s.writes FROM @S@.{names.SUMMARIES_TABLE} s WHERE s.partition = %L)
"""

#: Summarize one closed partition of the history: the first call puts the counting trigger on
#: it and returns false (call again, in a new transaction), the next computes its figures.
#: Runs as the owner (the trigger needs it), so any role of ours may call it.
SUMMARIZE_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.SUMMARIZE_FUNCTION}(p_partition text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER {PINNED_SEARCH_PATH} AS $$
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
  DELETE FROM @S@.{names.SUMMARIES_TABLE} s
  WHERE NOT EXISTS (SELECT FROM @S@.aiecs_partition_bounds() b
                    WHERE b.parent = 'task_history' AND b.partition = s.partition);
  IF NOT EXISTS (SELECT FROM @S@.{names.SUMMARIES_TABLE} WHERE partition = p_partition) THEN
    INSERT INTO @S@.{names.SUMMARIES_TABLE} (partition) VALUES (p_partition);
    EXECUTE format('CREATE OR REPLACE TRIGGER tr_period_written '
                   'AFTER INSERT OR UPDATE OR DELETE ON @S@.%I '
                   'FOR EACH ROW EXECUTE FUNCTION @S@.aiecs_period_written()', p_partition);
    RETURN false;
  END IF;
  EXECUTE format($f${_PERIOD_FIGURES}$f$, p_partition, p_partition)
    INTO v_first, v_last, v_figures, v_seen;
  UPDATE @S@.{names.SUMMARIES_TABLE} s
  SET first_created = v_first, last_created = v_last, figures = v_figures,
      writes_seen = v_seen, made_at = now()
  WHERE s.partition = p_partition;
  RETURN true;
END
$$
"""

#: Change the partition width: the buckets of tasks created from now on, and the partitions
#: created for them (existing partitions keep their ranges).
WIDTH_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_set_partition_width(p_width interval) RETURNS void
LANGUAGE plpgsql {PINNED_SEARCH_PATH} AS $$
DECLARE
  t text;
BEGIN
  IF p_width IS NULL OR p_width < interval '1 second' THEN
    RAISE EXCEPTION 'partition width %: at least 1 second', p_width USING ERRCODE = '22023';
  END IF;
  UPDATE @S@.{names.PARTITIONING_TABLE} SET width = p_width;
  FOREACH t IN ARRAY ARRAY['tasks', {_PARTITIONED}] LOOP
    EXECUTE format('ALTER TABLE @S@.%I ALTER COLUMN {names.BUCKET} SET DEFAULT '
                   'date_bin(%L::interval, now(), %L::timestamptz)',
                   t, p_width, '{BUCKET_ORIGIN}');
  END LOOP;
  PERFORM @S@.{names.PARTITIONS_FUNCTION}();
END
$$
"""

# -- task events: what watchers follow (watch.py) ------------------------------------------------
# Every committed insert or update of a step, and every status change of a task, appends one
# row to task_events. Our own writes log their events in the same statement (the saves append
# the rows their INSERTs return; the bulk path COPYs them) and set ``names.OWN_EVENTS_SETTING`` for
# their transaction, so the insert triggers skip them by their WHEN clause, evaluated without
# entering PL/pgSQL (the trigger cost 15 to 35 µs a row, revision 0005). Row-level AFTER
# triggers log everything else (psql writers, status changes of existing tasks). Each
# trigger also notifies each listener that watches the task (or its user) in
# ``names.WATCHED_TABLE``, on its own channel (``names.channel``), and only then: a notifying
# commit takes a cluster-wide lock in PostgreSQL. Events go with their task (a statement-level
# AFTER DELETE trigger; a foreign key would cost a check on every event).

EVENTS_NOT_OWN: Final = (
    f"WHEN (current_setting('{names.OWN_EVENTS_SETTING}', true) IS DISTINCT FROM 'on')"
)

STEP_EVENTS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_task_history_changed() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
BEGIN
  IF current_setting('{names.OWN_EVENTS_SETTING}', true) = 'on' THEN
    RETURN NULL;
  END IF;
  INSERT INTO @S@.{names.EVENTS_TABLE} (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at, bucket)
  VALUES (NEW.user_id, NEW.task_id, NEW.step, NEW.step_name, NEW.result, NEW.completed,
          NEW.message, NEW.status, NEW.error_code, NEW.error_message, NEW.updated_at,
          NEW.bucket);
  -- A step written by hand is activity of its task, as a save's is (WINDOW_START_FUNCTION).
  UPDATE @S@.tasks SET updated_at = greatest(NEW.created_at, NEW.updated_at)
  WHERE user_id = NEW.user_id AND task_id = NEW.task_id
    AND updated_at < greatest(NEW.created_at, NEW.updated_at);
  PERFORM {names.notify("NEW.user_id", "NEW.task_id")}
  FROM @S@.{names.WATCHED_TABLE} w
  WHERE w.user_id = NEW.user_id AND w.task_id = NEW.task_id AND w.until > now();
  RETURN NULL;
END
$$
"""

TASK_EVENTS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_changed() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
BEGIN
  INSERT INTO @S@.{names.EVENTS_TABLE} (user_id, task_id, status, error_code, error_message, at,
                               bucket)
  VALUES (NEW.user_id, NEW.task_id, NEW.status, NEW.error_code, NEW.error_message,
          NEW.updated_at, NEW.bucket);
  PERFORM {names.notify("NEW.user_id", "NEW.task_id")}
  FROM @S@.{names.WATCHED_TABLE} w
  WHERE w.user_id = NEW.user_id AND w.task_id IN (NEW.task_id, '') AND w.until > now();
  RETURN NULL;
END
$$
"""

#: Deleted tasks' events, one bucket at a time: the bucket a known value, each delete reads
#: the one partition of that bucket, or none when retention has detached it (joined on the
#: bucket, the delete probed every partition for every task). On Citus a worker cannot plan a
#: join with the transition table ("unrecognized RTE kind"): there the events go task by task,
#: each a single-shard statement (revision 0006).
TASKS_GONE_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.aiecs_tasks_deleted() RETURNS trigger LANGUAGE plpgsql
{PINNED_SEARCH_PATH} AS $$
DECLARE
  k record;
  b timestamptz;
BEGIN
  IF current_setting('citus.version', true) IS NULL THEN
    FOR b IN SELECT DISTINCT g.bucket FROM gone g LOOP
      DELETE FROM @S@.{names.EVENTS_TABLE} e USING gone g
      WHERE e.bucket = b AND g.bucket = b
        AND e.user_id = g.user_id AND e.task_id = g.task_id;
    END LOOP;
  ELSE
    FOR k IN SELECT DISTINCT g.user_id, g.task_id, g.bucket FROM gone g LOOP
      DELETE FROM @S@.{names.EVENTS_TABLE} e
      WHERE e.user_id = k.user_id AND e.task_id = k.task_id AND e.bucket = k.bucket;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$
"""

#: A save as one call, for Citus (``statements.saves.SAVE_STEPS_CALL``): one user's
#: saves, distinct keys in key order — tasks first, then steps, and the events of both as the
#: plain statement logs them — which Citus runs whole on the node that owns the user
#: (``citus.py`` distributes it by ``p_user_id``). It takes the caller's ``lock_timeout``,
#: which Citus does not pass on to the node. No NOTIFY: on a worker it reaches no client.
SAVE_STEPS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.SAVE_STEPS_FUNCTION}(
  p_user_id text, p_task_ids text[], p_steps integer[], p_step_names text[], p_results jsonb[],
  p_completed boolean[], p_messages text[], p_statuses @S@.task_status[],
  p_error_codes @S@.error_code[], p_error_messages text[], p_lock_timeout text) RETURNS void
LANGUAGE plpgsql {PINNED_SEARCH_PATH} AS $$
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
  PERFORM set_config('{names.OWN_EVENTS_SETTING}', 'on', true);
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
      INSERT INTO @S@.{names.EVENTS_TABLE} (user_id, task_id, status, error_code, error_message, at,
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
    INSERT INTO @S@.{names.EVENTS_TABLE} (user_id, task_id, step, step_name, result, completed,
                               message, status, error_code, error_message, at, bucket)
    VALUES (p_user_id, p_task_ids[i], p_steps[i], p_step_names[i], p_results[i],
            p_completed[i], p_messages[i], p_statuses[i], p_error_codes[i],
            p_error_messages[i], row_at, task_bucket);
  END LOOP;
END
$$
"""


#: The xmin horizon of the node that holds a user's rows, for watchers on Citus
#: (``statements.watching.WATCH_HORIZON``): their events carry that node's transaction
#: ids, to which the coordinator's own snapshot says nothing. Distributed by ``p_user_id``.
HORIZON_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.HORIZON_FUNCTION}(p_user_id text) RETURNS bigint
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
    f"""CREATE TRIGGER {names.TASKS_DELETED_TRIGGER} AFTER DELETE ON tasks
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
CREATE VIEW step_details WITH (security_invoker = true) AS
SELECT h.user_id, h.task_id, h.step, h.step_name, h.status, h.completed, h.message,
       h.error_code, e.name AS error_name, e.category AS error_category,
       e.description AS error_description, h.error_message, h.result,
       h.created_at, h.updated_at, h.bucket
FROM task_history h
LEFT JOIN error_codes e ON e.code = h.error_code
"""

TASK_SUMMARY_VIEW: Final = """
CREATE VIEW task_summary WITH (security_invoker = true) AS
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
"""

FAILURES_BY_DAY_VIEW: Final = """
CREATE VIEW failures_by_day WITH (security_invoker = true) AS
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

# -- row-level security: tenants (scopes.py) ---------------------------------------------------
# Every table holding users' rows has row-level security, forced on its owner too, and one
# permissive policy that lets every role see and write every row: unscoped roles behave as
# without it, for the cost of a ``true`` qual. ``aiecs-db scope`` adds, for the group role
# ``names.SCOPED_ROLE`` only, restrictive policies that confine its members to the users of
# their scope: roles outside that group never evaluate them.

#: The ``LIKE`` patterns of the current role's scope (reads; with ``p_writes``, writes): none for
#: a role without one. A scoped role reads only its own row of ``names.SCOPES_TABLE``. The
#: policies call it as an uncorrelated subquery, evaluated once per statement.
SCOPE_PATTERNS_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION @S@.{names.SCOPE_PATTERNS_FUNCTION}(p_writes boolean)
RETURNS text[] LANGUAGE plpgsql STABLE {PINNED_SEARCH_PATH} AS $$
BEGIN
  RETURN (SELECT coalesce(array_agg(p.pattern), '{{}}')
          FROM @S@.{names.SCOPES_TABLE} s CROSS JOIN LATERAL unnest(s.patterns) AS p(pattern)
          WHERE s.role = current_user AND (s.writes OR NOT p_writes));
END
$$
"""

ROW_SECURITY: Final = tuple(
    statement
    for table in names.ROW_SECURITY_TABLES
    for statement in (
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {names.OPEN_POLICY} ON {table} USING (true) WITH CHECK (true)",
    )
)

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
    in_current_schema(BOUNDS_FUNCTION),
    in_current_schema(PARTITIONS_FUNCTION),
    in_current_schema(WIDTH_FUNCTION),
    in_current_schema(WINDOW_START_FUNCTION),
    in_current_schema(TASK_BUCKET_FUNCTION),
    in_current_schema(WRITTEN_FUNCTION),
    in_current_schema(SUMMARIZE_FUNCTION),
    in_current_schema(KEYS_IMMUTABLE_FUNCTION),
    *KEYS_IMMUTABLE_TRIGGERS,
    STEP_DETAILS_VIEW,
    TASK_SUMMARY_VIEW,
    FAILURES_BY_DAY_VIEW,
    in_current_schema(SCOPE_PATTERNS_FUNCTION),
    *ROW_SECURITY,
)

#: The partitioning settings' one row, then the partitions due.
SEED_PARTITIONS: Final = (
    f"INSERT INTO {names.PARTITIONING_TABLE} (width, ahead) "
    f"VALUES ('{DEFAULT_WIDTH}', {DEFAULT_AHEAD})",
    f"SELECT {names.PARTITIONS_FUNCTION}()",
)

SEED_ERROR_CODES: Final = "INSERT INTO error_codes (code, name, category, description) VALUES " + (
    ", ".join(
        "('{code}', '{name}', '{category}', '{description}')".format(**row)
        for row in ERROR_CODE_ROWS
    )
)

#: What ``metadata.drop_all`` runs first (``schema.py``), dependents before what they use.
DROP_STATEMENTS: Final = (
    *(f"DROP VIEW IF EXISTS {v}" for v in reversed(VIEW_NAMES)),
    f"DROP FUNCTION IF EXISTS {names.SAVE_STEPS_FUNCTION}(text, text[], integer[], text[], "
    "jsonb[], boolean[], text[], task_status[], error_code[], text[], text)",
    f"DROP FUNCTION IF EXISTS {names.HORIZON_FUNCTION}(text)",
    "DROP FUNCTION IF EXISTS aiecs_set_partition_width(interval)",
    f"DROP FUNCTION IF EXISTS {names.WINDOW_START_FUNCTION}(timestamptz)",
    f"DROP FUNCTION IF EXISTS {names.TASK_BUCKET_FUNCTION}(text, text)",
    f"DROP FUNCTION IF EXISTS {names.SUMMARIZE_FUNCTION}(text)",
    "DROP FUNCTION IF EXISTS aiecs_period_written() CASCADE",
    f"DROP FUNCTION IF EXISTS {names.PARTITIONS_FUNCTION}(timestamptz)",
    "DROP FUNCTION IF EXISTS aiecs_partition_bounds()",
    "DROP FUNCTION IF EXISTS aiecs_tasks_changed() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_tasks_deleted() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_task_history_changed() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_tasks_before_write() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_task_history_before_update() CASCADE",
    "DROP FUNCTION IF EXISTS aiecs_status_transition_allowed(task_status, task_status)",
    "DROP FUNCTION IF EXISTS aiecs_keys_immutable() CASCADE",
    f"DROP FUNCTION IF EXISTS {names.SCOPE_PATTERNS_FUNCTION}(boolean)",
)
