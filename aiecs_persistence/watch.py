"""Following task history as it is written: positions, resume tokens and the LISTEN wake-up.

The truth is the ``task_events`` table: every committed insert or update of a step (and every
status change of a task) appends one row there, written by statement-level triggers, so psql
writers and bulk loads are followed too. ``tx`` is the writing transaction's id, ``seq`` the
order of writing. Neither is commit order (a row with a lower value can commit later), so a
watcher's position is not one number but:

* ``horizon``: every transaction with an id below it has ended, and all their events were
  yielded — it is the ``xmin`` of the snapshot of the last catch-up query, the oldest
  transaction still running then;
* ``seen``: for each transaction at or above the horizon whose events were yielded, the last
  ``seq`` yielded (a consumer may stop in the middle of a transaction's events).

A catch-up query returns, in ``seq`` order, the events above the position that its snapshot
sees (whole transactions only: a transaction's rows become visible at once), with the snapshot's
``xmin``, which becomes the next horizon. Nothing is skipped (what a later snapshot sees that
this one did not is above the horizon and not in ``seen``) and nothing is repeated. Two writes
of the same step come out in commit order: the second waited for the first's commit before
writing, so its ``seq`` is higher.

NOTIFY is only the wake-up. The saves and the triggers notify ``names.CHANNEL`` with the task's
keys, and only for tasks (or users) some manager registered in ``aiecs_watched``, so writes
nobody watches never notify (a notifying commit takes a cluster-wide lock in PostgreSQL). Each
manager holds one LISTEN connection however many watchers it serves (``AsyncListener`` /
``Listener``); a lost notification, a reconnect or a restarted server only delays the next
catch-up. Where notifications cannot reach the client (a transaction-mode pooler), watchers
poll every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Final

from .names import CHANNEL, SEPARATOR, payload
from .statements.watching import REGISTRATION_TTL, RENEW_WATCHES

__all__ = ["CHANNEL", "HEARTBEAT", "AsyncListener", "AsyncWaiter", "Listener", "Waiter"]

#: How often a listener renews its registrations, and how long a watcher that trusts the
#: notifications waits at most before it looks anyway (seconds).
HEARTBEAT: Final = 60.0
log = logging.getLogger("aiecs_persistence")


#: The key watchers wait on: a notification's payload (``task_id`` '' for a user).
key = payload


# -- the wake-up: one LISTEN connection per manager ---------------------------------------------


class _Registry:
    """Who waits on which key (shared by both listeners)."""

    def __init__(self) -> None:
        self.listener_id = uuid.uuid4().hex
        self.lock = threading.Lock()
        self.waiters: dict[str, set[Any]] = {}

    def add(self, name: str, waiter: Any) -> None:
        with self.lock:
            self.waiters.setdefault(name, set()).add(waiter)

    def remove(self, name: str, waiter: Any) -> None:
        with self.lock:
            waiting = self.waiters.get(name)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self.waiters[name]

    def has(self, name: str) -> bool:
        with self.lock:
            return name in self.waiters

    def matching(self, payload: str | None) -> list[Any]:
        """The waiters of ``payload``'s key (and of its user's), or all of them (None)."""
        with self.lock:
            if payload is None:
                return [w for ws in self.waiters.values() for w in ws]
            user = payload.split(SEPARATOR, 1)[0]
            return [*self.waiters.get(payload, ()), *self.waiters.get(key(user, ""), ())]


class _Listener:
    """What both listeners share: the connection settings, the waiters by key, whether
    notifications are arriving, and the wake-ups."""

    def __init__(self, conninfo: str, connect_kwargs: Mapping[str, Any]) -> None:
        self._conninfo = conninfo
        self._kwargs = dict(connect_kwargs)
        self._registry = _Registry()
        self._listening = False
        self._renewal = {"listener": self._registry.listener_id, "ttl": REGISTRATION_TTL}

    @property
    def listening(self) -> bool:
        """Whether notifications are arriving (else watchers poll)."""
        return self._listening

    @property
    def listener_id(self) -> str:
        """This listener's name in ``aiecs_watched``."""
        return self._registry.listener_id

    def _add(self, user_id: str, task_id: str, waiter: Any) -> None:
        self._registry.add(key(user_id, task_id), waiter)

    def unsubscribe(self, user_id: str, task_id: str, waiter: Any) -> bool:
        """Forget ``waiter``; True when nobody else here waits on that key."""
        name = key(user_id, task_id)
        self._registry.remove(name, waiter)
        return not self._registry.has(name)

    def _wake(self, payload: str | None) -> None:
        for waiter in self._registry.matching(payload):
            waiter.wake()


