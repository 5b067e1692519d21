"""Argument checks: each raises ``ValidationError`` naming the field before anything reaches the
database, and returns the value in the form the statements bind."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, Final, TypeVar

from ..domain import ID_MAX_LENGTH, ErrorCode, TaskStatus, TaskStepResult
from ..errors import ValidationError, shown
from ..jsonb import check_text, encode_result

E = TypeVar("E", bound=Enum)

#: Largest step index (PostgreSQL ``integer``).
STEP_MAX: Final = 2**31 - 1
#: Largest page of a listing.
LIMIT_MAX: Final = 10_000


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



def check_days_old(days_old: Any) -> float:
    if isinstance(days_old, bool) or not isinstance(days_old, int | float) or (
        isinstance(days_old, float) and not math.isfinite(days_old)
    ) or days_old < 0:
        raise ValidationError(
            f"days_old: must be a non-negative number of days, got {shown(days_old)}",
            field="days_old",
        )
    return float(days_old)



def check_poll_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and 0.01 <= value <= 3600):
        raise ValidationError(
            f"poll_interval: must be a number of seconds between 0.01 and 3600, got "
            f"{shown(value)}", field="poll_interval")
    return float(value)



def check_records(records: Any) -> None:
    """``save_task_history_many``'s argument: an iterable (sync or async) of records."""
    iterable = hasattr(records, "__iter__") or hasattr(records, "__aiter__")
    if not iterable or isinstance(records, str | bytes | bytearray | Mapping):
        raise ValidationError(
            f"records: must be an iterable of (user_id, task_id, step, step_result), got "
            f"{type(records).__name__}", field="records",
        )

