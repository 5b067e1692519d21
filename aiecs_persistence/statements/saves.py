"""The saves: one step (``save_step``), many in one statement (group commit), and the cluster's
one-user call. Each save writes its task (created running, or its activity refreshed), its step
and their events in one statement, then wakes whoever watches the task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from .. import names
from .checks import check_id, check_step_index, step_fields
from .columns import (
    RESULT_COLUMNS,
    STEP_COLUMNS,
    array_type,
    casted,
    listed,
    task_arrays,
    text_array,
)
from .statement import Statement

# A step goes to its task's partition: its ``bucket`` is the task's (ddl.py, partitions).
B: Final = names.BUCKET
STEP_INSERT: Final = f"INSERT INTO task_history AS h ({listed(STEP_COLUMNS)}, {B})\n"
_STEP_VALUES: Final = casted(STEP_COLUMNS)
STEP_CONFLICT: Final = (
    f"\nON CONFLICT (user_id, task_id, step, {B}) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in RESULT_COLUMNS) + "\n"
)

# -- the saves' own event log (ddl.py, task events) -----------------------------------------
# Each save writes its events itself, in the same statement: ``own`` turns the event triggers
# off for its transaction (their WHEN clause reads the setting, in C, without entering
# PL/pgSQL), ``logged`` appends the rows the statement inserted or updated (a task it created,
# then its steps, in that order) to task_events, and the main query wakes whoever watches one
# of the saved tasks (or its user, for a task the save created). Rows written any other way
# (psql, a status change of an existing task) are still logged by the triggers.
#
# The main query names the saved tasks by the save's own parameters, not by reading
# ``logged`` back: PostgreSQL runs a data-modifying WITH query to completion whether or not the
# main query reads it, and a notification is only sent at commit anyway. Reading ``logged``
# (its RETURNING rows, their DISTINCT) cost 15 to 20 µs of a lone save (docs/performance.md).

OWN_EVENTS: Final = f"own AS (SELECT {names.set_own_events()} AS own)"
TASK_RETURNING: Final = (
    "RETURNING t.user_id, t.task_id, t.status, t.error_code, t.error_message, t.updated_at, "
    f"t.xmax = 0 AS inserted, t.{B}"
)
_STEP_RETURNING: Final = f"RETURNING {listed(STEP_COLUMNS, 'h.')}, h.updated_at, h.{B}"
EVENTS_INSERT: Final = f"INSERT INTO {names.EVENTS_TABLE} ({listed(STEP_COLUMNS)}, at, {B})"
_LOG_STEPS: Final = f"""logged AS (
  {EVENTS_INSERT}
  SELECT {listed(STEP_COLUMNS)}, updated_at, {B} FROM step
)"""
_LOG_TASKS_AND_STEPS: Final = f"""logged AS (
  {EVENTS_INSERT}
  SELECT user_id, task_id, NULL::integer, NULL::text, NULL::jsonb, NULL::boolean, NULL::text,
         status, error_code, error_message, updated_at, {B}
  FROM task WHERE inserted
  UNION ALL
  SELECT {listed(STEP_COLUMNS)}, updated_at, {B} FROM step
)"""


def _wake(user: str, task: str, created: str, source: str = "") -> str:
    """The main query of a save: notify each listener (its own channel, ``names.channel``)
    that watches the task ``user``/``task`` (SQL expressions, over ``source`` when given), or
    watches its user and ``created`` (the save created the task: its user's watchers follow
    task events)."""
    return f"""
