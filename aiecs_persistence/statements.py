"""Every SQL statement the managers run, built in one place and shared by both managers.

Each builder validates its arguments (raising ``ValidationError`` that names the field, before
anything reaches the database) and returns a :class:`Statement`: SQL text with psycopg
``%(name)s`` placeholders plus its parameters. The SQL text is fixed: user input only ever
travels as parameters. Row shapers turn result rows into the upstream shapes or typed records.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, TypeVar

from .domain import ID_MAX_LENGTH, UNSUCCESSFUL_STATUSES, ErrorCode, TaskStatus, TaskStepResult
from .errors import InvalidTransitionError, ValidationError, shown
from .jsonb import check_text, encode_result
from .records import Position, StepRecord, TaskRecord, decode_cursor, encode_cursor

__all__ = ["Statement"]

E = TypeVar("E", bound=Enum)

#: Largest step index (PostgreSQL ``integer``).
STEP_MAX: Final = 2**31 - 1
#: Largest page of a listing.
LIMIT_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL with its parameters. ``idempotent`` statements may be retried after a transient
    failure (running them twice has the effect of running them once)."""

    name: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    idempotent: bool = True
    #: How many statements the call runs, each allowed ``statement_timeout``: its client
    #: deadline (deadline.py). None: the call arms its own deadlines (the bulk path, per chunk).
    statements: int | None = 1
    #: Sent by the managers' lean path (prepared.py): text parameters only, no rows read.
    lean: bool = False
    #: Server settings for the statement's own transaction only (``SET LOCAL``), such as the
    #: report's planner settings: the managers run it in a transaction after ``SET_LOCAL``.
    local: Mapping[str, str] = field(default_factory=dict)


#: Settings for one transaction (``set_local`` gives its parameters): the timeouts when a
#: transaction-mode pooler forbids session settings, and a statement's own ``local``.
SET_LOCAL: Final = ("SELECT set_config(s.name, s.value, true) "
                    "FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(name, value)")


def set_local(settings: Mapping[str, str]) -> dict[str, list[str]]:
    """The parameters of ``SET_LOCAL`` for ``settings`` (name: value)."""
    return {"names": list(settings), "values": list(settings.values())}


# -- argument checks ---------------------------------------------------------------------------


def check_id(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(
            f"{name}: must be a string, got {type(value).__name__}", field=name
        )
    if not 1 <= len(value) <= ID_MAX_LENGTH:
        raise ValidationError(
            f"{name}: must be 1 to {ID_MAX_LENGTH} characters, got {len(value)}", field=name
        )
    check_text(value, name)
    return value


def check_step_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"step: must be an int (the 0-based position), got {type(value).__name__}",
            field="step",
        )
    if not 0 <= value <= STEP_MAX:
        raise ValidationError(
            f"step: must be between 0 and {STEP_MAX}, got {shown(value)}", field="step"
        )
    return value


def check_filter_text(value: Any, name: str) -> str:
    """A text filter: a string PostgreSQL can compare (no NUL, no lone surrogate)."""
    if not isinstance(value, str):
        raise ValidationError(f"{name}: must be a string", field=name)
    check_text(value, name)
    return value


