"""The domain model of task execution: statuses, error codes, step results.

Pure Python: nothing here imports SQLAlchemy, psycopg or any database module, so it can be used
(and tested) anywhere. The schema, the migrations and the managers are all derived from it.

Source: the seed document ``execution-models.md`` (``TaskStatus``, ``ErrorCode``,
``TaskStepResult``), plus the state machine and consistency rules of the contract (§2, §3).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Final

from .codes import ErrorCode
from .errors import ValidationError, shown

__all__ = [
    "STEP_FIELDS",
    "STEP_RULES",
    "UNSUCCESSFUL_STATUSES",
    "ErrorCode",
    "TaskStatus",
    "TaskStepResult",
    "broken_rules",
    "check_step_fields",
    "is_blank",
    "migrate_record",
]


class TaskStatus(Enum):
    """Lifecycle status of a task or of one of its steps (the seed's six states, in order)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed, timed_out and cancelled: nothing follows them."""
        return self in _TERMINAL

    def can_transition_to(self, other: TaskStatus) -> bool:
        """Whether moving from this status to ``other`` is legal.

        ``pending → running | cancelled``, ``running → completed | failed | timed_out |
        cancelled``, and ``X → X`` (an idempotent re-save). Everything else is illegal. The
        database enforces the same table with a trigger (see ``schema.py``).
        """
        if not isinstance(other, TaskStatus):
            raise TypeError(f"can_transition_to() takes a TaskStatus, not {type(other).__name__}")
        return other is self or other in _TRANSITIONS[self]


_TERMINAL: Final = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)
_TRANSITIONS: Final[Mapping[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.TIMED_OUT: frozenset(),
    TaskStatus.FAILED: frozenset(),
}

#: Statuses that must carry an error code (contract §3, "error iff unsuccessful").
UNSUCCESSFUL_STATUSES: Final = frozenset(
    {TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)


#: The seed's seven fields of a step result, in ``dict()`` order.
STEP_FIELDS: Final = (
    "step",
    "result",
    "completed",
    "message",
    "status",
    "error_code",
    "error_message",
)

#: The whitespace that makes a step name blank. The database CHECK constraint strips exactly
#: these characters (``btrim(step_name, E' \t\n\r\f\x0B')``), so Python and SQL agree on every
#: string, whatever the server's locale.
#: Longest ``user_id`` / ``task_id`` (characters). They are index keys, and a btree entry
#: must stay well under PostgreSQL's ~2.7 kB limit (schema.py's CHECK says the same).
ID_MAX_LENGTH: Final = 255

BLANK_CHARS: Final = " \t\n\r\f\v"

_STATUS_VALUES: Final = frozenset(s.value for s in TaskStatus)
_ERROR_CODE_VALUES: Final = frozenset(c.value for c in ErrorCode)


def is_blank(text: str) -> bool:
    """True when ``text`` is empty or only whitespace (the ``step name`` rule)."""
    return not text.strip(BLANK_CHARS)


_UNSUCCESSFUL_VALUES: Final = frozenset(s.value for s in UNSUCCESSFUL_STATUSES)


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


class TaskStepResult:
    """The result of one step of a task: the seed's value object.

    The constructor is the seed's, positional order included. Enum members given for
    ``status`` or ``error_code`` are stored as their string values. Instances are immutable
    and compare by value. Construction never rejects data (the seed's own examples build
    inconsistent results); :meth:`problems` reports what breaks the consistency rules, and
    :meth:`validate` raises :class:`~aiecs_persistence.errors.ValidationError`.
    """

    __slots__ = STEP_FIELDS

    step: str
    result: Any
    completed: bool
    message: str
    status: str
    error_code: str | None
    error_message: str | None

    def __init__(
        self,
        step: str,
        result: Any,
        completed: bool = False,
        message: str = "",
        status: str | TaskStatus = "pending",
        error_code: str | ErrorCode | None = None,
        error_message: str | None = None,
    ) -> None:
        setter = object.__setattr__
        setter(self, "step", step)
        setter(self, "result", result)
        setter(self, "completed", completed)
        setter(self, "message", message)
        setter(self, "status", _enum_value(status))
        setter(self, "error_code", _enum_value(error_code))
        setter(self, "error_message", error_message)

    # -- the seed's interface -------------------------------------------------------------

    def dict(self) -> dict[str, Any]:
        """The seed's serialisation: exactly the seven fields, in the seed's order."""
        return {name: getattr(self, name) for name in STEP_FIELDS}

    def __repr__(self) -> str:
        return (
            f"TaskStepResult(step='{self.step}', status='{self.status}', "
            f"completed={self.completed})"
        )

    # -- value object ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TaskStepResult is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"TaskStepResult is immutable; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskStepResult):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in STEP_FIELDS)

    def __hash__(self) -> int:
        # Hashable when every field is (a dict result makes the instance unhashable, as for
        # any value object holding a mutable value).
        return hash(tuple(getattr(self, n) for n in STEP_FIELDS))

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskStepResult, tuple(getattr(self, n) for n in STEP_FIELDS))

    def replace(self, **changes: Any) -> TaskStepResult:
        """A copy with some fields changed (the object itself never changes)."""
        unknown = set(changes) - set(STEP_FIELDS)
        if unknown:
            raise TypeError(f"unknown TaskStepResult field(s): {', '.join(sorted(unknown))}")
        fields = self.dict()
        fields.update(changes)
        return TaskStepResult(**fields)

    # -- typed views ----------------------------------------------------------------------

    @property
    def task_status(self) -> TaskStatus:
        """``status`` as a :class:`TaskStatus` (raises ``ValidationError`` when unknown)."""
        try:
            return TaskStatus(self.status)
        except ValueError:
            raise ValidationError(
                f"status: unknown status {shown(self.status)}; expected one of "
                f"{', '.join(s.value for s in TaskStatus)}",
                field="status",
            ) from None

    @property
    def error(self) -> ErrorCode | None:
        """``error_code`` as an :class:`ErrorCode`, or None."""
        if self.error_code is None:
            return None
        try:
            return ErrorCode(self.error_code)
        except ValueError:
            raise ValidationError(
                f"error_code: unknown error code {shown(self.error_code)}; expected one of "
                f"{', '.join(c.value for c in ErrorCode)}",
                field="error_code",
            ) from None

    # -- consistency ----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every consistency rule (contract §3) this result breaks, as readable sentences.

        An empty list means the result is consistent and may be stored.
        """
        return check_step_fields(self.dict())

    def is_consistent(self) -> bool:
        return not self.problems()

    def validate(self) -> TaskStepResult:
        """Return ``self`` when consistent; else raise ``ValidationError`` naming the fields."""
        problems = self.problems()
        if problems:
            fields = tuple(p.split(":", 1)[0] for p in problems)
            raise ValidationError(
                "inconsistent step result: " + "; ".join(problems), field=fields[0]
            )
        return self

    # -- other shapes ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskStepResult:
        """Build from ``dict()`` output (or any mapping with the seven keys).

        ``step`` and ``result`` are required; the other keys take the constructor's defaults.
        Unknown keys are rejected so that typos do not pass silently.
        """
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"step_result: expected a mapping, got {type(data).__name__}",
                field="step_result",
            )
        missing = [k for k in ("step", "result") if k not in data]
        if missing:
            raise ValidationError(
                f"{missing[0]}: missing from the step result mapping", field=missing[0]
            )
        unknown = sorted(str(k) for k in data if k not in STEP_FIELDS)
        if unknown:
            raise ValidationError(
                f"{unknown[0]}: not a step result field (expected {', '.join(STEP_FIELDS)})",
                field=unknown[0],
            )
        return cls(**{str(k): v for k, v in data.items()})

    @classmethod
    def from_object(cls, obj: Any) -> TaskStepResult:
        """Accept our class, the upstream AIECS class (or any object with the seven
        attributes), or a mapping; enum members are normalised to their values."""
        if isinstance(obj, TaskStepResult):
            return obj
        if isinstance(obj, Mapping):
            return cls.from_dict(obj)
        missing = [n for n in STEP_FIELDS if not hasattr(obj, n)]
        if missing:
            raise ValidationError(
                f"step_result: a {type(obj).__name__} is not a step result "
                f"(no attribute {missing[0]!r}); pass a TaskStepResult, an object with the "
                f"fields {', '.join(STEP_FIELDS)}, or a dict",
                field="step_result",
            )
        return cls(**{n: getattr(obj, n) for n in STEP_FIELDS})

    @classmethod
    def from_legacy(cls, old: Mapping[str, Any]) -> TaskStepResult:
        """Convert the seed's old format (``operation``, ``output``, ``success``,
        ``message``) to a step result, as the seed's ``convert_data_formats`` does.

        A legacy failure has no error code; to keep the result consistent it gets
        ``E003`` (execution error) with the legacy message as the error message.
        """
        missing = [k for k in ("operation", "output", "success") if k not in old]
        if missing:
            raise ValidationError(
                f"{missing[0]}: missing from the legacy record", field=missing[0]
            )
        success = bool(old["success"])
        message = str(old.get("message") or "")
        if success:
            return cls(
                step=old["operation"],
                result=old["output"],
                completed=True,
                message=message,
                status=TaskStatus.COMPLETED.value,
            )
        return cls(
            step=old["operation"],
            result=old["output"],
            completed=False,
            message=message,
            status=TaskStatus.FAILED.value,
            error_code=ErrorCode.EXECUTION_ERROR.value,
            error_message=message or "failed (legacy record)",
        )


#: The seed's v1.0 → v1.1 status renames.
LEGACY_STATUS_RENAMES: Final[Mapping[str, str]] = {"success": "completed", "error": "failed"}


def migrate_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's record migration (v1.0 → v1.1): ``success`` → ``completed``,
    ``error`` → ``failed``, and ``version`` set to ``"1.1"``.

    Unlike the seed's function, the input is never modified; a new dict is returned.
    Records already at 1.1 come back unchanged (a copy).
    """
    migrated = dict(record)
    if migrated.get("version", "1.0") == "1.0":
        status = migrated.get("status")
        if isinstance(status, str) and status in LEGACY_STATUS_RENAMES:
            migrated["status"] = LEGACY_STATUS_RENAMES[status]
        migrated["version"] = "1.1"
    return migrated