SELECT {names.notify(user, task)}{source or chr(10) + "FROM"} {names.WATCHED_TABLE} w
WHERE w.user_id = {user} AND w.until > now()
  AND (w.task_id = {task} OR (w.task_id = '' AND {created}))"""

#: The probe of a save's task: it is running (or ended) and was touched less than a second ago,
#: so the save may leave it alone. Read beside the task's bucket, by the primary key only: no
#: index may serve ``updated_at`` here. Given ``updated_at >= now() - 1 s``, the
#: planner read the recent end of ``ix_tasks_updated_at`` wherever the statistics made that
#: range look empty (after an ANALYZE, as autovacuum runs it): every task touched in the last
#: second, for each save or batch — about 12,000 index entries at 15,000 saves/s
#: (docs/performance.md).
_FRESH: Final = "f.status <> 'pending' AND now() - f.updated_at <= interval '1 second'"

#: ``_wake``'s ``created`` for a lone save: its ``task`` returned an inserted row.
_CREATED: Final = "EXISTS (SELECT FROM task WHERE inserted)"

#: The task's row as a save finds it (``probe``): its bucket, and whether it is fresh.
_PROBE: Final = f"""probe AS (
  SELECT f.{B}, {_FRESH} AS fresh FROM tasks f
  WHERE f.user_id = %(user_id)s AND f.task_id = %(task_id)s
)"""

#: The step's bucket: its task's, as the save wrote it or found it. NULL only when the task
#: was created by a transaction committed after this statement began and left as it was: no
#: partition takes the row, and the managers save again (``ManagerBase._task_was_gone``).
_TASK_BUCKET: Final = f"coalesce((SELECT {B} FROM task), (SELECT {B} FROM probe))"

# The task comes first: ``step`` reads ``task`` (count(*) runs it to completion), so a save
# waits for a concurrent writer's hold on the task *before* it holds its step. (A save holding
# its new step while waiting for the task deadlocked with a bulk load holding the task while
# waiting for that step.)
SAVE_STEP: Final = f"""
WITH {OWN_EVENTS},
{_PROBE},
task AS (
  INSERT INTO tasks AS t (user_id, task_id, status, started_at)
  SELECT %(user_id)s, %(task_id)s, 'running', now() FROM own
  WHERE NOT EXISTS (SELECT FROM probe WHERE fresh)
  ON CONFLICT (user_id, task_id) DO UPDATE
    SET status = CASE WHEN t.status = 'pending' THEN 'running'::task_status ELSE t.status END
    WHERE t.status = 'pending' OR t.updated_at < now() - interval '1 second'
  {TASK_RETURNING}
),
step AS (
  {STEP_INSERT}  SELECT {_STEP_VALUES}, {_TASK_BUCKET}
  FROM (SELECT count(*) FROM task) AS task_first, own{STEP_CONFLICT}  {_STEP_RETURNING}
),
{_LOG_TASKS_AND_STEPS}{_wake("%(user_id)s", "%(task_id)s", _CREATED)}"""

#: ``SAVE_STEP`` without the task part, for a task this manager touched less than a second ago
#: (``ManagerBase._recently_touched``): the step's foreign key then proves the task exists, and
#: a violation (the task was deleted meanwhile) sends the save down the full path again. The
#: step's bucket is read from the task by its primary key.
SAVE_STEP_ONLY: Final = f"""
WITH {OWN_EVENTS},
step AS (
  {STEP_INSERT}  SELECT {_STEP_VALUES}, (
    SELECT f.{B} FROM tasks f WHERE f.user_id = %(user_id)s AND f.task_id = %(task_id)s)
  FROM own{STEP_CONFLICT}  {_STEP_RETURNING}
),
{_LOG_STEPS}{_wake("%(user_id)s", "%(task_id)s", "false")}"""


def tasks_upsert(*, citus: bool) -> str:
    """The tasks of many saves (distinct, in key order, so concurrent batches lock them in one
    order): created running, or moved pending → running, or their activity refreshed when it
    is more than a second old — ``SAVE_STEP``'s task part over arrays (parameters: users,
    tasks). ``EXCLUDED.updated_at`` is the statement's ``now()`` (Citus wants no ``now()`` in an
    ``ON CONFLICT`` filter). Off Citus it runs after ``own`` (the statements using it log the
    tasks they create), first skips tasks refreshed within the second, a subquery beside
    ``unnest`` that Citus refuses, and gives new tasks their start time, so they skip the
    status trigger (``ddl.TASKS_INSERT_TRIGGER``; on Citus the trigger fills it in).
    ``OFFSET 0`` keeps that probe a subquery run per task (a primary-key lookup each), which
    the planner would otherwise be free to turn into a join reading far more of ``tasks``."""
    shortcut = "" if citus else f""", own
WHERE NOT EXISTS (
  SELECT FROM tasks f WHERE f.user_id = x.u AND f.task_id = x.k AND {_FRESH} OFFSET 0)"""
    started_column, started_value = ("", "") if citus else (", started_at", ", now()")
    return f"""
