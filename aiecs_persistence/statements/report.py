"""The failure report's statement (over the reporting views, so the read-only role can run it):
failures by error code and by category, the busiest step names and per-day counts of a window.

Three reads of the window, none carrying ``result``: per step name and per day in one scan
(hash grouping sets, a handful of groups), the failures (through the partial index on
error_code; the distinct tasks per code by hashing each code's tasks, then counting them,
not by count(DISTINCT ...), which sorts every failure, on disk past work_mem), and the
distinct tasks (a hash DISTINCT of two columns). A window is found through the BRIN index on
created_at. (A CTE of all the window's steps, sorted again for each count(DISTINCT ...), was
3.4x slower on 2M steps; four separate reads, 1.15x faster on a whole table, read a small
window four times. See docs/performance.md.)

A plain server counts per step name, per day and in all in one hash ``GROUPING SETS`` scan
(``REPORT``); Citus cannot run ``GROUPING SETS`` over distributed tables (``REPORT_CLUSTER``).
The dialect (``dialect.py``) picks one.
"""

from __future__ import annotations

from typing import Any, Final

from .. import names
from .checks import check_limit, check_time
from .statement import Statement

#: The report's own transaction settings. JIT off: PostgreSQL compiles this statement's
#: aggregates because their estimated cost is high, and on PostgreSQL 15 spent 430 ms of a
#: 1.2 s report doing so, more than it saved. More work_mem: the hashes of the distinct tasks
#: (a few hundred thousand (user_id, task_id) pairs on a table of millions of steps) fit in
#: memory instead of spilling to disk in batches. Each hash may take work_mem times
#: hash_mem_multiplier, in this one statement's transaction only.
REPORT_SETTINGS: Final = {"jit": "off", "work_mem": "32MB"}

_WINDOW: Final = """FROM step_details
  WHERE created_at >= COALESCE(%(since)s::timestamptz, '-infinity')
    AND created_at < COALESCE(%(until)s::timestamptz, 'infinity')"""

#: The window on a plain server, where the history is partitioned by the time its task began:
#: only the partitions from ``scan_from`` on (``_SUMMARIES``), pruned as the statement runs.
_PRUNED_WINDOW: Final = (_WINDOW + f"""
    AND {names.BUCKET} >= (SELECT scan_from FROM plan)""")

#: Which partitions of the history the report reads, and which it takes from their summaries
#: (``ddl.SUMMARIZE_FUNCTION``). None before the oldest bucket of a task active since
#: ``since`` (``ddl.WINDOW_START_FUNCTION``, called once: as a condition on each partition,
#: the planner would call it for its estimates, once a partition and a read) can hold a step
#: of the window. Of the others, one whose summary is current (no write since it was made) is
#: used whole when all its steps lie in the window, skipped when none does; the rest are read,
#: from the oldest of them on (``scan_from``). Each task lives in one partition, so the
#: figures of distinct partitions add up, distinct tasks included.
_SUMMARIES: Final = f"""start AS MATERIALIZED (
  SELECT {names.WINDOW_START_FUNCTION}(%(since)s::timestamptz) AS at
),
kinds AS (
  SELECT b.lower, s.figures,
         CASE WHEN b.upper <= (SELECT at FROM start) THEN 'skip'
              WHEN s.figures IS NULL THEN 'scan'
              WHEN s.first_created IS NULL
                OR s.last_created < COALESCE(%(since)s::timestamptz, '-infinity')
                OR s.first_created >= COALESCE(%(until)s::timestamptz, 'infinity') THEN 'skip'
              WHEN s.first_created >= COALESCE(%(since)s::timestamptz, '-infinity')
               AND s.last_created < COALESCE(%(until)s::timestamptz, 'infinity') THEN 'use'
              ELSE 'scan' END AS how
  FROM aiecs_partition_bounds() b
  LEFT JOIN {names.SUMMARIES_TABLE} s ON s.partition = b.partition AND s.writes_seen = s.writes
  WHERE b.parent = 'task_history'
),
plan AS (
  SELECT COALESCE((SELECT min(lower) FROM kinds WHERE how = 'scan'), 'infinity') AS scan_from
),
used AS (
  SELECT k.figures AS f FROM kinds k, plan WHERE k.how = 'use' AND k.lower < plan.scan_from
)"""


