"""A task's own life: started, finished with a terminal status, cancelled. (Its steps are
saved by ``saves.py``.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ..domain import UNSUCCESSFUL_STATUSES, ErrorCode, TaskStatus
from ..errors import InvalidTransitionError, ValidationError
from ..jsonb import check_text
from ..records import TaskRecord
from .checks import check_error_code, check_id, check_status
from .columns import TASK_COLUMNS, listed
from .rows import Row, task_record
from .statement import Statement

START_TASK: Final = f"""
INSERT INTO tasks AS t (user_id, task_id, status, started_at)
VALUES (%(user_id)s, %(task_id)s, 'running', now())
ON CONFLICT (user_id, task_id) DO UPDATE SET status = 'running'
RETURNING {listed(TASK_COLUMNS)}
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
RETURNING {listed(TASK_COLUMNS)}
"""

FINISH_UNKNOWN_AS_CANCELLED: Final = f"""
INSERT INTO tasks AS t (user_id, task_id, status, error_code, error_message)
VALUES (%(user_id)s, %(task_id)s, 'cancelled', %(error_code)s::error_code, %(error_message)s)
ON CONFLICT (user_id, task_id) DO UPDATE
  SET status = 'cancelled', error_code = EXCLUDED.error_code,
      error_message = EXCLUDED.error_message
RETURNING {listed(TASK_COLUMNS)}
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
                                     AND status = 'cancelled') AS cancelled
"""
# (``SELECT 1``, not ``SELECT``: Citus cannot plan a zero-column read of a modifying CTE.)

CANCEL_MESSAGE: Final = "Task cancelled"


def finished_task(rows: Sequence[Row], statement: Statement) -> TaskRecord:
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


def cancelled(rows: Sequence[Row]) -> bool:
    """``cancel_task``'s answer: whether the task is (now) cancelled."""
    return bool(rows[0].cancelled)