#: The consistency rules of a step, by the name of the CHECK constraint that enforces each
#: (``ck_task_history_<rule>``).
STEP_RULES: Final = ("step_name", "completed_flag", "error_pair", "error_iff_unsuccessful")


def broken_rules(
    step: str, completed: bool, status: str, error_code: str | None, error_message: str | None
) -> set[str]:
    """The ``STEP_RULES`` that well-typed step fields break: the one statement of each rule on
    the Python side (the schema's CHECKs state them for PostgreSQL; a property test feeds both
    the same values)."""
    has_code = error_code is not None
    rules = {
        "step_name": not is_blank(step),
        "completed_flag": completed == (status == TaskStatus.COMPLETED.value),
        "error_pair": has_code == bool(error_message),
        "error_iff_unsuccessful": has_code == (status in _UNSUCCESSFUL_VALUES),
    }
    return {name for name, holds in rules.items() if not holds}


def check_step_fields(fields: Mapping[str, Any]) -> list[str]:
    """The consistency rules of contract §3 applied to a step's seven fields.

    Each problem starts with the name of the field at fault, then says what is wrong, e.g.
    ``"completed: is True but status is 'failed' (completed must be true exactly when status
    is 'completed')"``. The CHECK constraints of the schema enforce the same rules.
    """
    problems: list[str] = []
    step: Any = fields.get("step")
    completed: Any = fields.get("completed")
    message = fields.get("message")
    status = _enum_value(fields.get("status"))
    error_code = _enum_value(fields.get("error_code"))
    error_message = fields.get("error_message")

    # Types first: a value of the wrong type makes the rules below meaningless.
    if not isinstance(step, str):
        problems.append(f"step: must be a string (the step name), got {type(step).__name__}")
    elif is_blank(step):
        problems.append("step: the step name must not be empty or blank")
    if not isinstance(completed, bool):
        problems.append(f"completed: must be a bool, got {type(completed).__name__}")
    if not isinstance(message, str):
        problems.append(f"message: must be a string, got {type(message).__name__}")
    if not isinstance(status, str) or status not in _STATUS_VALUES:
        problems.append(
            f"status: unknown status {shown(status)}; expected one of "
            + ", ".join(s.value for s in TaskStatus)
        )
        status = None
    if error_code is not None and (
        not isinstance(error_code, str) or error_code not in _ERROR_CODE_VALUES
    ):
        problems.append(
            f"error_code: unknown error code {shown(error_code)}; expected one of "
            + ", ".join(c.value for c in ErrorCode)
            + " or None"
        )
    if error_message is not None and not isinstance(error_message, str):
        problems.append(
            f"error_message: must be a string or None, got {type(error_message).__name__}"
        )
    if problems:
        return problems

    broken = broken_rules(step, completed, status, error_code, error_message)
    if "completed_flag" in broken:
        problems.append(
            f"completed: is {completed} but status is {shown(status)} (completed must be true "
            "exactly when status is 'completed')"
        )
    has_code = error_code is not None
    if "error_pair" in broken and has_code:
        problems.append(
            "error_message: an error code is set but the error message is empty "
            "(error code and error message go together)"
        )
    elif "error_pair" in broken:
        problems.append(
            "error_code: an error message is set but the error code is missing "
            "(error code and error message go together)"
        )
    if "error_iff_unsuccessful" in broken and not has_code:
        problems.append(
            f"error_code: status {shown(status)} needs an error code (failed, timed_out and "
            "cancelled results carry one)"
        )
    elif "error_iff_unsuccessful" in broken:
        problems.append(
            f"error_code: status {shown(status)} must not carry an error code (only failed, "
            "timed_out and cancelled results do)"
        )
    return problems
