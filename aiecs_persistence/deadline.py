"""Client-side deadlines: every call ends in bounded time, whatever the server does.

The server's ``statement_timeout`` ends a slow statement, but not one whose backend never runs
again (stopped, swapped out, a network path that silently drops packets): the client would wait
on its socket for ever. So each call also gets a deadline here, a little after the server's own
timeout. One daemon thread per process watches the deadlines of the calls in flight; when one
passes, it shuts the connection's socket down (``shutdown(2)``, not ``close``: the connection
keeps its descriptor, and psycopg sees a broken connection in the thread or coroutine that
uses it, never a descriptor pulled from under it). The call then fails with
``QueryTimeoutError`` (E002) naming the deadline, and the pool discards the connection.

The same mechanism serves both managers: arming and disarming cost a dictionary insert and
delete under a lock; the thread wakes every ``TICK`` seconds only while deadlines are armed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from types import TracebackType
from typing import Final

from .errors import QueryTimeoutError

__all__ = ["Deadline", "arm"]

#: How often the watchdog looks at the armed deadlines (seconds): the precision of a deadline.
TICK: Final = 0.05


class Deadline:
    """A call's deadline on one connection's socket; a context manager that disarms it and,
    when it fired, turns the call's failure into ``QueryTimeoutError``."""

    __slots__ = ("at", "fd", "fired", "key", "operation", "seconds")

    def __init__(self, key: int, fd: int, seconds: float, operation: str) -> None:
        self.key = key
        self.fd = fd
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.operation = operation
        self.fired = False

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _WATCHDOG.disarm(self)
        if self.fired and exc is not None:
            raise QueryTimeoutError(
                f"{self.operation}: no answer from the server within {self.seconds:.1f}s "
                "(client deadline: the server's own statement_timeout did not end the call; "
                "the connection was dropped)"
            ) from None


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._armed: dict[int, Deadline] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float, operation: str) -> Deadline:
        deadline = Deadline(next(self._keys), fd, seconds, operation)
        with self._lock:
            self._armed[deadline.key] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aiecs-deadlines",
                                                daemon=True)
                self._thread.start()
            elif len(self._armed) == 1:
                self._wake.notify()
        return deadline

    def forget_thread(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._armed.clear()
        self._thread = None

    def disarm(self, deadline: Deadline) -> None:
        with self._lock:
            self._armed.pop(deadline.key, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._armed:
                    self._wake.wait()
                now = time.monotonic()
                for deadline in [d for d in self._armed.values() if d.at <= now]:
                    # Under the lock: the call cannot finish and hand its connection (and
                    # descriptor) to another call while its socket is being shut down.
                    del self._armed[deadline.key]
                    deadline.fired = True
                    _shut_down(deadline.fd)
            time.sleep(TICK)


def _shut_down(fd: int) -> None:
    try:
        duplicate = socket.socket(fileno=os.dup(fd))
    except OSError:
        return  # already closed: the call is failing anyway
    with duplicate, contextlib.suppress(OSError):
        duplicate.shutdown(socket.SHUT_RDWR)


_WATCHDOG: Final = _Watchdog()
# A forked child has no watchdog thread: it starts its own on its first deadline.
os.register_at_fork(after_in_child=_WATCHDOG.forget_thread)


def arm(fd: int, seconds: float, operation: str) -> Deadline:
    """Arm a deadline of ``seconds`` on the connection socket ``fd`` for ``operation``."""
    return _WATCHDOG.arm(fd, seconds, operation)
