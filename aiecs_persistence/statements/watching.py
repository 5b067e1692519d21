"""The watchers' statements: a catch-up (the events above a position, with the horizon of the
snapshot that read them), and the registrations that make writers notify. ``watch.py``
explains positions and tokens; ``Watch`` is one watcher's state."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from .. import names
from ..errors import WatchExpiredError
from ..records import Position
from .checks import check_id
from .columns import RESULT_COLUMNS, listed
from .rows import Row, history_entry, status, task_change
from .statement import Statement

_EVENT_COLUMNS: Final = ("tx", "seq", "step", *RESULT_COLUMNS)
_UNSEEN: Final = """e.tx >= %(horizon)s
    AND NOT EXISTS (SELECT FROM unnest(%(seen_tx)s::bigint[], %(seen_seq)s::bigint[]) AS s(tx, seq)
                    WHERE s.tx = e.tx AND e.seq <= s.seq)"""
# The snapshot's xmin (the next horizon) comes from the same statement, so from the snapshot the
# events were read with; a row of NULLs stands for "no new event".
_SNAPSHOT: Final = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon"


#: On Citus (docs/scaling.md) the events carry the transaction ids of the user's node, so the
#: horizon is that node's: read just before the catch-up by a call Citus runs there
#: (``ddl.HORIZON_FUNCTION``), and given to the catch-up in place of its own snapshot's. An
#: earlier horizon is a safe one: every transaction before it had ended when the catch-up took
#: its snapshot.
WATCH_HORIZON: Final = f"SELECT {names.HORIZON_FUNCTION}(%(user_id)s) AS horizon"
_GIVEN_HORIZON: Final = "SELECT %(node_horizon)s::bigint AS horizon"


#: What retention dropped of the event log (``statements/partitions.py``), read in the
#: catch-up's snapshot: every dropped event's transaction is below ``events_horizon``, and a
#: task begun before ``events_dropped_before`` may have lost its first events. On Citus the
#: event log is kept as long as the history (its partitions are not dropped there).
_DROPPED: Final = (f"(SELECT events_horizon FROM {names.PARTITIONING_TABLE}) AS events_horizon",
                   f"coalesce((SELECT t.{names.BUCKET} < p.events_dropped_before"
                   f" FROM tasks t, {names.PARTITIONING_TABLE} p"
                   " WHERE t.user_id = %(user_id)s AND t.task_id = %(task_id)s), false)"
                   " AS task_events_dropped")
_KEPT: Final = ("0::bigint AS events_horizon", "false AS task_events_dropped")


def _catch_up_task(horizon: str, dropped: tuple[str, str]) -> str:
    """A task's step events above the position, under ``horizon`` (a query of one row)."""
    return f"""
WITH snap AS ({horizon})
SELECT snap.horizon,
       (SELECT t.status FROM tasks t
        WHERE t.user_id = %(user_id)s AND t.task_id = %(task_id)s) AS task_status,
       {", ".join(dropped)},
       {listed(_EVENT_COLUMNS, 'e.')}, e.at AS updated_at
FROM snap LEFT JOIN LATERAL (
  SELECT * FROM {names.EVENTS_TABLE} e
  WHERE e.user_id = %(user_id)s AND e.task_id = %(task_id)s AND e.step IS NOT NULL
    AND e.bucket = (SELECT t.bucket FROM tasks t
                    WHERE t.user_id = %(user_id)s AND t.task_id = %(task_id)s)
    AND {_UNSEEN}
) e ON true
ORDER BY e.seq
"""


def _catch_up_user(horizon: str, dropped: tuple[str, str]) -> str:
    """A user's task events above the position, under ``horizon``."""
    return f"""
WITH snap AS ({horizon})
SELECT snap.horizon, NULL AS task_status, {dropped[0]}, NULL AS task_events_dropped,
       e.tx, e.seq, e.task_id, e.status, e.error_code, e.error_message, e.at AS updated_at
FROM snap LEFT JOIN LATERAL (
  SELECT * FROM {names.EVENTS_TABLE} e
  WHERE e.user_id = %(user_id)s AND e.step IS NULL AND {_UNSEEN}
) e ON true
ORDER BY e.seq
"""


#: Catch-ups under their own snapshot's horizon, and (Citus) under a given one.
WATCH_TASK: Final = _catch_up_task(_SNAPSHOT, _DROPPED)
WATCH_USER: Final = _catch_up_user(_SNAPSHOT, _DROPPED)
WATCH_TASK_GIVEN: Final = _catch_up_task(_GIVEN_HORIZON, _KEPT)
WATCH_USER_GIVEN: Final = _catch_up_user(_GIVEN_HORIZON, _KEPT)