def check_limit(value: Any, name: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMIT_MAX:
        raise ValidationError(
            f"{name}: must be an int between 1 and {LIMIT_MAX}, got {shown(value)}", field=name
        )
    return value


def _check_enum(enum: type[E], value: Any, name: str, what: str) -> E:
    try:
        return value if isinstance(value, enum) else enum(value)
    except ValueError:
        raise ValidationError(
            f"{name}: unknown {what} {shown(value)}; expected one of "
            + ", ".join(str(m.value) for m in enum),
            field=name,
        ) from None


def check_status(value: Any, name: str = "status") -> TaskStatus:
    return _check_enum(TaskStatus, value, name, "status")


def check_error_code(value: Any, name: str = "error_code") -> ErrorCode:
    return _check_enum(ErrorCode, value, name, "error code")


def check_time(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise ValidationError(
            f"{name}: must be a datetime, got {type(value).__name__}", field=name
        )
    if value.tzinfo is None:
        raise ValidationError(
            f"{name}: must be timezone-aware (naive times are ambiguous)", field=name
        )
    return value


def step_fields(step_result: Any, *, max_result_bytes: int, path: str = "") -> dict[str, Any]:
    """Normalise and validate one step result (ours, upstream's, any object with the seven
    fields, or a dict) into the columns of ``task_history``."""
    try:
        result = TaskStepResult.from_object(step_result)
    except ValidationError as exc:
        name = exc.field or "step_result"
        if not name.startswith("step_result"):
            name = f"step_result.{name}"
            message = exc.message.removeprefix(f"{exc.field}: ")
            raise ValidationError(f"{path}{name}: {message}", field=f"{path}{name}") from None
        raise
    problems = result.problems()
    if problems:
        first = problems[0].split(":", 1)[0]
        raise ValidationError(
            f"{path}step_result is inconsistent: " + "; ".join(problems),
            field=f"{path}step_result.{first}",
        )
    for name in ("step", "message", "error_message"):
        value = getattr(result, name)
        if value is not None:
            check_text(value, f"{path}step_result.{name}")
    return {
        "step_name": result.step,
        "result": encode_result(
            result.result, max_bytes=max_result_bytes, path=f"{path}step_result.result"
        ),
        "completed": result.completed,
        "message": result.message,
        "status": result.status,
        "error_code": result.error_code,
        "error_message": result.error_message,
    }


# -- columns: named once, so no statement depends on the tables' physical column order --------

#: A task as read back: ``TaskRecord``'s fields, in its order.
TASK_COLUMNS: Final = tuple(TaskRecord._fields)
#: A step's key.
STEP_KEY: Final = ("user_id", "task_id", "step")
#: A step result's columns (the seed's fields; its ``step`` name is stored as ``step_name``).
RESULT_COLUMNS: Final = (
    "step_name", "result", "completed", "message", "status", "error_code", "error_message"
)
#: What a save writes to ``task_history``, in this order (parameters and COPY rows alike).
STEP_COLUMNS: Final = STEP_KEY + RESULT_COLUMNS
#: The casts a column's text parameter needs.
_CASTS: Final = {"result": "::jsonb", "status": "::task_status", "error_code": "::error_code"}


def _names(columns: Sequence[str], alias: str = "") -> str:
    return ", ".join(f"{alias}{c}" for c in columns)


def _cast(columns: Sequence[str], template: str = "%({})s") -> str:
    """Each column as ``template`` (a parameter by default) with its cast."""
    return ", ".join(template.format(c) + _CASTS.get(c, "") for c in columns)


# -- writes -----------------------------------------------------------------------------------

_STEP_INSERT: Final = f"INSERT INTO task_history AS h ({_names(STEP_COLUMNS)})\n"
_STEP_VALUES: Final = _cast(STEP_COLUMNS)
_STEP_CONFLICT: Final = (
    "\nON CONFLICT (user_id, task_id, step) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in RESULT_COLUMNS) + "\n"
)

# -- the saves' own event log (schema.py, task events) --------------------------------------
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

_OWN_EVENTS: Final = "own AS (SELECT set_config('aiecs.bulk_events', 'on', true) AS own)"
_TASK_RETURNING: Final = (
    "RETURNING t.user_id, t.task_id, t.status, t.error_code, t.error_message, t.updated_at, "
    "t.xmax = 0 AS inserted"
)
_STEP_RETURNING: Final = f"RETURNING {_names(STEP_COLUMNS, 'h.')}, h.updated_at"
_EVENTS_INSERT: Final = f"INSERT INTO task_events ({_names(STEP_COLUMNS)}, at)"
_LOG_STEPS: Final = f"""logged AS (
  {_EVENTS_INSERT}
  SELECT {_names(STEP_COLUMNS)}, updated_at FROM step
)"""
_LOG_TASKS_AND_STEPS: Final = f"""logged AS (
  {_EVENTS_INSERT}
  SELECT user_id, task_id, NULL::integer, NULL::text, NULL::jsonb, NULL::boolean, NULL::text,
         status, error_code, error_message, updated_at
  FROM task WHERE inserted
  UNION ALL
  SELECT {_names(STEP_COLUMNS)}, updated_at FROM step
)"""


def _wake(user: str, task: str, created: str, source: str = "") -> str:
    """The main query of a save: notify ``aiecs_events`` for the task ``user``/``task`` (SQL
    expressions, over ``source`` when given) if some listener watches it, or watches its user
    and ``created`` (the save created the task: its user's watchers follow task events)."""
    return f"""
SELECT pg_notify('aiecs_events', {user} || chr(31) || {task}){source}
WHERE EXISTS (SELECT FROM aiecs_watched w
              WHERE w.user_id = {user} AND w.until > now()
                AND (w.task_id = {task} OR (w.task_id = '' AND {created})))"""


#: The probe of a save's task: it is running (or ended) and was touched less than a second ago,
#: so the save may leave it alone. Written so that no index serves ``updated_at`` here: the
#: probe must find its task by the primary key. Given ``updated_at >= now() - 1 s``, the
#: planner read the recent end of ``ix_tasks_updated_at`` wherever the statistics made that
#: range look empty (after an ANALYZE, as autovacuum runs it): every task touched in the last
#: second, for each save or batch — about 12,000 index entries at 15,000 saves/s
#: (docs/performance.md).
_FRESH: Final = "f.status <> 'pending' AND now() - f.updated_at <= interval '1 second'"

#: ``_wake``'s ``created`` for a lone save: its ``task`` returned an inserted row.
_CREATED: Final = "EXISTS (SELECT FROM task WHERE inserted)"

# The task comes first: ``step`` reads ``task`` (count(*) runs it to completion), so a save
# waits for a concurrent writer's hold on the task *before* it holds its step. (A save holding
# its new step while waiting for the task deadlocked with a bulk load holding the task while
# waiting for that step.)
SAVE_STEP: Final = f"""
WITH {_OWN_EVENTS},
task AS (
  INSERT INTO tasks AS t (user_id, task_id, status, started_at)
  SELECT %(user_id)s, %(task_id)s, 'running', now() FROM own
  WHERE NOT EXISTS (
    SELECT FROM tasks f
    WHERE f.user_id = %(user_id)s AND f.task_id = %(task_id)s AND {_FRESH})
  ON CONFLICT (user_id, task_id) DO UPDATE
    SET status = CASE WHEN t.status = 'pending' THEN 'running'::task_status ELSE t.status END
    WHERE t.status = 'pending' OR t.updated_at < now() - interval '1 second'
  {_TASK_RETURNING}
),
step AS (
  {_STEP_INSERT}  SELECT {_STEP_VALUES}
  FROM (SELECT count(*) FROM task) AS task_first, own{_STEP_CONFLICT}  {_STEP_RETURNING}
),
{_LOG_TASKS_AND_STEPS}{_wake("%(user_id)s", "%(task_id)s", _CREATED)}"""

#: ``SAVE_STEP`` without the task part, for a task this manager touched less than a second ago
#: (``ManagerBase._recently_touched``): the step's foreign key then proves the task exists, and
#: a violation (the task was deleted meanwhile) sends the save down the full path again.
SAVE_STEP_ONLY: Final = f"""
WITH {_OWN_EVENTS},
step AS (
  {_STEP_INSERT}  SELECT {_STEP_VALUES} FROM own{_STEP_CONFLICT}  {_STEP_RETURNING}
),
{_LOG_STEPS}{_wake("%(user_id)s", "%(task_id)s", "false")}"""


def _tasks_upsert(*, cluster: bool) -> str:
    """The tasks of many saves (distinct, in key order, so concurrent batches lock them in one
    order): created running, or moved pending → running, or their activity refreshed when it
    is more than a second old — ``SAVE_STEP``'s task part over arrays (parameters: users,
    tasks). ``EXCLUDED.updated_at`` is the statement's ``now()`` (Citus wants no ``now()`` in an
    ``ON CONFLICT`` filter). Off Citus it runs after ``own`` (the statements using it log the
    tasks they create), first skips tasks refreshed within the second, a subquery beside
    ``unnest`` that Citus refuses, and gives new tasks their start time, so they skip the
    status trigger (``schema.TASKS_INSERT_TRIGGER``; on Citus the trigger fills it in).
    ``OFFSET 0`` keeps that probe a subquery run per task (a primary-key lookup each), which
    the planner would otherwise be free to turn into a join reading far more of ``tasks``."""
    shortcut = "" if cluster else f""", own
WHERE NOT EXISTS (
  SELECT FROM tasks f WHERE f.user_id = x.u AND f.task_id = x.k AND {_FRESH} OFFSET 0)"""
    started_column, started_value = ("", "") if cluster else (", started_at", ", now()")
    return f"""
INSERT INTO tasks AS t (user_id, task_id, status{started_column})
SELECT u, k, 'running'::task_status{started_value}
FROM unnest(%(users)s::text[], %(tasks)s::text[]) AS x(u, k){shortcut}
ORDER BY 1, 2
ON CONFLICT (user_id, task_id) DO UPDATE
  SET status = CASE WHEN t.status = 'pending' THEN 'running'::task_status ELSE t.status END
  WHERE t.status = 'pending' OR EXCLUDED.updated_at - t.updated_at > interval '1 second'"""


TASKS_UPSERT: Final = f"{_tasks_upsert(cluster=False)}\n{_TASK_RETURNING}"

#: Each column's array type in ``SAVE_STEPS`` (text otherwise).
_ARRAY_TYPES: Final = {"step": "integer", "completed": "boolean", "result": "jsonb",
                       "status": "task_status", "error_code": "error_code"}


def text_array(values: Iterable[Any]) -> str:
    """``values`` (strings, integers, booleans, None) as one PostgreSQL array literal, for a
    ``%(name)s::type[]`` parameter: every string quoted, with its backslashes and double quotes
    escaped, None as NULL. Built here because psycopg's own text arrays look up a dumper per
    element (0.7 ms of client time for 64 saves), and binary arrays cannot go through the lean
    path (prepared.py); this is about 1.7 µs a save."""
    return "{" + ",".join(map(_array_element, values)) + "}"


def task_arrays(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``users``/``tasks`` parameters of an upsert of many tasks: the distinct
    (user_id, task_id) pairs in key order (so concurrent writers lock tasks in one order), as
    ``text_array`` literals."""
    keys = sorted(set(pairs))
    return {"users": text_array([k[0] for k in keys]), "tasks": text_array([k[1] for k in keys])}


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, int):
        return str(value)
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


#: ``_wake`` for a batch: each of its tasks (the distinct ``users``/``tasks`` pairs).
_WAKE_BATCH: Final = _wake(
    "k.user_id", "k.task_id",
    "EXISTS (SELECT FROM task t WHERE t.user_id = k.user_id AND t.task_id = k.task_id"
    " AND t.inserted)",
    "\nFROM unnest(%(users)s::text[], %(tasks)s::text[]) AS k(user_id, task_id)")

#: Many saves in one statement (group commit, ``group.py``): the tasks first, then one step per
#: save (distinct keys, in key order) from one array per column, each a ``text_array`` literal,
#: so that the statement goes through the managers' lean path like a lone save.
SAVE_STEPS: Final = f"""
WITH {_OWN_EVENTS},
task AS ({TASKS_UPSERT}),
step AS (
  {_STEP_INSERT}  SELECT {_names(STEP_COLUMNS, 'r.')}
  FROM unnest({", ".join(f"%({c})s::{_ARRAY_TYPES.get(c, 'text')}[]" for c in STEP_COLUMNS)})
         AS r({_names(STEP_COLUMNS)}),
       (SELECT count(*) FROM task) AS task_first, own
  ORDER BY r.user_id, r.task_id, r.step{_STEP_CONFLICT}  {_STEP_RETURNING}
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
#: of ``aiecs_save_steps`` (revision 0006), which Citus sends whole to the node that owns the
#: user (``citus.py`` distributes it by its first argument). Same rows, same events; no NOTIFY,
#: which would not reach the coordinator's listeners (watchers poll on Citus).
SAVE_STEPS_CALL: Final = (
    "SELECT aiecs_save_steps(%(user_id)s, "
    + ", ".join(f"%({c})b::{_ARRAY_TYPES.get(c, 'text')}[]" for c in STEP_COLUMNS[1:])
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


START_TASK: Final = f"""
INSERT INTO tasks AS t (user_id, task_id, status, started_at)
VALUES (%(user_id)s, %(task_id)s, 'running', now())
ON CONFLICT (user_id, task_id) DO UPDATE SET status = 'running'
RETURNING {_names(TASK_COLUMNS)}
"""


def start_task(user_id: Any, task_id: Any) -> Statement:
    return Statement(
        "start_task",
        START_TASK,
        {"user_id": check_id(user_id, "user_id"), "task_id": check_id(task_id, "task_id")},
    )


# An UPDATE, not an upsert: PostgreSQL runs BEFORE INSERT triggers before ON CONFLICT is
# resolved, and an unknown task is pending, from which only a cancel may end it.
FINISH_TASK: Final = f"""
UPDATE tasks SET status = %(status)s::task_status, error_code = %(error_code)s::error_code,
                 error_message = %(error_message)s
WHERE user_id = %(user_id)s AND task_id = %(task_id)s
RETURNING {_names(TASK_COLUMNS)}
"""

FINISH_UNKNOWN_AS_CANCELLED: Final = f"""
INSERT INTO tasks AS t (user_id, task_id, status, error_code, error_message)
VALUES (%(user_id)s, %(task_id)s, 'cancelled', %(error_code)s::error_code, %(error_message)s)
ON CONFLICT (user_id, task_id) DO UPDATE
  SET status = 'cancelled', error_code = EXCLUDED.error_code,
      error_message = EXCLUDED.error_message
RETURNING {_names(TASK_COLUMNS)}
"""


_DEFAULT_CODES: Final = {
    TaskStatus.FAILED: ErrorCode.EXECUTION_ERROR,
    TaskStatus.TIMED_OUT: ErrorCode.TIMEOUT_ERROR,
    TaskStatus.CANCELLED: ErrorCode.CANCELLED_ERROR,
}


def finish_task(
    user_id: Any, task_id: Any, status: Any, error_code: Any = None, error_message: Any = None
) -> Statement:
    """End a task. ``status`` must be terminal. An unsuccessful end without an error code
    gets the natural one (failed → E003, timed_out → E002, cancelled → E004); a code without
    a message gets the code's description as message."""
    final = check_status(status)
    if not final.is_terminal:
        raise ValidationError(
            f"status: finish_task needs a terminal status (completed, failed, timed_out or "
            f"cancelled), got {final.value!r}",
            field="status",
        )
    code = check_error_code(error_code) if error_code is not None else None
    if error_message is not None and not isinstance(error_message, str):
        raise ValidationError(
            f"error_message: must be a string, got {type(error_message).__name__}",
            field="error_message",
        )
    if final in UNSUCCESSFUL_STATUSES:
        code = code or _DEFAULT_CODES[final]
        error_message = error_message or code.description
        check_text(error_message, "error_message")
    elif code is not None or error_message:
        raise ValidationError(
            "error_code: a completed task carries no error code or message", field="error_code"
        )
    return Statement(
        "finish_task",
        FINISH_UNKNOWN_AS_CANCELLED if final is TaskStatus.CANCELLED else FINISH_TASK,
        {
            "user_id": check_id(user_id, "user_id"),
            "task_id": check_id(task_id, "task_id"),
            "status": final.value,
            "error_code": code.value if code else None,
            "error_message": error_message if code else None,
        },
    )


CANCEL_TASK: Final = """
WITH cancelled AS (
  INSERT INTO tasks AS t (user_id, task_id, status, error_code, error_message)
  VALUES (%(user_id)s, %(task_id)s, 'cancelled', 'E004', %(message)s)
  ON CONFLICT (user_id, task_id) DO UPDATE
    SET status = 'cancelled', error_code = 'E004', error_message = EXCLUDED.error_message
    WHERE t.status IN ('pending', 'running')
  RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM cancelled)
    OR EXISTS (SELECT 1 FROM tasks WHERE user_id = %(user_id)s AND task_id = %(task_id)s
                                     AND status = 'cancelled')
"""
# (``SELECT 1``, not ``SELECT``: Citus cannot plan a zero-column read of a modifying CTE.)

CANCEL_MESSAGE: Final = "Task cancelled"


def finished_task(rows: Sequence[Sequence[Any]], statement: Statement) -> TaskRecord:
    """The record ``finish_task`` returns; an unknown task cannot end other than cancelled."""
    if not rows:
        p = statement.params
        raise InvalidTransitionError(
            f"finish_task: task {p['user_id']}/{p['task_id']} is unknown, so pending; "
            f"pending -> {p['status']} is not allowed (save a step or start_task first)",
            from_status="pending", to_status=str(p["status"]),
        )
    return task_record(rows[0])


def cancel_task(user_id: Any, task_id: Any, message: str = CANCEL_MESSAGE) -> Statement:
    """Cancel the task itself (E004); its steps' history is never rewritten. A task with no
    rows yet is created cancelled, so the cancel is not lost. Returns one boolean: False when
    the task had already ended otherwise."""
    return Statement(
        "mark_task_as_cancelled",
        CANCEL_TASK,
        {
            "user_id": check_id(user_id, "user_id"),
            "task_id": check_id(task_id, "task_id"),
            "message": message,
        },
    )


# -- retention --------------------------------------------------------------------------------
#
# A cleanup never deletes activity acknowledged after it began (after its first statement ran
# on the server), whatever the age asked for (``--older-than 0h`` included). Timestamps cannot
# say that alone: a save's timestamps are its transaction's start, so one that started before
# the cleanup and committed after it looks old, and a save to a task touched less than a second
# ago does not refresh the task's ``updated_at``. So the cleanup reads, once at its start, the
# oldest transaction still running (the xmin horizon of a snapshot): a task whose row or any
# step's row was written by a transaction at or after that horizon is kept, whatever its
# timestamps. Each batch is one transaction of three statements: lock candidate tasks
# (skipping those a writer holds), lock their steps (waiting for re-saves in flight), then
# delete the candidates still inactive, with a fresh snapshot that sees every save committed
# meanwhile. A save that reaches a task after it was locked waits, finds it gone and creates it
# again. Rows written at or after the horizon are kept until a later cleanup, so a transaction
# left open elsewhere in the cluster delays the removal of rows written after it began.

#: The server's time and the xmin horizon (a 32-bit transaction id) when a cleanup begins.
CLEANUP_START: Final = (
    "SELECT now(), pg_snapshot_xmin(pg_current_snapshot())::text::bigint %% 4294967296"
)


def _written_since_horizon(alias: str) -> str:
    # Transaction ids are 32 bits and wrap around, so "at or after the horizon" is a distance
    # modulo 2^32: the row's, within the span from the horizon to the newest transaction this
    # statement's snapshot can see. (A frozen row from billions of transactions ago could
    # alias into that span, a few thousand ids wide: it is then kept until a later cleanup.)
    # The span is a scalar subquery: computed once per statement, not once per row.
    return (
        f"(({alias}.xmin::text::bigint - %(horizon)s + 4294967296) %% 4294967296 <= "
        "(SELECT (pg_snapshot_xmax(pg_current_snapshot())::text::bigint %% 4294967296 "
        "- %(horizon)s + 4294967296) %% 4294967296))"
    )


_INACTIVE: Final = f"""t.updated_at < %(cutoff)s
  AND NOT {_written_since_horizon("t")}
  AND NOT EXISTS (
    SELECT FROM task_history h WHERE h.user_id = t.user_id AND h.task_id = t.task_id
      AND {_written_since_horizon("h")})"""

#: Count what a cleanup would delete (``dry_run``).
COUNT_INACTIVE: Final = f"SELECT count(*) FROM tasks t WHERE {_INACTIVE}"

#: Batch, statement 1: lock up to ``batch_size`` candidates, oldest first
#: (``ix_tasks_updated_at``); a task a writer holds is skipped.
CLEANUP_LOCK: Final = f"""
SELECT t.user_id, t.task_id FROM tasks t WHERE {_INACTIVE}
ORDER BY t.updated_at LIMIT %(batch_size)s
FOR UPDATE SKIP LOCKED
"""

_LOCKED: Final = "unnest(%(users)s::text[], %(tasks)s::text[]) AS d(user_id, task_id)"

#: Batch, statement 2: wait for steps of those tasks that a re-save holds.
CLEANUP_LOCK_STEPS: Final = f"""
SELECT FROM task_history h JOIN {_LOCKED} USING (user_id, task_id)
ORDER BY h.user_id, h.task_id, h.step
FOR UPDATE OF h
"""

#: Batch, statement 3: delete the candidates still inactive (steps go by ON DELETE CASCADE).
CLEANUP_DELETE: Final = f"""
WITH gone AS (
  DELETE FROM tasks t USING {_LOCKED}
  WHERE t.user_id = d.user_id AND t.task_id = d.task_id AND {_INACTIVE}
  RETURNING 1
)
SELECT count(*) FROM gone
"""


# On Citus (docs/scaling.md) row locks across shards (FOR UPDATE) are refused, and transaction
# ids are each node's own, so the horizon above means nothing on a worker. A cluster's cleanup
# goes by the tasks' activity alone: candidates are read without locks, and the DELETE checks
# again, under its row locks, that each is still inactive. In exchange it never deletes a task
# active in the last ``CLUSTER_CLEANUP_MARGIN``, whatever the age asked: a save in flight when
# the cleanup began wrote its task's activity (its transaction's start) within that margin.

#: What a cluster's cleanup always keeps (a save would have to run longer to be lost).
CLUSTER_CLEANUP_MARGIN: Final = dt.timedelta(minutes=15)
_INACTIVE_CLUSTER: Final = "t.updated_at < %(cutoff)s"
COUNT_INACTIVE_CLUSTER: Final = f"SELECT count(*) FROM tasks t WHERE {_INACTIVE_CLUSTER}"
CLEANUP_PICK_CLUSTER: Final = f"""
SELECT t.user_id, t.task_id FROM tasks t WHERE {_INACTIVE_CLUSTER}
ORDER BY t.updated_at LIMIT %(batch_size)s
"""
CLEANUP_DELETE_CLUSTER: Final = f"""
WITH gone AS (
  DELETE FROM tasks t USING {_LOCKED}
  WHERE t.user_id = d.user_id AND t.task_id = d.task_id AND {_INACTIVE_CLUSTER}
  RETURNING 1
)
SELECT count(*) FROM gone
"""


def check_days_old(days_old: Any) -> float:
    if isinstance(days_old, bool) or not isinstance(days_old, int | float) or (
        isinstance(days_old, float) and not math.isfinite(days_old)
    ) or days_old < 0:
        raise ValidationError(
            f"days_old: must be a non-negative number of days, got {shown(days_old)}",
            field="days_old",
        )
    return float(days_old)


def cutoff(now: dt.datetime, days_old: float) -> dt.datetime:
    """``now`` less ``days_old`` days; the first instant of year 1 when that is earlier (an age
    of a million days is valid: nothing is that old)."""
    earliest = dt.datetime.min.replace(tzinfo=dt.UTC)
    if days_old >= (now - earliest).total_seconds() / 86_400:
        return earliest
    return now - dt.timedelta(days=days_old)


def cleanup_start(days_old: Any) -> Statement:
    """The statement a cleanup begins with (``days_old`` validated first)."""
    check_days_old(days_old)
    return Statement("cleanup_start", CLEANUP_START)


@dataclass(frozen=True, slots=True)
class Cleanup:
    """One cleanup call's statements, from its start (``CLEANUP_START``'s row)."""

    params: Mapping[str, Any]
    #: On Citus: the cluster's statements (see above).
    cluster: bool = False

    @classmethod
    def starting(cls, days_old: Any, batch_size: int, start: Sequence[Any],
                 *, cluster: bool = False) -> Cleanup:
        now, horizon = start
        limit = cutoff(now, check_days_old(days_old))
        if cluster:
            limit = min(limit, now - CLUSTER_CLEANUP_MARGIN)
        return cls({"cutoff": limit, "horizon": horizon, "batch_size": batch_size}, cluster)

    @property
    def count(self) -> Statement:
        return Statement("cleanup_old_tasks",
                         COUNT_INACTIVE_CLUSTER if self.cluster else COUNT_INACTIVE, self.params)

    @property
    def lock(self) -> Statement:
        """A batch's first statement: its candidates (locked, off Citus)."""
        return Statement("cleanup_old_tasks",
                         CLEANUP_PICK_CLUSTER if self.cluster else CLEANUP_LOCK, self.params,
                         statements=3)

    @property
    def then(self) -> tuple[str, ...]:
        """The batch's next statements, with ``locked``'s parameters; the last counts."""
        if self.cluster:
            return (CLEANUP_DELETE_CLUSTER,)
        return CLEANUP_LOCK_STEPS, CLEANUP_DELETE

    def locked(self, keys: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """Parameters of ``CLEANUP_LOCK_STEPS`` and ``CLEANUP_DELETE`` for the locked keys."""
        return {**self.params, "users": [k[0] for k in keys], "tasks": [k[1] for k in keys]}


# -- bulk ---------------------------------------------------------------------------------------
#
# save_task_history_many streams its records in chunks, all in one transaction. For each chunk:
# (1) its tasks are upserted (one statement, arrays as parameters); (2) inside a savepoint, its
# steps are COPYed straight into task_history, which PostgreSQL loads in batches (multi-insert,
# the fastest way in); (3) only when that meets an existing step (a re-save: unique violation)
# is the savepoint rolled back and the chunk merged instead: COPY into a temporary staging table
# and one INSERT ... ON CONFLICT DO UPDATE, which follows the state machine like a single save.
# A chunk holds one row per step, the last given (so a step twice in a batch ends as the later).

#: Statements one chunk may run (tasks, COPY or staging, clear, COPY, merge; events, notify):
#: its client deadline.
CHUNK_STATEMENTS: Final = 7
#: Records per chunk by default (the ``bulk_chunk_size`` setting): bounds the client's memory
#: (about 10 MB for typical results).
BULK_CHUNK: Final = 10_000

#: A chunk's tasks, and the events of those it creates (the transaction has ``own`` on).
BULK_TASKS: Final = f"""
WITH {_OWN_EVENTS}, task AS ({TASKS_UPSERT})
{_EVENTS_INSERT}
SELECT user_id, task_id, NULL, NULL, NULL, NULL, NULL, status, error_code, error_message,
       updated_at
FROM task WHERE inserted"""

#: A chunk's tasks on Citus: no shortcut, no ``own``. The events are the triggers' there:
#: ``aiecs.bulk_events`` set on the coordinator does not reach the workers' sessions.
BULK_TASKS_CLUSTER: Final = _tasks_upsert(cluster=True)

BULK_COPY: Final = f"COPY task_history ({_names(STEP_COLUMNS)}) FROM STDIN"

#: Staging columns are text (cast by the merge), but for these.
_STAGING_TYPES: Final = {"step": "integer", "completed": "boolean"}
BULK_STAGING: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS aiecs_staging ("
    + ", ".join(f"{c} {_STAGING_TYPES.get(c, 'text')}" for c in STEP_COLUMNS)
    + ") ON COMMIT DROP"
)

BULK_STAGING_CLEAR: Final = "TRUNCATE aiecs_staging"

BULK_STAGING_COPY: Final = f"COPY aiecs_staging ({_names(STEP_COLUMNS)}) FROM STDIN"

BULK_MERGE: Final = (
    f"{_STEP_INSERT}SELECT {_cast(STEP_COLUMNS, '{}')}\n"
    "FROM aiecs_staging ORDER BY user_id, task_id, step"
    f"{_STEP_CONFLICT}"
)


#: The bulk path logs its own events (schema.py, task events): the row trigger skips while set.
#: Its own statement: ``BULK_TASKS``'s ``own`` is not read when every task of a chunk is fresh.
BULK_EVENTS_ON: Final = "SELECT set_config('aiecs.bulk_events', 'on', true)"

#: A COPYed chunk's events: the same rows, COPYed again (reading them back from task_history
#: would make the planner scan the whole table).
BULK_EVENTS_COPY: Final = f"COPY task_events ({_names(STEP_COLUMNS)}) FROM STDIN"

#: A merged chunk's events, from the staging table.
BULK_MERGE_EVENTS: Final = (
    f"INSERT INTO task_events ({_names(STEP_COLUMNS)})\n"
    f"SELECT {_cast(STEP_COLUMNS, '{}')} FROM aiecs_staging ORDER BY user_id, task_id, step"
)

#: ... and the wake-up of whoever watches one of its tasks (parameters: users, tasks).
BULK_NOTIFY: Final = """
SELECT pg_notify('aiecs_events', k.user_id || chr(31) || k.task_id)
FROM unnest(%(users)s::text[], %(tasks)s::text[]) AS k(user_id, task_id)
WHERE EXISTS (SELECT FROM aiecs_watched w
              WHERE w.user_id = k.user_id AND w.task_id IN (k.task_id, '') AND w.until > now())
"""


def bulk_row(seq: int, record: Any, *, max_result_bytes: int) -> tuple[Any, ...]:
    """One validated row (``STEP_COLUMNS``) of ``save_task_history_many`` from
    its ``seq``-th (user_id, task_id, step, step_result) record."""
    where = f"records[{seq}]."
    try:
        user_id, task_id, step, step_result = record
    except (TypeError, ValueError):
        raise ValidationError(
            f"records[{seq}]: expected (user_id, task_id, step, step_result)",
            field=f"records[{seq}]",
        ) from None
    try:
        fields = step_fields(step_result, max_result_bytes=max_result_bytes, path=where)
        return (
            check_id(user_id, "user_id"), check_id(task_id, "task_id"), check_step_index(step),
            *(fields[c] for c in RESULT_COLUMNS),
        )
    except ValidationError as exc:
        if exc.field and not exc.field.startswith("records["):
            raise ValidationError(f"{where}{exc.message}", field=f"{where}{exc.field}") from None
        raise


def check_records(records: Any) -> None:
    """``save_task_history_many``'s argument: an iterable (sync or async) of records."""
    iterable = hasattr(records, "__iter__") or hasattr(records, "__aiter__")
    if not iterable or isinstance(records, str | bytes | bytearray | Mapping):
        raise ValidationError(
            f"records: must be an iterable of (user_id, task_id, step, step_result), got "
            f"{type(records).__name__}", field="records",
        )


def bulk_statement(records: Any) -> Statement:
    """The bulk path's identity for retries and metrics: a list or tuple can be read again,
    so the whole transaction may be retried after a transient failure (a deadlock with a
    concurrent writer, a lost connection); a generator cannot."""
    return Statement("save_task_history_many", BULK_COPY,
                     idempotent=isinstance(records, Sequence), statements=None)


class BulkChunk:
    """Validated rows of up to ``size`` records, one per step (the last given)."""

    def __init__(self, max_result_bytes: int, size: int = BULK_CHUNK, *,
                 cluster: bool = False) -> None:
        self.max_result_bytes = max_result_bytes
        self.size = size
        self.tasks_sql = BULK_TASKS_CLUSTER if cluster else BULK_TASKS
        self.seen = 0  # records taken so far, over all chunks
        self._rows: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def add(self, record: Any) -> bool:
        """Validate and keep one record; True when the chunk is full."""
        row = bulk_row(self.seen, record, max_result_bytes=self.max_result_bytes)
        self._rows[row[0], row[1], row[2]] = row
        self.seen += 1
        return len(self._rows) >= self.size

    def fill(self, records: Iterator[Any]) -> tuple[list[tuple[Any, ...]], Statement] | None:
        """Take records until the chunk is full or ``records`` runs out, then ``take()``. The
        managers call it in a worker thread, validating one chunk while the server loads the
        previous one."""
        for record in records:
            if self.add(record):
                break
        return self.take()

    def take(self) -> tuple[list[tuple[Any, ...]], Statement] | None:
        """The chunk's rows in key order and the statement upserting its tasks; then empty."""
        if not self._rows:
            return None
        rows = [self._rows[k] for k in sorted(self._rows)]
        self._rows = {}
        tasks = Statement("save_task_history_many", self.tasks_sql,
                          task_arrays((r[0], r[1]) for r in rows))
        return rows, tasks


# -- reads --------------------------------------------------------------------------------------

LOAD_HISTORY: Final = f"""
SELECT step, {_names(RESULT_COLUMNS)}, updated_at
FROM task_history WHERE user_id = %(user_id)s AND task_id = %(task_id)s
ORDER BY step
"""


def load_history(user_id: Any, task_id: Any) -> Statement:
    return Statement(
        "load_task_history",
        LOAD_HISTORY,
        {"user_id": check_id(user_id, "user_id"), "task_id": check_id(task_id, "task_id")},
    )


def history_entry(step: int, name: str, result: Any, completed: bool, message: str,
                  status: str, code: str | None, error_message: str | None,
                  updated: dt.datetime) -> dict[str, Any]:
    """One step in the upstream shape: ``{"step", "result": step_result.dict(), "timestamp",
    "status"}`` (``load_task_history``'s entries, and the watchers')."""
    return {
        "step": step,
        "result": {
            "step": name, "result": result, "completed": completed, "message": message,
            "status": status, "error_code": code, "error_message": error_message,
        },
        "timestamp": updated.isoformat(),
        "status": status,
    }


def history_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """The upstream shape: ``[{"step", "result": step_result.dict(), "timestamp", "status"}]``."""
    return [history_entry(*row) for row in rows]


def task_change(task_id: str, status: str, code: str | None, error_message: str | None,
                at: dt.datetime) -> dict[str, Any]:
    """One task status change, as ``watch_user_tasks`` yields it."""
    return {"task_id": task_id, "status": status, "error_code": code,
            "error_message": error_message, "timestamp": at.isoformat()}


GET_TASK: Final = (
    f"SELECT {_names(TASK_COLUMNS)} FROM tasks "
    "WHERE user_id = %(user_id)s AND task_id = %(task_id)s"
)


def get_task(user_id: Any, task_id: Any) -> Statement:
    return Statement(
        "get_task",
        GET_TASK,
        {"user_id": check_id(user_id, "user_id"), "task_id": check_id(task_id, "task_id")},
    )


# Plain dict look-ups: a few times faster than calling the enum class, once per row read.
_STATUS: Final[dict[str, TaskStatus]] = {s.value: s for s in TaskStatus}
_CODE: Final[dict[str, ErrorCode]] = {c.value: c for c in ErrorCode}

def task_record(row: Sequence[Any]) -> TaskRecord:
    """A row of ``TASK_COLUMNS`` as a record."""
    user_id, task_id, status, code, message, created, updated, started, finished = row
    return TaskRecord(
        user_id, task_id, _STATUS[status], _CODE[code] if code else None, message,
        created, updated, started, finished,
    )


USER_TASKS: Final = """
SELECT task_id, updated_at, status FROM tasks WHERE user_id = %(user_id)s
ORDER BY updated_at DESC, task_id DESC LIMIT %(limit)s
"""


def user_tasks(user_id: Any, limit: Any) -> Statement:
    return Statement(
        "get_user_tasks",
        USER_TASKS,
        {"user_id": check_id(user_id, "user_id"), "limit": check_limit(limit)},
    )


def user_task_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [
        {"task_id": task_id, "last_updated": updated.isoformat(), "status": status}
        for task_id, updated, status in rows
    ]


def _filters(
    alias: str, status: Any, error_code: Any, since: Any, until: Any
) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    if status is not None:
        statuses = [status] if isinstance(status, str | TaskStatus) else list(status)
        params["statuses"] = [check_status(s).value for s in statuses]
        where.append(f"{alias}.status = ANY(%(statuses)s::task_status[])")
    if error_code is not None:
        codes = [error_code] if isinstance(error_code, str | ErrorCode) else list(error_code)
        params["codes"] = [check_error_code(c).value for c in codes]
        where.append(f"{alias}.error_code = ANY(%(codes)s::error_code[])")
    if since is not None:
        params["since"] = check_time(since, "since")
        where.append(f"{alias}.updated_at >= %(since)s")
    if until is not None:
        params["until"] = check_time(until, "until")
        where.append(f"{alias}.updated_at < %(until)s")
    return where, params


def list_tasks(
    user_id: Any, *, status: Any = None, error_code: Any = None, step_name: Any = None,
    since: Any = None, until: Any = None, limit: Any = 100, cursor: Any = None,
) -> Statement:
    """A user's tasks, newest activity first, keyset-paginated on (updated_at, task_id)."""
    where, params = _filters("t", status, error_code, since, until)
    params["user_id"] = check_id(user_id, "user_id")
    params["limit"] = check_limit(limit) + 1
    if step_name is not None:
        params["step_name"] = check_filter_text(step_name, "step_name")
        where.append(
            "EXISTS (SELECT FROM task_history h WHERE h.user_id = t.user_id "
            "AND h.task_id = t.task_id AND h.step_name = %(step_name)s)"
        )
    if cursor is not None:
        params["c_time"], params["c_task"], _ = decode_cursor(cursor, with_step=False)
        where.append("(t.updated_at, t.task_id) < (%(c_time)s, %(c_task)s)")
    sql = (
        f"SELECT {_names(TASK_COLUMNS, 't.')} FROM tasks t WHERE t.user_id = %(user_id)s "
        + "".join(f" AND {w}" for w in where)
        + " ORDER BY t.updated_at DESC, t.task_id DESC LIMIT %(limit)s"
    )
    return Statement("list_tasks", sql, params)


def task_page(rows: Sequence[Sequence[Any]], limit: int) -> tuple[list[TaskRecord], str | None]:
    records = [task_record(r) for r in rows[:limit]]
    more = len(rows) > limit
    last = records[-1] if records and more else None
    return records, encode_cursor(last.updated_at, last.task_id) if last else None


def list_steps(
    user_id: Any, *, task_id: Any = None, status: Any = None, error_code: Any = None,
    step_name: Any = None, since: Any = None, until: Any = None, limit: Any = 100,
    cursor: Any = None,
) -> Statement:
    """A user's steps, newest first, keyset-paginated on (updated_at, task_id, step)."""
    where, params = _filters("h", status, error_code, since, until)
    params["user_id"] = check_id(user_id, "user_id")
    params["limit"] = check_limit(limit) + 1
    if task_id is not None:
        params["task_id"] = check_id(task_id, "task_id")
        where.append("h.task_id = %(task_id)s")
    if step_name is not None:
        params["step_name"] = check_filter_text(step_name, "step_name")
        where.append("h.step_name = %(step_name)s")
    if cursor is not None:
        params["c_time"], params["c_task"], params["c_step"] = decode_cursor(
            cursor, with_step=True
        )
        where.append("(h.updated_at, h.task_id, h.step) < (%(c_time)s, %(c_task)s, %(c_step)s)")
    sql = (
        f"SELECT {_names(STEP_COLUMNS, 'h.')}, h.created_at, h.updated_at "
        "FROM task_history h WHERE h.user_id = %(user_id)s"
        + "".join(f" AND {w}" for w in where)
        + " ORDER BY h.updated_at DESC, h.task_id DESC, h.step DESC LIMIT %(limit)s"
    )
    return Statement("list_steps", sql, params)


def step_record(row: Sequence[Any]) -> StepRecord:
    user_id, task_id, step, name, result, completed, message, status, code, error, c, u = row
    return StepRecord(
        user_id, task_id, step,
        TaskStepResult(name, result, completed, message, status, code, error), c, u,
    )


def step_page(rows: Sequence[Sequence[Any]], limit: int) -> tuple[list[StepRecord], str | None]:
    records = [step_record(r) for r in rows[:limit]]
    last = records[-1] if records and len(rows) > limit else None
    return records, encode_cursor(last.updated_at, last.task_id, last.step) if last else None


# -- the report (over the reporting views, so the read-only role can run it) --------------------

# Three reads of the window, none carrying ``result``: per step name and per day in one scan
# (hash grouping sets, a handful of groups), the failures (through the partial index on
# error_code; the distinct tasks per code by hashing each code's tasks, then counting them,
# not by count(DISTINCT ...), which sorts every failure, on disk past work_mem), and the
# distinct tasks (a hash DISTINCT of two columns). A window is found through the BRIN index on
# created_at. (A CTE of all the window's steps, sorted again for each count(DISTINCT ...), was
# 3.4x slower on 2M steps; four separate reads, 1.15x faster on a whole table, read a small
# window four times. See docs/performance.md.)

#: The report's own transaction settings. JIT off: PostgreSQL compiles this statement's
#: aggregates because their estimated cost is high, and on PostgreSQL 15 spent 430 ms of a
#: 1.2 s report doing so, more than it saved. More work_mem: the hashes of the distinct tasks
#: (a few hundred thousand (user_id, task_id) pairs on a table of millions of steps) fit in
#: memory instead of spilling to disk in batches. Each hash may take work_mem times
#: hash_mem_multiplier, in this one statement's transaction only.
REPORT_SETTINGS: Final = {"jit": "off", "work_mem": "32MB"}

_REPORT_WINDOW: Final = """FROM step_details
  WHERE created_at >= COALESCE(%(since)s::timestamptz, '-infinity')
    AND created_at < COALESCE(%(until)s::timestamptz, 'infinity')"""


def _report(counts: str, totals: str, names: str, days: str) -> str:
    """The report over the window's step counts (``counts``: CTEs; ``totals``, ``names``,
    ``days``: where the whole window's, each step name's and each day's rows are), with the
    failures by code and category and the distinct tasks read apart."""
    return f"""
WITH {counts},
failed AS (
  SELECT error_code, error_name, error_category, sum(n) AS failures, count(*) AS tasks
  FROM (SELECT error_code, error_name, error_category, count(*) AS n
        {_REPORT_WINDOW} AND error_code IS NOT NULL
        GROUP BY error_code, error_name, error_category, user_id, task_id) f
  GROUP BY error_code, error_name, error_category
)
SELECT
  (SELECT jsonb_build_object(
            'steps', COALESCE(sum(c.steps), 0),
            'tasks', (SELECT count(*) FROM (SELECT DISTINCT user_id, task_id
                                            {_REPORT_WINDOW}) d),
            'failures', COALESCE(sum(c.failures), 0))
   FROM {totals}),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.failures DESC, x.error_code), '[]') FROM failed x),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.failures DESC, x.category), '[]')
   FROM (SELECT error_category AS category, sum(failures) AS failures
         FROM failed GROUP BY error_category) x),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.steps DESC, x.step_name), '[]')
   FROM (SELECT step_name, steps, failures FROM {names}
         ORDER BY steps DESC, step_name LIMIT %(top)s) x),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.day), '[]')
   FROM (SELECT day, steps, completed, failures FROM {days}) x)
"""


#: Per step name, per day and in all, in one hash GROUPING SETS scan of the window.
REPORT: Final = _report(
    f"""counts AS (
  SELECT GROUPING(s.step_name, s.day) AS grouped, s.step_name, s.day, count(*) AS steps,
         count(*) FILTER (WHERE s.error_code IS NOT NULL) AS failures,
         count(*) FILTER (WHERE s.status = 'completed') AS completed
  FROM (SELECT step_name, error_code, status,
               ((created_at AT TIME ZONE 'UTC')::date)::text AS day
        {_REPORT_WINDOW}) s
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
  {_REPORT_WINDOW}
  GROUP BY step_name
),
by_day AS (
  SELECT ((created_at AT TIME ZONE 'UTC')::date)::text AS day, count(*) AS steps,
         count(*) FILTER (WHERE status = 'completed') AS completed,
         count(*) FILTER (WHERE error_code IS NOT NULL) AS failures
  {_REPORT_WINDOW}
  GROUP BY 1
)""",
    totals="by_day c",
    names="by_name",
    days="by_day",
)


def report(since: Any = None, until: Any = None, top: Any = 10, *,
           cluster: bool = False) -> Statement:
    """Failures by error code and by category, the busiest step names and per-day counts of
    the steps created in ``[since, until)`` (UTC days); ``cluster``: Citus's shape."""
    return Statement("report", REPORT_CLUSTER if cluster else REPORT, {
        "since": None if since is None else check_time(since, "since"),
        "until": None if until is None else check_time(until, "until"),
        "top": check_limit(top, "top"),
    }, statements=2, local=REPORT_SETTINGS)


def report_data(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    totals, by_code, by_category, steps, days = rows[0]
    return {"totals": totals, "failures_by_error_code": by_code,
            "failures_by_category": by_category, "busiest_steps": steps, "per_day": days}


# -- watching (watch.py explains positions and tokens) --------------------------------------------

_EVENT_COLUMNS: Final = ("tx", "seq", "step", *RESULT_COLUMNS, "at")
_UNSEEN: Final = """e.tx >= %(horizon)s
    AND NOT EXISTS (SELECT FROM unnest(%(seen_tx)s::bigint[], %(seen_seq)s::bigint[]) AS s(tx, seq)
                    WHERE s.tx = e.tx AND e.seq <= s.seq)"""
# The snapshot's xmin (the next horizon) comes from the same statement, so from the snapshot the
# events were read with; a row of NULLs stands for "no new event".
_SNAPSHOT: Final = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon"

#: On Citus (docs/scaling.md) the events carry the transaction ids of the user's node, so the
#: horizon is that node's: read just before the catch-up by a call Citus runs there (revision
#: 0006), and given to the catch-up in place of its own snapshot's. An earlier horizon is a
#: safe one: every transaction before it had ended when the catch-up took its snapshot.
WATCH_HORIZON: Final = "SELECT aiecs_xmin_horizon(%(user_id)s)"
_GIVEN_HORIZON: Final = "SELECT %(node_horizon)s::bigint AS horizon"

WATCH_TASK: Final = f"""
WITH snap AS ({_SNAPSHOT})
SELECT snap.horizon,
       (SELECT t.status FROM tasks t
        WHERE t.user_id = %(user_id)s AND t.task_id = %(task_id)s),
       {_names(_EVENT_COLUMNS, 'e.')}
FROM snap LEFT JOIN LATERAL (
  SELECT * FROM task_events e
  WHERE e.user_id = %(user_id)s AND e.task_id = %(task_id)s AND e.step IS NOT NULL
    AND {_UNSEEN}
) e ON true
ORDER BY e.seq
"""

WATCH_USER: Final = f"""
WITH snap AS ({_SNAPSHOT})
SELECT snap.horizon, NULL, e.tx, e.seq, e.task_id, e.status, e.error_code, e.error_message,
       e.at
FROM snap LEFT JOIN LATERAL (
  SELECT * FROM task_events e
  WHERE e.user_id = %(user_id)s AND e.step IS NULL AND {_UNSEEN}
) e ON true
ORDER BY e.seq
"""

#: Each catch-up with the node's horizon given in place of its own snapshot's (Citus).
_UNDER_NODE_HORIZON: Final = {sql: sql.replace(_SNAPSHOT, _GIVEN_HORIZON, 1)
                              for sql in (WATCH_TASK, WATCH_USER)}

#: How long a registration in ``aiecs_watched`` lasts unless its listener renews it (seconds).
REGISTRATION_TTL: Final = 300

REGISTER_WATCH: Final = (
    "INSERT INTO aiecs_watched (user_id, task_id, listener, until) "
    "VALUES (%(user_id)s, %(task_id)s, %(listener)s, now() + make_interval(secs => %(ttl)s)) "
    "ON CONFLICT (user_id, task_id, listener) DO UPDATE SET until = EXCLUDED.until"
)
UNREGISTER_WATCH: Final = (
    "DELETE FROM aiecs_watched "
    "WHERE user_id = %(user_id)s AND task_id = %(task_id)s AND listener = %(listener)s"
)
#: Run by a listener on its own connection, every heartbeat (parameters: listener, ttl).
RENEW_WATCHES: Final = (
    "UPDATE aiecs_watched SET until = now() + make_interval(secs => %(ttl)s) "
    "WHERE listener = %(listener)s"
)


def check_poll_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and 0.01 <= value <= 3600):
        raise ValidationError(
            f"poll_interval: must be a number of seconds between 0.01 and 3600, got "
            f"{shown(value)}", field="poll_interval")
    return float(value)


class Watch:
    """One watcher's catch-up statement and the shaping of what it returns; ``position`` is
    where it stands (``records.Position``)."""

    def __init__(self, user_id: Any, task_id: Any | None, after: Any) -> None:
        self.user_id = check_id(user_id, "user_id")
        self.task_id = None if task_id is None else check_id(task_id, "task_id")
        self.position = Position.parse(after)
        #: The task ended (a terminal status seen in the last catch-up's snapshot).
        self.finished = False

    @property
    def key(self) -> str:
        """The watched task, or '' for all of the user's tasks (``aiecs_watched.task_id``)."""
        return self.task_id or ""

    def registration(self, listener: str, *, stop: bool = False) -> Statement:
        """Register (or, with ``stop``, unregister) this watch for ``listener``."""
        params = {"user_id": self.user_id, "task_id": self.key, "listener": listener,
                  "ttl": REGISTRATION_TTL}
        return Statement("watch", UNREGISTER_WATCH if stop else REGISTER_WATCH, params)

    def statement(self, node_horizon: int | None = None) -> Statement:
        """The catch-up; on Citus, under ``node_horizon`` (``WATCH_HORIZON``'s answer)."""
        params = {"user_id": self.user_id, **self.position.params()}
        task = self.task_id is not None
        text = WATCH_TASK if task else WATCH_USER
        if node_horizon is not None:
            text = _UNDER_NODE_HORIZON[text]
            params["node_horizon"] = node_horizon
        if not task:
            return Statement("watch_user_tasks", text, params)
        return Statement("watch_task_history", text, {**params, "task_id": self.task_id})

    def node_horizon(self) -> Statement:
        """On Citus: the statement that reads the horizon of the user's node."""
        return Statement("watch", WATCH_HORIZON, {"user_id": self.user_id})

    def steps(self, rows: Sequence[Sequence[Any]]) -> Iterator[dict[str, Any]]:
        """``load_task_history``-shaped entries, each with its resume ``token``."""
        return self._take(rows, history_entry)

    def tasks(self, rows: Sequence[Sequence[Any]]) -> Iterator[dict[str, Any]]:
        """Task status changes, each with its resume ``token``."""
        return self._take(rows, task_change)

    def _take(self, rows: Sequence[Sequence[Any]], entry: Callable[..., dict[str, Any]]
              ) -> Iterator[dict[str, Any]]:
        """A catch-up's rows ``(horizon, task status, tx, seq, *fields)`` as entries; when all
        are taken, the position moves to the snapshot's horizon."""
        for _horizon, task_status, tx, seq, *fields in rows:
            self.finished = task_status is not None and _STATUS[task_status].is_terminal
            if tx is None:  # the row of NULLs: no new event
                continue
            self.position.advance(tx, seq)
            yield {**entry(*fields), "token": self.position.token()}
        if rows:
            self.position.settle(int(rows[0][0]))