def _report(counts: str, totals: str, names: str, days: str, window: str = _PRUNED_WINDOW,
            summaries: bool = True) -> str:
    """The report over the window's step counts (``counts``: CTEs; ``totals``, ``names``,
    ``days``: where the whole window's, each step name's and each day's rows are), with the
    failures by code and category and the distinct tasks read apart; with ``summaries``, the
    figures of the partitions read and those of the summaries used, added up."""
    def used(path: str, fields: str) -> str:
        """The summaries' rows at ``path`` (an array of their figures) as ``fields``."""
        return (f" UNION ALL SELECT {fields} FROM used, jsonb_array_elements(used.f->'{path}') j"
                if summaries else "")

    def used_total(key: str) -> str:
        return (f" + (SELECT COALESCE(sum((f->>'{key}')::bigint), 0) FROM used)"
                if summaries else "")

    return f"""
WITH {_SUMMARIES + "," if summaries else ""}
{counts},
failed AS (
  SELECT error_code, error_name, error_category, sum(failures) AS failures, sum(tasks) AS tasks
  FROM (SELECT error_code::text AS error_code, error_name, error_category,
               sum(n) AS failures, count(*) AS tasks
        FROM (SELECT error_code, error_name, error_category, count(*) AS n
              {window} AND error_code IS NOT NULL
              GROUP BY error_code, error_name, error_category, user_id, task_id) f
        GROUP BY error_code, error_name, error_category{used("by_code",
            "j->>'error_code', j->>'error_name', j->>'error_category', "
            "(j->>'failures')::bigint, (j->>'tasks')::bigint")}) f
  GROUP BY error_code, error_name, error_category
)
SELECT
  (SELECT jsonb_build_object(
            'steps', COALESCE(sum(c.steps), 0){used_total("steps")},
            'tasks', (SELECT count(*) FROM (SELECT DISTINCT user_id, task_id
                                            {window}) d){used_total("tasks")},
            'failures', COALESCE(sum(c.failures), 0){used_total("failures")})
   FROM {totals}) AS totals,
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.failures DESC, x.error_code), '[]') FROM failed x)
    AS by_code,
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.failures DESC, x.category), '[]')
   FROM (SELECT error_category AS category, sum(failures) AS failures
         FROM failed GROUP BY error_category) x) AS by_category,
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.steps DESC, x.step_name), '[]')
   FROM (SELECT step_name, sum(steps) AS steps, sum(failures) AS failures
         FROM (SELECT step_name, steps, failures FROM {names}{used("by_name",
            "j->>'step_name', (j->>'steps')::bigint, (j->>'failures')::bigint")}) n
         GROUP BY step_name ORDER BY steps DESC, step_name LIMIT %(top)s) x) AS busiest_steps,
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.day), '[]')
   FROM (SELECT day, sum(steps) AS steps, sum(completed) AS completed,
                sum(failures) AS failures
         FROM (SELECT day, steps, completed, failures FROM {days}{used("per_day",
            "j->>'day', (j->>'steps')::bigint, (j->>'completed')::bigint, "
            "(j->>'failures')::bigint")}) d
         GROUP BY day) x) AS per_day
"""


#: Per step name, per day and in all, in one hash GROUPING SETS scan of the window.
REPORT: Final = _report(
    f"""counts AS (
  SELECT GROUPING(s.step_name, s.day) AS grouped, s.step_name, s.day, count(*) AS steps,
         count(*) FILTER (WHERE s.error_code IS NOT NULL) AS failures,
         count(*) FILTER (WHERE s.status = 'completed') AS completed
  FROM (SELECT step_name, error_code, status,
               ((created_at AT TIME ZONE 'UTC')::date)::text AS day
        {_PRUNED_WINDOW}) s
  GROUP BY GROUPING SETS ((s.step_name), (s.day), ())
)""",
    totals="counts c WHERE c.grouped = 3",
    names="counts WHERE grouped = 1",
    days="counts WHERE grouped = 2",
)

#: ``REPORT`` on Citus, which cannot run ``GROUPING SETS`` over distributed tables: one
#: aggregate per figure, each straight over the view, so that every worker aggregates its own
#: shards and the coordinator only adds their partial counts (no CTE read twice, which Citus
#: would gather on the coordinator first).
REPORT_CLUSTER: Final = _report(
    f"""by_name AS (
  SELECT step_name, count(*) AS steps,
         count(*) FILTER (WHERE error_code IS NOT NULL) AS failures
  {_WINDOW}
  GROUP BY step_name
),
by_day AS (
  SELECT ((created_at AT TIME ZONE 'UTC')::date)::text AS day, count(*) AS steps,
         count(*) FILTER (WHERE status = 'completed') AS completed,
         count(*) FILTER (WHERE error_code IS NOT NULL) AS failures
  {_WINDOW}
  GROUP BY 1
)""",
    totals="by_day c",
    names="by_name",
    days="by_day",
    window=_WINDOW,
    summaries=False,
)


def report(since: Any = None, until: Any = None, top: Any = 10, *,
           form: str = REPORT) -> Statement:
    """Failures by error code and by category, the busiest step names and per-day counts of
    the steps created in ``[since, until)`` (UTC days), as ``form`` (the dialect's) reads
    them."""
    return Statement("report", form, {
        "since": None if since is None else check_time(since, "since"),
        "until": None if until is None else check_time(until, "until"),
        "top": check_limit(top, "top"),
    }, statements=2, local=REPORT_SETTINGS)