#: How long a registration in ``aiecs_watched`` lasts unless its listener renews it (seconds).
REGISTRATION_TTL: Final = 300

REGISTER_WATCH: Final = (
    f"INSERT INTO {names.WATCHED_TABLE} (user_id, task_id, listener, until) "
    "VALUES (%(user_id)s, %(task_id)s, %(listener)s, now() + make_interval(secs => %(ttl)s)) "
    "ON CONFLICT (user_id, task_id, listener) DO UPDATE SET until = EXCLUDED.until"
)
UNREGISTER_WATCH: Final = (
    f"DELETE FROM {names.WATCHED_TABLE} "
    "WHERE user_id = %(user_id)s AND task_id = %(task_id)s AND listener = %(listener)s"
)
#: Run by a listener on its own connection, every heartbeat (parameters: listener, ttl).
RENEW_WATCHES: Final = (
    f"UPDATE {names.WATCHED_TABLE} SET until = now() + make_interval(secs => %(ttl)s) "
    "WHERE listener = %(listener)s"
)


class Watch:
    """One watcher's catch-up statement and the shaping of what it returns; ``position`` is
    where it stands (``records.Position``)."""

    def __init__(self, user_id: Any, task_id: Any | None, after: Any) -> None:
        self.user_id = check_id(user_id, "user_id")
        self.task_id = None if task_id is None else check_id(task_id, "task_id")
        self.position = Position.parse(after)
        #: The task ended (a terminal status seen in the last catch-up's snapshot).
        self.finished = False

    @property
    def key(self) -> str:
        """The watched task, or '' for all of the user's tasks (``aiecs_watched.task_id``)."""
        return self.task_id or ""

    def registration(self, listener: str, *, stop: bool = False) -> Statement:
        """Register (or, with ``stop``, unregister) this watch for ``listener``."""
        params = {"user_id": self.user_id, "task_id": self.key, "listener": listener,
                  "ttl": REGISTRATION_TTL}
        return Statement("watch", UNREGISTER_WATCH if stop else REGISTER_WATCH, params)

    def statement(self, node_horizon: int | None = None) -> Statement:
        """The catch-up; on Citus, under ``node_horizon`` (``WATCH_HORIZON``'s answer)."""
        params = {"user_id": self.user_id, **self.position.params()}
        given = node_horizon is not None
        if given:
            params["node_horizon"] = node_horizon
        if self.task_id is None:
            return Statement("watch_user_tasks", WATCH_USER_GIVEN if given else WATCH_USER,
                             params)
        return Statement("watch_task_history", WATCH_TASK_GIVEN if given else WATCH_TASK,
                         {**params, "task_id": self.task_id})

    def node_horizon(self) -> Statement:
        """On Citus: the statement that reads the horizon of the user's node."""
        return Statement("watch", WATCH_HORIZON, {"user_id": self.user_id})

    def steps(self, rows: Sequence[Row]) -> Iterator[dict[str, Any]]:
        """``load_task_history``-shaped entries, each with its resume ``token``."""
        return self._take(rows, history_entry)

    def tasks(self, rows: Sequence[Row]) -> Iterator[dict[str, Any]]:
        """Task status changes, each with its resume ``token``."""
        return self._take(rows, task_change)

    def _take(self, rows: Sequence[Row], entry: Callable[[Row], dict[str, Any]]
              ) -> Iterator[dict[str, Any]]:
        """A catch-up's rows (horizon, the task's status, tx, seq and the event's fields) as
        entries; when all are taken, the position moves to the snapshot's horizon. Raises
        ``WatchExpiredError`` when retention dropped events the position had not seen."""
        if rows and self.position.expired(
                int(rows[0].events_horizon),
                task_events_dropped=None if self.task_id is None
                else bool(rows[0].task_events_dropped)):
            raise WatchExpiredError(
                "after: the event log no longer holds events this watch had not seen (they "
                "were older than aiecs_partitioning.events_kept and retention dropped them); "
                "reload with load_task_history or list_tasks, then watch again without a "
                "token")
        for row in rows:
            task_status = row.task_status
            self.finished = task_status is not None and status(task_status).is_terminal
            tx = row.tx
            if tx is None:  # the row of NULLs: no new event
                continue
            self.position.advance(tx, row.seq)
            yield {**entry(row), "token": self.position.token()}
        if rows:
            self.position.settle(int(rows[0].horizon))