class AsyncListener(_Listener):
    """The async manager's LISTEN connection: a task that wakes the watchers of each key it
    hears about, reconnects after a failure (waking every watcher, who catch up) and renews
    its registrations."""

    def __init__(self, conninfo: str, connect_kwargs: Mapping[str, Any]) -> None:
        super().__init__(conninfo, connect_kwargs)
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, user_id: str, task_id: str) -> AsyncWaiter:
        """A waiter woken by changes of (user_id, task_id) — task_id '' for all of a user's
        tasks. (The manager registers the key in ``aiecs_watched`` so writers notify.)"""
        waiter = AsyncWaiter()
        self._add(user_id, task_id, waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="aiecs-listener")
        return waiter

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._listening = False

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                from psycopg import AsyncConnection

                async with await AsyncConnection.connect(
                        self._conninfo, autocommit=True, **self._kwargs) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(RENEW_WATCHES, self._renewal)
                    self._listening = True
                    delay = 0.1
                    self._wake(None)  # anything may have happened while not listening
                    while True:
                        async for note in conn.notifies(timeout=HEARTBEAT):
                            self._wake(note.payload)
                        await conn.execute(RENEW_WATCHES, self._renewal)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection: watchers poll until it is back
                log.debug("listener: %s; reconnecting in %.1fs", type(exc).__name__, delay)
            self._listening = False
            self._wake(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class AsyncWaiter:
    """What one async watcher waits on between catch-ups."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def wake(self) -> None:
        # Called on the listener's task, in the same loop.
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, seconds: float) -> None:
        """Until woken, or ``seconds``. (``asyncio.wait``, neither ``wait_for`` nor
        ``asyncio.timeout``: on Python 3.11 both can swallow a cancellation that arrives as
        the timeout expires, and the watcher would then never end.)"""
        woken = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait([woken], timeout=seconds)
        finally:
            woken.cancel()


class Listener(_Listener):
    """The blocking manager's LISTEN connection: a daemon thread (see ``AsyncListener``)."""

    def __init__(self, conninfo: str, connect_kwargs: Mapping[str, Any]) -> None:
        super().__init__(conninfo, connect_kwargs)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self, user_id: str, task_id: str) -> Waiter:
        waiter = Waiter()
        self._add(user_id, task_id, waiter)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="aiecs-listener",
                                            daemon=True)
            self._thread.start()
        return waiter

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
        self._listening = False

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                from psycopg import Connection

                with Connection.connect(
                        self._conninfo, autocommit=True, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(RENEW_WATCHES, self._renewal)
                    self._listening = True
                    delay = 0.1
                    self._wake(None)
                    renewed = 0.0
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._wake(note.payload)
                        renewed += 0.5
                        if renewed >= HEARTBEAT:
                            conn.execute(RENEW_WATCHES, self._renewal)
                            renewed = 0.0
            except Exception as exc:
                log.debug("listener: %s; reconnecting in %.1fs", type(exc).__name__, delay)
            self._listening = False
            self._wake(None)
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)


class Waiter:
    """What one blocking watcher waits on between catch-ups."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, seconds: float) -> None:
        """Until woken, or ``seconds``."""
        self._event.wait(seconds)
