"""Typed rows returned by the managers' typed reads."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from .domain import ErrorCode, TaskStatus, TaskStepResult
from .errors import ValidationError

__all__ = ["CleanupSummary", "Page", "Position", "StepRecord", "TaskRecord", "decode_cursor",
           "encode_cursor"]


class TaskRecord(NamedTuple):
    """One task: its lifecycle status, error and timestamps. (A named tuple: immutable and
    cheap to build, which matters when a listing returns thousands.)"""

    user_id: str
    task_id: str
    status: TaskStatus
    error_code: ErrorCode | None
    error_message: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class CleanupSummary(NamedTuple):
    """What the last ``cleanup_old_tasks`` of a manager did: the tasks it deleted, and of them
    those that went with whole partitions, the partitions dropped and the bytes they held."""

    tasks: int = 0
    tasks_in_partitions: int = 0
    partitions_dropped: int = 0
    bytes_freed: int = 0


class StepRecord(NamedTuple):
    """One stored step of a task (a named tuple, like :class:`TaskRecord`)."""

    user_id: str
    task_id: str
    step: int
    result: TaskStepResult
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def status(self) -> TaskStatus:
        return self.result.task_status


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of a listing, newest first. Pass ``next_cursor`` back for the next page;
    it is None on the last page."""

    items: Sequence[T]
    next_cursor: str | None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def encode_cursor(updated_at: dt.datetime, task_id: str, step: int | None = None) -> str:
    key: list[Any] = [updated_at.isoformat(), task_id]
    if step is not None:
        key.append(step)
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor() -> ValidationError:
    return ValidationError("cursor: not a cursor returned by this listing", field="cursor")


def decode_cursor(cursor: str, *, with_step: bool) -> tuple[dt.datetime, str, int | None]:
    """The keyset position in ``cursor``; ``ValidationError`` when it was not made by us."""
    if not isinstance(cursor, str) or len(cursor) > 2048:
        raise _bad_cursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad_cursor() from None
    if not isinstance(key, list) or len(key) != (3 if with_step else 2):
        raise _bad_cursor()
    stamp, task_id = key[0], key[1]
    step = key[2] if with_step else None
    if not isinstance(stamp, str) or not isinstance(task_id, str):
        raise _bad_cursor()
    if with_step and (not isinstance(step, int) or isinstance(step, bool)):
        raise _bad_cursor()
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        raise _bad_cursor() from None
    if when.tzinfo is None:
        raise _bad_cursor()
    return when, task_id, step


@dataclass
class Position:
    """Where a watcher stands (watch.py explains it): every transaction below ``horizon`` is
    done; ``seen`` maps each transaction at or above it to the last event ``seq`` yielded.
    ``token()`` is its opaque, resumable form."""

    horizon: int = 0
    seen: dict[int, int] = field(default_factory=dict)
    #: A watch of a user's tasks begun without a token starts with what the event log still
    #: holds: the ``events_horizon`` of its first catch-up (``watch.py``, retention).
    start: int = 0
    #: Begun without a token, and not caught up yet.
    fresh: bool = False

    def token(self) -> str:
        state: list[Any] = [self.horizon, sorted(self.seen.items())]
        if self.start:
            state.append(self.start)
        raw = json.dumps(state, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: Any) -> Position:
        """The position in ``token`` (``None``: the beginning); ``ValidationError`` when it
        was not made by a watcher."""
        if token is None:
            return cls(fresh=True)
        bad = ValidationError("after: not a token yielded by a watcher", field="after")
        if not isinstance(token, str) or len(token) > 100_000:
            raise bad
        try:
            horizon, seen, *start = json.loads(
                base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            position = cls(int(horizon), {int(tx): int(seq) for tx, seq in seen},
                           int(start[0]) if start else 0)
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise bad from None
        if (position.horizon < 0 or position.start < 0 or len(start) > 1
                or any(tx < position.horizon for tx in position.seen)):
            raise bad
        return position

    def expired(self, events_horizon: int, *, task_events_dropped: bool | None) -> bool:
        """Whether retention may have dropped events this position has not seen: some event
        below ``events_horizon`` is gone. For a task's watch (``task_events_dropped`` not
        None), only when its own events may be among them; a user's watch begun without a
        token takes the log as it finds it (``start``)."""
        if task_events_dropped is None and self.fresh:
            self.start = events_horizon
        self.fresh = False
        if task_events_dropped is not None and not task_events_dropped:
            return False
        return events_horizon > max(self.horizon, self.start)

    def params(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "seen_tx": list(self.seen),
                "seen_seq": list(self.seen.values())}

    def advance(self, tx: int, seq: int) -> None:
        """One event yielded."""
        self.seen[tx] = seq

    def settle(self, horizon: int) -> None:
        """A catch-up was yielded whole: transactions below ``horizon`` are done."""
        if horizon > self.horizon:
            self.horizon = horizon
            self.seen = {tx: seq for tx, seq in self.seen.items() if tx >= horizon}
