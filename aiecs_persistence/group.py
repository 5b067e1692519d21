"""Group commit: saves that arrive while every writer is busy go out together, in one statement.

A manager has a few *writers* (``group_commit_writers``). A save that finds them all free goes
out at once, alone, so an idle manager adds no latency. A save that finds one free while another
is busy queues and makes the free one its batch's *leader*: the leader takes the queue as soon as
it runs (the async manager's next loop turn), so the saves that arrive together go out together.
While all are busy, saves queue; a writer that finishes takes the queued saves it may (up to
``group_commit_max_batch``) and writes them in one statement (``statements.saves.SAVE_STEPS``:
the task-first upsert over arrays), so the server's fixed cost per statement and per commit is paid
once per batch instead of once per save.

Writers share the load: a writer takes at most its even part of the saves outstanding (queued or
being written by the others), and leaves the rest queued for the others to take when they next
finish. So under load the writers keep alternating, each with part of the callers, one batch
on the server while the callers of the other queue their next saves. Without it, one writer
ended up carrying nearly every caller in one batch while the other wrote a single caller's saves
over and over (measured in docs/performance.md).

Rules kept here, whatever the I/O style:

* Two saves of one step are never in flight together: a queued save whose key is being written
  waits for the next batch, so saves of one step are written in the order they arrived.
* A batch holds distinct keys, in key order (tasks, then steps), so concurrent batches take
  their row locks in one order.
* On Citus (``one_user``, asked of the dialect) a batch holds one user's saves: a statement
  that names one user is what Citus runs on one node (``statements.saves.SAVE_STEPS_CALL``);
  the others wait for the next.
* Every caller gets its own outcome. The managers retry a batch that failed transiently; they
  re-run one save at a time a batch that a rule rejected (so one bad save fails alone), that
  timed out or that ran out of retries; any other failure goes to each of its callers.

``GroupCommit`` is the bookkeeping (thread-safe, no I/O); the managers move the statements.
A batch is written by a drain task (async) or a drain thread (blocking) that loops while the
queue has work, so no caller is ever held up writing the saves of others.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from .statements import Statement

__all__ = ["Arrival", "GroupCommit", "Key", "QueuedBase"]

Key = tuple[str, str, int]
#: Defaults of the settings of the same names.
WRITERS: Final = 2
MAX_BATCH: Final = 256


class Arrival(enum.Enum):
    """What ``GroupCommit.arrive`` tells the caller to do."""

    #: Write the save alone, at once, then call ``finish``.
    ALONE = "alone"
    #: Wait: a writer will write the save.
    QUEUED = "queued"
    #: Wait, and start a writer that calls ``lead`` (it takes the save in a batch).
    LEAD = "lead"


class QueuedBase:
    """One save: its key, its statements (``full``, and ``fast`` when the task is fresh), and
    once written, its outcome. How its caller waits is the I/O style's (``queued.py``, and its
    generated twin ``queued_sync.py``)."""

    __slots__ = ("caller", "error", "fast", "full", "key")

    def __init__(self, key: Key, full: Statement, fast: Statement | None) -> None:
        self.key = key
        self.full = full
        self.fast = fast
        self.error: BaseException | None = None
        #: The caller's span (an OpenTelemetry ``SpanContext``), which its batch's span links
        #: to (telemetry.py); None without telemetry.
        self.caller: Any = None

    def outcome(self) -> None:
        """Raise the save's error, if it failed."""
        if self.error is not None:
            raise self.error


class GroupCommit:
    """Who writes what: the free writers, the keys in flight and the queue."""

    def __init__(self, writers: int = WRITERS, max_batch: int = MAX_BATCH, *,
                 one_user: Callable[[], bool] = lambda: False) -> None:
        self.writers = writers
        self.max_batch = max_batch
        #: Whether a batch holds the saves of one user only (the managers ask their dialect).
        self.one_user = one_user
        self._lock = threading.Lock()
        self._busy = 0
        self._in_flight: set[Key] = set()
        self._queue: deque[Any] = deque()

    def arrive(self, save: QueuedBase) -> Arrival:
        """A save arrives. ``ALONE`` when every writer is free (and its key is not being
        written): the caller writes it and then owes ``finish``. ``LEAD`` when a writer is free
        while another is busy: the save is queued and the caller starts that writer, which
        calls ``lead``. Otherwise ``QUEUED``."""
        with self._lock:
            if self._busy < self.writers and save.key not in self._in_flight:
                self._busy += 1
                if self._busy == 1:
                    self._in_flight.add(save.key)
                    return Arrival.ALONE
                self._queue.append(save)
                return Arrival.LEAD
            self._queue.append(save)
            return Arrival.QUEUED

    def lead(self) -> list[Any]:
        """A writer started by ``arrive`` runs: its batch (in key order), or ``[]`` when the
        others took every save meanwhile (the writer is then free)."""
        with self._lock:
            batch = self._take()
            if not batch:
                self._busy -= 1
            return batch

    def finish(self, keys: Sequence[Key], *, take: bool = True) -> list[Any]:
        """A writer wrote ``keys``: the next batch it writes (in key order), or ``[]`` when
        there is none, or not ``take`` (the writer is then free)."""
        with self._lock:
            self._in_flight.difference_update(keys)
            batch = self._take() if take else []
            if not batch:
                self._busy -= 1
            return batch

    def withdraw(self, save: QueuedBase) -> None:
        """A queued save's caller gave up (cancelled): out of the queue, if still there (a save
        already taken into a batch is written anyway, as a save cancelled in flight may be)."""
        with self._lock, contextlib.suppress(ValueError):
            self._queue.remove(save)

    def _take(self) -> list[Any]:
        """The taker's batch: the first queued saves whose keys are not being written (the
        first of each key only), up to ``max_batch`` and to the taker's even part of the saves
        outstanding (queued, or being written by the other busy writers), rounded up."""
        if not self._queue:
            return []
        outstanding = len(self._queue) + len(self._in_flight)
        size = min(self.max_batch, -(-outstanding // self._busy))
        batch: list[Any] = []
        keys: set[Key] = set()
        left: deque[Any] = deque()
        user: str | None = None
        one_user = self.one_user()
        for save in self._queue:
            if len(batch) < size and save.key not in self._in_flight and (
                    save.key not in keys) and (user is None or save.key[0] == user):
                if one_user:
                    user = save.key[0]
                batch.append(save)
                keys.add(save.key)
            else:
                left.append(save)
        self._queue = left
        self._in_flight.update(keys)
        batch.sort(key=lambda save: save.key)
        return batch

    @property
    def queued(self) -> int:
        return len(self._queue)