INSERT INTO tasks AS t (user_id, task_id, status{started_column})
SELECT u, k, 'running'::task_status{started_value}
FROM unnest(%(users)s::text[], %(tasks)s::text[]) AS x(u, k){shortcut}
ORDER BY 1, 2
ON CONFLICT (user_id, task_id) DO UPDATE
  SET status = CASE WHEN t.status = 'pending' THEN 'running'::task_status ELSE t.status END
  WHERE t.status = 'pending' OR EXCLUDED.updated_at - t.updated_at > interval '1 second'"""

TASKS_UPSERT: Final = f"{tasks_upsert(citus=False)}\n{TASK_RETURNING}"

#: ``_wake`` for a batch: each of its tasks (the distinct ``users``/``tasks`` pairs).
_WAKE_BATCH: Final = _wake(
    "k.user_id", "k.task_id",
    "EXISTS (SELECT FROM task t WHERE t.user_id = k.user_id AND t.task_id = k.task_id"
    " AND t.inserted)",
    "\nFROM unnest(%(users)s::text[], %(tasks)s::text[]) AS k(user_id, task_id),")

#: Many saves in one statement (group commit, ``group.py``): the tasks first, then one step per
#: save (distinct keys, in key order) from one array per column, each a ``text_array`` literal,
#: so that the statement goes through the managers' lean path like a lone save.
SAVE_STEPS: Final = f"""
WITH {OWN_EVENTS},
task AS ({TASKS_UPSERT}),
step AS (
  {STEP_INSERT}  SELECT {listed(STEP_COLUMNS, 'r.')}, coalesce(t.{B}, (
    SELECT f.{B} FROM tasks f WHERE f.user_id = r.user_id AND f.task_id = r.task_id))
  FROM unnest({", ".join(f"%({c})s::{array_type(c)}" for c in STEP_COLUMNS)})
         AS r({listed(STEP_COLUMNS)})
       LEFT JOIN task t ON t.user_id = r.user_id AND t.task_id = r.task_id,
       (SELECT count(*) FROM task) AS task_first, own
  ORDER BY r.user_id, r.task_id, r.step{STEP_CONFLICT}  {_STEP_RETURNING}
),
{_LOG_TASKS_AND_STEPS}{_WAKE_BATCH}"""


def save_step(
    user_id: Any, task_id: Any, step: Any, step_result: Any, *, max_result_bytes: int
) -> Statement:
    """Create the task if needed (pending → running), then insert or re-save the step.

    One statement, so one round trip and atomic. A re-save follows the state machine (the
    trigger rejects an illegal move); a step saved after its task ended is stored and leaves
    the task's status as it is. The task's ``updated_at`` (its last activity) is refreshed
    only when it is more than a second old: a burst of saves to a running task skips the
    task upsert (its trigger, row lock and three index entries) after one index probe; the
    step insert's foreign key check still locks the task row, so cleanup cannot delete it
    underneath (see docs/performance.md).
    """
    params = {
        "user_id": check_id(user_id, "user_id"),
        "task_id": check_id(task_id, "task_id"),
        "step": check_step_index(step),
        **step_fields(step_result, max_result_bytes=max_result_bytes),
    }
    return Statement("save_task_history", SAVE_STEP, params, lean=True)


def step_key(save: Statement) -> tuple[str, str, int]:
    """A save statement's (user_id, task_id, step)."""
    params = save.params
    return params["user_id"], params["task_id"], params["step"]


def save_steps(saves: Sequence[Statement]) -> Statement:
    """One statement for many ``save_step`` statements of distinct keys (group commit)."""
    ordered = sorted(saves, key=step_key)
    params = {c: text_array([save.params[c] for save in ordered]) for c in STEP_COLUMNS}
    params.update(task_arrays((save.params["user_id"], save.params["task_id"])
                              for save in ordered))
    return Statement("save_task_history (batch)", SAVE_STEPS, params, lean=True)

#: The cluster's shape of ``SAVE_STEPS`` (docs/scaling.md): the saves of one user as one call
#: of ``names.SAVE_STEPS_FUNCTION`` (``ddl.SAVE_STEPS_FUNCTION``), which Citus sends whole to the
#: node that owns the user (``citus.py`` distributes it by its first argument). Same rows, same
#: events; no NOTIFY, which would not reach the coordinator's listeners (watchers poll there).
SAVE_STEPS_CALL: Final = (
    f"SELECT {names.SAVE_STEPS_FUNCTION}(%(user_id)s, "
    + ", ".join(f"%({c})b::{array_type(c)}" for c in STEP_COLUMNS[1:])
    + ", %(lock_timeout)s)"
)


def save_steps_call(saves: Sequence[Statement], lock_timeout_ms: int | None = None
                    ) -> Statement:
    """``SAVE_STEPS_CALL`` for ``save_step`` statements of one user and distinct keys, under
    the caller's lock timeout (milliseconds; None: the node's)."""
    ordered = sorted(saves, key=step_key)
    users = {save.params["user_id"] for save in ordered}
    if len(users) != 1:
        raise ValueError(f"save_steps_call: one user's saves only, got {len(users)} users")
    params: dict[str, Any] = {c: [save.params[c] for save in ordered] for c in STEP_COLUMNS[1:]}
    params["user_id"] = users.pop()
    params["lock_timeout"] = None if lock_timeout_ms is None else str(int(lock_timeout_ms))
    name = "save_task_history" if len(ordered) == 1 else "save_task_history (batch)"
    return Statement(name, SAVE_STEPS_CALL, params)
