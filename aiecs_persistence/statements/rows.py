"""Rows read back, by column name, into the library's typed records and upstream's shapes. The
managers' connections return each row as a named tuple (psycopg's ``namedtuple_row``: a third
of the cost of a dict a row), read by attribute; every statement names the columns these
read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ..domain import ErrorCode, TaskStatus, TaskStepResult
from ..records import StepRecord, TaskRecord, encode_cursor

#: A row as the managers read it: a named tuple of its columns (``row.task_id``).
Row = Any

# Plain dict look-ups: a few times faster than calling the enum class, once per row read.
_STATUS: Final[dict[str, TaskStatus]] = {s.value: s for s in TaskStatus}
_CODE: Final[dict[str, ErrorCode]] = {c.value: c for c in ErrorCode}


def status(value: str) -> TaskStatus:
    """A ``task_status`` value read back."""
    return _STATUS[value]


def task_record(row: Row) -> TaskRecord:
    """A task (the columns ``columns.TASK_COLUMNS``) as a record."""
    code = row.error_code
    return TaskRecord(
        row.user_id, row.task_id, _STATUS[row.status], _CODE[code] if code else None,
        row.error_message, row.created_at, row.updated_at, row.started_at,
        row.finished_at,
    )


def step_record(row: Row) -> StepRecord:
    """A step (``columns.STEP_COLUMNS``, created_at, updated_at) as a record."""
    return StepRecord(
        row.user_id, row.task_id, row.step,
        TaskStepResult(row.step_name, row.result, row.completed, row.message,
                       row.status, row.error_code, row.error_message),
        row.created_at, row.updated_at,
    )


def history_entry(row: Row) -> dict[str, Any]:
    """One step in the upstream shape: ``{"step", "result": step_result.dict(), "timestamp",
    "status"}`` (``load_task_history``'s entries, and the watchers')."""
    return {
        "step": row.step,
        "result": {
            "step": row.step_name, "result": row.result, "completed": row.completed,
            "message": row.message, "status": row.status, "error_code": row.error_code,
            "error_message": row.error_message,
        },
        "timestamp": row.updated_at.isoformat(),
        "status": row.status,
    }


def history_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The upstream shape: ``[{"step", "result": step_result.dict(), "timestamp", "status"}]``."""
    return [history_entry(row) for row in rows]


def task_change(row: Row) -> dict[str, Any]:
    """One task status change, as ``watch_user_tasks`` yields it."""
    return {"task_id": row.task_id, "status": row.status, "error_code": row.error_code,
            "error_message": row.error_message, "timestamp": row.updated_at.isoformat()}


def user_task_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """``get_user_tasks``'s upstream shape."""
    return [{"task_id": r.task_id, "last_updated": r.updated_at.isoformat(),
             "status": r.status} for r in rows]


def task_page(rows: Sequence[Row], limit: int) -> tuple[list[TaskRecord], str | None]:
    """A page of ``limit`` tasks (the statement read one more) and the next page's cursor."""
    records = [task_record(r) for r in rows[:limit]]
    last = records[-1] if records and len(rows) > limit else None
    return records, encode_cursor(last.updated_at, last.task_id) if last else None


def step_page(rows: Sequence[Row], limit: int) -> tuple[list[StepRecord], str | None]:
    """A page of ``limit`` steps (the statement read one more) and the next page's cursor."""
    records = [step_record(r) for r in rows[:limit]]
    last = records[-1] if records and len(rows) > limit else None
    return records, encode_cursor(last.updated_at, last.task_id, last.step) if last else None


def report_data(rows: Sequence[Row]) -> dict[str, Any]:
    """The report's one row, as ``report()`` returns it."""
    row = rows[0]
    return {"totals": row.totals, "failures_by_error_code": row.by_code,
            "failures_by_category": row.by_category, "busiest_steps": row.busiest_steps,
            "per_day": row.per_day}

