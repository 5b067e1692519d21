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

NOTIFY is only the wake-up. The saves and the triggers notify with the task's keys, and only
the listeners that registered the task (or its user) in ``aiecs_watched``, each on a channel of
its own (``names.channel``): writes nobody watches never notify (a notifying commit takes a
cluster-wide lock in PostgreSQL), and a listener hears of no other task (a scoped role's of no
other user's). Each
manager holds one LISTEN connection however many watchers it serves (``listen.AsyncListener``,
and its generated twin ``listen_sync.Listener``); a lost notification, a reconnect or a
restarted server only delays the next catch-up. Where notifications cannot reach the client
(a transaction-mode pooler), watchers poll every ``poll_interval``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Final

from .names import SEPARATOR, payload
from .statements.watching import REGISTRATION_TTL

__all__ = ["HEARTBEAT", "ListenerBase", "key"]

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


class ListenerBase:
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
