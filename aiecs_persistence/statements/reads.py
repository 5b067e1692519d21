"""Reads: a task's history, a task, a user's tasks (upstream's shape), and the filtered,
keyset-paginated listings of tasks and steps. ``rows.py`` shapes what they return."""

from __future__ import annotations

from typing import Any, Final

from .. import names
from ..domain import ErrorCode, TaskStatus
from ..records import decode_cursor
from .checks import (
    check_error_code,
    check_filter_text,
    check_id,
    check_limit,
    check_status,
    check_time,
)
from .columns import RESULT_COLUMNS, STEP_COLUMNS, TASK_COLUMNS, listed
from .statement import Statement

#: A task's steps, from its partition alone: its bucket, from ``aiecs_task_bucket``, is known
#: when the statement starts, and the other partitions are pruned before they are opened.
LOAD_HISTORY: Final = f"""
SELECT step, {listed(RESULT_COLUMNS)}, updated_at
FROM task_history
WHERE user_id = %(user_id)s AND task_id = %(task_id)s
  AND {names.BUCKET} = {names.TASK_BUCKET_FUNCTION}(%(user_id)s, %(task_id)s)
ORDER BY step
"""

#: The same on Citus, where a function that reads a distributed table cannot run inside the
#: statement a worker runs: the bucket from a subquery of the same shard.
LOAD_HISTORY_CLUSTER: Final = f"""
SELECT step, {listed(RESULT_COLUMNS)}, updated_at
FROM task_history
WHERE user_id = %(user_id)s AND task_id = %(task_id)s
  AND {names.BUCKET} = (SELECT t.{names.BUCKET} FROM tasks t
                        WHERE t.user_id = %(user_id)s AND t.task_id = %(task_id)s)
ORDER BY step
"""


def load_history(user_id: Any, task_id: Any, form: str = LOAD_HISTORY) -> Statement:
    return Statement(
        "load_task_history",
        form,
        {"user_id": check_id(user_id, "user_id"), "task_id": check_id(task_id, "task_id")},
    )


GET_TASK: Final = (
    f"SELECT {listed(TASK_COLUMNS)} FROM tasks "
    "WHERE user_id = %(user_id)s AND task_id = %(task_id)s"
)


def get_task(user_id: Any, task_id: Any) -> Statement:
    return Statement(
        "get_task",
        GET_TASK,
        {"user_id": check_id(user_id, "user_id"), "task_id": check_id(task_id, "task_id")},
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


def _listing(
    name: str, select: str, alias: str, order: tuple[str, ...], *, user_id: Any, limit: Any,
    cursor: Any, status: Any, error_code: Any, since: Any, until: Any,
    more: list[tuple[str, str, Any]],
) -> Statement:
    """One page of a user's rows (``select`` names them, from a table aliased ``alias``), newest
    first, keyset-paginated on ``order``: the common filters, then ``more`` (each a condition,
    its parameter's name and its checked value), then the cursor's position. It reads one row
    more than ``limit``: whether there is a next page."""
    where: list[str] = []
    params: dict[str, Any] = {"user_id": check_id(user_id, "user_id"),
                              "limit": check_limit(limit) + 1}
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
    for condition, param, value in more:
        params[param] = value
        where.append(condition)
    if cursor is not None:
        position = decode_cursor(cursor, with_step="step" in order)
        names = ("c_time", "c_task", "c_step")[:len(order)]
        params.update(zip(names, position, strict=False))
        where.append(f"({listed(order, alias + '.')}) < ("
                     + ", ".join(f"%({n})s" for n in names) + ")")
    sql = (
        f"SELECT {select} WHERE {alias}.user_id = %(user_id)s"
        + "".join(f" AND {w}" for w in where)
        + " ORDER BY " + ", ".join(f"{alias}.{c} DESC" for c in order) + " LIMIT %(limit)s"
    )
    return Statement(name, sql, params)


def list_tasks(
    user_id: Any, *, status: Any = None, error_code: Any = None, step_name: Any = None,
    since: Any = None, until: Any = None, limit: Any = 100, cursor: Any = None,
) -> Statement:
    """A user's tasks, newest activity first, keyset-paginated on (updated_at, task_id)."""
    more = []
    if step_name is not None:
        more.append(("EXISTS (SELECT FROM task_history h WHERE h.user_id = t.user_id "
                     "AND h.task_id = t.task_id AND h.bucket = t.bucket "
                     "AND h.step_name = %(step_name)s)",
                     "step_name", check_filter_text(step_name, "step_name")))
    return _listing(
        "list_tasks", f"{listed(TASK_COLUMNS, 't.')} FROM tasks t", "t",
        ("updated_at", "task_id"), user_id=user_id, limit=limit, cursor=cursor,
        status=status, error_code=error_code, since=since, until=until, more=more)


def list_steps(
    user_id: Any, *, task_id: Any = None, status: Any = None, error_code: Any = None,
    step_name: Any = None, since: Any = None, until: Any = None, limit: Any = 100,
    cursor: Any = None,
) -> Statement:
    """A user's steps, newest first, keyset-paginated on (updated_at, task_id, step)."""
    more: list[tuple[str, str, Any]] = []
    if task_id is not None:
        more.append(("h.task_id = %(task_id)s", "task_id", check_id(task_id, "task_id")))
    if step_name is not None:
        more.append(("h.step_name = %(step_name)s", "step_name",
                     check_filter_text(step_name, "step_name")))
    if since is not None:  # a step written since lies in a partition from this one on
        more.append((f"h.{names.BUCKET} >= {names.WINDOW_START_FUNCTION}(%(since)s)", "since",
                     check_time(since, "since")))
    return _listing(
        "list_steps",
        f"{listed(STEP_COLUMNS, 'h.')}, h.created_at, h.updated_at FROM task_history h", "h",
        ("updated_at", "task_id", "step"), user_id=user_id, limit=limit, cursor=cursor,
        status=status, error_code=error_code, since=since, until=until, more=more)
