"""Reads: a task's history, a task, a user's tasks (upstream's shape), and the filtered,
keyset-paginated listings of tasks and steps. ``rows.py`` shapes what they return."""

from __future__ import annotations

from typing import Any, Final

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

LOAD_HISTORY: Final = f"""
SELECT step, {listed(RESULT_COLUMNS)}, updated_at
FROM task_history WHERE user_id = %(user_id)s AND task_id = %(task_id)s
ORDER BY step
"""


def load_history(user_id: Any, task_id: Any) -> Statement:
    return Statement(
        "load_task_history",
        LOAD_HISTORY,
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
        f"SELECT {listed(TASK_COLUMNS, 't.')} FROM tasks t WHERE t.user_id = %(user_id)s "
        + "".join(f" AND {w}" for w in where)
        + " ORDER BY t.updated_at DESC, t.task_id DESC LIMIT %(limit)s"
    )
    return Statement("list_tasks", sql, params)


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
        f"SELECT {listed(STEP_COLUMNS, 'h.')}, h.created_at, h.updated_at "
        "FROM task_history h WHERE h.user_id = %(user_id)s"
        + "".join(f" AND {w}" for w in where)
        + " ORDER BY h.updated_at DESC, h.task_id DESC, h.step DESC LIMIT %(limit)s"
    )
    return Statement("list_steps", sql, params)


