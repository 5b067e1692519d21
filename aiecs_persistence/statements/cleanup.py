"""Retention: ``cleanup_old_tasks`` deletes whole tasks inactive past a cutoff, in bounded
batches, never touching activity acknowledged after it began.

A cleanup never deletes activity acknowledged after it began (after its first statement ran
on the server), whatever the age asked for (``--older-than 0h`` included). Timestamps cannot
say that alone: a save's timestamps are its transaction's start, so one that started before
the cleanup and committed after it looks old, and a save to a task touched less than a second
ago does not refresh the task's ``updated_at``. So the cleanup reads, once at its start, the
oldest transaction still running (the xmin horizon of a snapshot): a task whose row or any
step's row was written by a transaction at or after that horizon is kept, whatever its
timestamps. Each batch is one transaction of three statements: lock candidate tasks
(skipping those a writer holds), lock their steps (waiting for re-saves in flight), then
delete the candidates still inactive, with a fresh snapshot that sees every save committed
meanwhile. A save that reaches a task after it was locked waits, finds it gone and creates it
again. Rows written at or after the horizon are kept until a later cleanup, so a transaction
left open elsewhere in the cluster delays the removal of rows written after it began.

On Citus (docs/scaling.md) row locks across shards (FOR UPDATE) are refused, and transaction ids
are each node's own, so the horizon means nothing on a worker. A cluster's cleanup goes by the
tasks' activity alone: candidates are read without locks, and the DELETE checks again, under
its row locks, that each is still inactive. In exchange it never deletes a task active in the
last ``CLUSTER_MARGIN``, whatever the age asked: a save in flight when the cleanup began wrote
its task's activity (its transaction's start) within that margin.

``Retention`` is that choice (the dialect holds one: ``dialect.py``); ``Cleanup`` is one call's
statements under it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .checks import check_days_old
from .rows import Row
from .statement import Statement

#: The server's time and the xmin horizon (a 32-bit transaction id) when a cleanup begins.
CLEANUP_START: Final = (
    "SELECT now() AS now, "
    "pg_snapshot_xmin(pg_current_snapshot())::text::bigint %% 4294967296 AS horizon"
)

def written_since_horizon(alias: str) -> str:
    # Transaction ids are 32 bits and wrap around, so "at or after the horizon" is a distance
    # modulo 2^32: the row's, within the span from the horizon to the newest transaction this
    # statement's snapshot can see. (A frozen row from billions of transactions ago could
    # alias into that span, a few thousand ids wide: it is then kept until a later cleanup.)
    # The span is a scalar subquery: computed once per statement, not once per row.
    return (
        f"(({alias}.xmin::text::bigint - %(horizon)s + 4294967296) %% 4294967296 <= "
        "(SELECT (pg_snapshot_xmax(pg_current_snapshot())::text::bigint %% 4294967296 "
        "- %(horizon)s + 4294967296) %% 4294967296))"
    )


_INACTIVE: Final = f"""t.updated_at < %(cutoff)s
  AND NOT {written_since_horizon("t")}
  AND NOT EXISTS (
    SELECT FROM task_history h
    WHERE h.user_id = t.user_id AND h.task_id = t.task_id AND h.bucket = t.bucket
      AND {written_since_horizon("h")})"""

_LOCKED: Final = ("unnest(%(users)s::text[], %(tasks)s::text[], %(buckets)s::timestamptz[])"
                  " AS d(user_id, task_id, bucket)")

#: Batch, between pick and delete where locks are taken: wait for steps of the picked tasks
#: that a re-save holds.
_LOCK_STEPS: Final = f"""
SELECT FROM task_history h JOIN {_LOCKED} USING (user_id, task_id, bucket)
ORDER BY h.user_id, h.task_id, h.step
FOR UPDATE OF h
"""

#: What a cluster's cleanup always keeps (a save would have to run longer to be lost).
CLUSTER_MARGIN: Final = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Retention:
    """How a server tells an inactive task (``inactive``: a condition on ``tasks t``), whether
    a batch locks what it picks (``locks``), and the recent activity it always keeps
    (``margin``)."""

    inactive: str
    locks: bool
    margin: dt.timedelta = dt.timedelta(0)

    @property
    def count_sql(self) -> str:
        """Count what a cleanup would delete (``dry_run``)."""
        return f"SELECT count(*) AS tasks FROM tasks t WHERE {self.inactive}"

    @property
    def pick_sql(self) -> str:
        """Batch, statement 1: up to ``batch_size`` candidates, oldest first
        (``ix_tasks_updated_at``); with ``locks``, locked, and a task a writer holds skipped."""
        lock = "\nFOR UPDATE SKIP LOCKED" if self.locks else ""
        return (f"\nSELECT t.user_id, t.task_id, t.bucket FROM tasks t WHERE {self.inactive}\n"
                f"ORDER BY t.updated_at LIMIT %(batch_size)s{lock}\n")

    @property
    def delete_sql(self) -> str:
        """Batch, last statement: delete the candidates still inactive (steps go by ON DELETE
        CASCADE), and count them."""
        return f"""
WITH gone AS (
  DELETE FROM tasks t USING {_LOCKED}
  WHERE t.user_id = d.user_id AND t.task_id = d.task_id AND {self.inactive}
  RETURNING 1
)
SELECT count(*) AS deleted FROM gone
"""


#: A plain server's: by activity and by the horizon, candidates and their steps locked.
BY_HORIZON: Final = Retention(_INACTIVE, locks=True)
#: A Citus cluster's: by activity alone, with ``CLUSTER_MARGIN``.
BY_ACTIVITY: Final = Retention("t.updated_at < %(cutoff)s", locks=False, margin=CLUSTER_MARGIN)


def cutoff(now: dt.datetime, days_old: float) -> dt.datetime:
    """``now`` less ``days_old`` days; the first instant of year 1 when that is earlier (an age
    of a million days is valid: nothing is that old)."""
    earliest = dt.datetime.min.replace(tzinfo=dt.UTC)
    if days_old >= (now - earliest).total_seconds() / 86_400:
        return earliest
    return now - dt.timedelta(days=days_old)


def cleanup_start(days_old: Any) -> Statement:
    """The statement a cleanup begins with (``days_old`` validated first)."""
    check_days_old(days_old)
    return Statement("cleanup_start", CLEANUP_START)



@dataclass(frozen=True, slots=True)
class Cleanup:
    """One cleanup call's statements, from its start (``CLEANUP_START``'s row)."""

    params: Mapping[str, Any]
    retention: Retention

    @classmethod
    def starting(cls, days_old: Any, batch_size: int, start: Row,
                 retention: Retention) -> Cleanup:
        now = start.now
        limit = cutoff(now, check_days_old(days_old))
        if retention.margin:
            limit = min(limit, now - retention.margin)
        return cls({"cutoff": limit, "horizon": start.horizon, "batch_size": batch_size},
                   retention)

    @property
    def count(self) -> Statement:
        return Statement("cleanup_old_tasks", self.retention.count_sql, self.params)

    @property
    def pick(self) -> Statement:
        """A batch's first statement: its candidates (locked, where the retention locks)."""
        return Statement("cleanup_old_tasks", self.retention.pick_sql, self.params,
                         statements=3)

    @property
    def then(self) -> tuple[str, ...]:
        """The batch's next statements, with ``picked``'s parameters; the last counts
        (``deleted``)."""
        if self.retention.locks:
            return _LOCK_STEPS, self.retention.delete_sql
        return (self.retention.delete_sql,)

    def picked(self, keys: Sequence[Row]) -> dict[str, Any]:
        """Parameters of the batch's next statements for the picked keys."""
        return {**self.params, "users": [k.user_id for k in keys],
                "tasks": [k.task_id for k in keys], "buckets": [k.bucket for k in keys]}
