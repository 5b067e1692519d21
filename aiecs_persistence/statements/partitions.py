"""Partitions of the history (``ddl.py``, partitions): creating those due, and the one a save
found missing; retention by dropping whole partitions; listing them for operators.

Retention drops a period's partitions (its steps and its events) when every task of the period
has been inactive since the cutoff: they are detached concurrently (writers go on), the period's
tasks are checked again (a save that reached one meanwhile keeps the period: its partitions go
back), its tasks' rows are deleted (their steps and events are no longer there to cascade to:
with the triggers off where this role may and nothing else fires, ``TRIGGERS_OFF_ALLOWED``)
while the detached tables are dropped on a second connection, their files returned to the
operating system at once. The
period is first recorded as retired, so that no partition is created for it again: a save that
reaches one of its tasks in that moment waits for the task to be deleted and creates it anew,
as a save that reaches a task the row-by-row cleanup deletes does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .. import names
from ..ddl import BUCKET_ORIGIN
from .cleanup import written_since_horizon
from .rows import Row
from .statement import Statement

if TYPE_CHECKING:  # psycopg loads on connect, not on import (docs/performance.md)
    from psycopg import sql

#: The partitions due: the current period's and those kept ready ahead.
CREATE_DUE: Final = f"SELECT {names.PARTITIONS_FUNCTION}() AS created"
#: The partition of one bucket, as PostgreSQL printed it in a failed save's error (-1: the
#: bucket's period was retired by retention).
CREATE_FOR: Final = f"SELECT {names.PARTITIONS_FUNCTION}(%(at)s::timestamptz) AS created"

def _active(lower: str, upper: str, *, horizon: bool = True) -> str:
    """A query of the tasks of the period [``lower``, ``upper``) (SQL expressions; a NULL lower
    is unbounded) active since the cutoff, or (``horizon``) written since the cleanup began."""
    written = f" OR {written_since_horizon('t')}" if horizon else ""
    return f"""SELECT 1 FROM tasks t
  WHERE t.{names.BUCKET} >= coalesce({lower}::timestamptz, '-infinity')
    AND t.{names.BUCKET} < {upper}
    AND (t.updated_at >= %(cutoff)s{written})"""

#: The periods whose partitions retention may drop, oldest first: ended before the cutoff, and
#: no task of theirs active since. By activity alone, from the index that leads with the bucket
#: and holds ``updated_at``: the horizon asks each task's row (a period of 100,000 tasks: 53 ms),
#: and is asked once, by ``STILL_INACTIVE`` after the detach, which keeps the period if it finds
#: a task written since the cleanup began.
DROPPABLE: Final = f"""
SELECT nullif(b.lower, '-infinity') AS lower, b.upper,
       array_agg(b.parent ORDER BY b.parent) AS parents,
       array_agg(b.partition ORDER BY b.parent) AS partitions
FROM aiecs_partition_bounds() b
WHERE b.upper <= %(cutoff)s
GROUP BY b.lower, b.upper
HAVING NOT EXISTS ({_active("b.lower", "b.upper", horizon=False)})
ORDER BY b.lower
"""

#: After the detach: whether the period is still inactive, by activity and by the horizon.
STILL_INACTIVE: Final = f"SELECT NOT EXISTS ({_active('%(lower)s', '%(upper)s')}) AS inactive"

#: ``DROPPABLE`` and ``STILL_INACTIVE`` on Citus: by activity alone. Citus refuses a subquery
#: in ``HAVING`` that refers to the outer query: the buckets of the tasks active since the
#: cutoff are read first (a distributed subplan), then matched with the periods.
_LIVE: Final = f"""WITH live AS MATERIALIZED (
  SELECT DISTINCT t.{names.BUCKET} FROM tasks t WHERE t.updated_at >= %(cutoff)s
)"""
#: No bucket of ``live`` lies in the period of the bounds ``b``.
_NOT_LIVE: Final = (f"NOT EXISTS (SELECT FROM live l WHERE l.{names.BUCKET} >= b.lower "
                    f"AND l.{names.BUCKET} < b.upper)")
DROPPABLE_CLUSTER: Final = f"""
{_LIVE}
SELECT nullif(b.lower, '-infinity') AS lower, b.upper,
       array_agg(b.parent ORDER BY b.parent) AS parents,
       array_agg(b.partition ORDER BY b.parent) AS partitions
FROM aiecs_partition_bounds() b
WHERE b.upper <= %(cutoff)s AND {_NOT_LIVE}
GROUP BY b.lower, b.upper
ORDER BY b.lower
"""
STILL_INACTIVE_CLUSTER: Final = (
    f"SELECT NOT EXISTS ({_active('%(lower)s', '%(upper)s', horizon=False)}) AS inactive")

#: No partition is created again for a retired period (``names.PARTITIONS_FUNCTION``).
RETIRE: Final = (f"UPDATE {names.PARTITIONING_TABLE} SET retired_before = "
                 "greatest(retired_before, %(upper)s)")

# -- the event log's own retention ---------------------------------------------------------
# The events (what watchers resume from) go sooner than the history: a period's event partition
# is dropped once it ended ``events_kept`` ago and its tasks have all been inactive since. First
# ``events_horizon`` is raised past every transaction that wrote one of its events (a watcher
# whose position is below it is told to reload, ``watch.py``); then the partition is detached
# concurrently and read again: an event written since (its transaction at or above that bound),
# or a task active again, keeps it (attached back), so no watcher can miss an event unwarned.

#: The event log's cutoff (NULL: events are kept as long as the history).
EVENTS_CUTOFF: Final = (f"SELECT now() - events_kept AS cutoff FROM {names.PARTITIONING_TABLE}")

#: The event partitions past their retention whose tasks were all inactive since, oldest first.
EXPIRED_EVENTS: Final = f"""
SELECT nullif(b.lower, '-infinity') AS lower, b.upper,
       ARRAY[b.parent] AS parents, ARRAY[b.partition] AS partitions
FROM aiecs_partition_bounds() b
WHERE b.parent = '{names.EVENTS_TABLE}' AND b.upper <= %(cutoff)s
  AND NOT EXISTS ({_active("b.lower", "b.upper")})
ORDER BY b.lower
"""


def events_top(partition: str) -> sql.Composed:
    """Above every transaction that wrote an event of ``partition`` (``top``)."""
    from psycopg import sql

    return sql.SQL("SELECT coalesce(max(tx) + 1, 0) AS top FROM {}").format(
        sql.Identifier(partition))


#: Watchers below ``top`` are told to reload from now on, and those of a task from its first
#: step where the task began before ``upper`` (its first events may be gone).
EXPIRE_EVENTS: Final = (f"UPDATE {names.PARTITIONING_TABLE} SET "
                        "events_horizon = greatest(events_horizon, %(top)s), "
                        "events_dropped_before = greatest(events_dropped_before, %(upper)s)")


#: A retired period's tasks, a batch at a time (their steps and events are gone already):
#: found by the range of their bucket, deleted by row address. A row updated meanwhile is
#: skipped (its address changed) and found again by the next batch.
DELETE_TASKS: Final = f"""
WITH gone AS (
  DELETE FROM tasks
  WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM tasks
    WHERE {names.BUCKET} >= coalesce(%(lower)s::timestamptz, '-infinity')
      AND {names.BUCKET} < %(upper)s
    LIMIT %(batch_size)s))
  RETURNING 1
)
SELECT count(*) AS deleted FROM gone
"""

#: ``DELETE_TASKS`` on Citus: by key (Citus plans the batch's keys first, then the delete on
#: each shard).
DELETE_TASKS_CLUSTER: Final = f"""
WITH gone AS (
  DELETE FROM tasks t USING (
    SELECT user_id, task_id FROM tasks
    WHERE {names.BUCKET} >= coalesce(%(lower)s::timestamptz, '-infinity')
      AND {names.BUCKET} < %(upper)s
    LIMIT %(batch_size)s) d
  WHERE t.user_id = d.user_id AND t.task_id = d.task_id
  RETURNING 1
)
SELECT count(*) AS deleted FROM gone
"""

#: For the transaction of a ``DELETE_TASKS`` batch. Each deleted task fires the foreign key's
#: cascade into ``task_history``, a statement PostgreSQL prepares once per session: as a
#: generic plan it locks and starts every partition for every task; planned for each task, it
#: prunes to the one partition of the task's bucket, or to none once that partition is
#: detached (measured: 12 µs a task against 25, with 35 partitions).
PLAN_EACH_TIME: Final = "SET LOCAL plan_cache_mode = force_custom_plan"

#: Whether a ``DELETE_TASKS`` batch may run with the triggers off: when this role may set
#: ``session_replication_role`` (a superuser, or granted ``SET`` on it), and a deletion of a task
#: sets off nothing but what the period's drop has made moot — the steps' cascade (the steps
#: were in the detached partitions, and no partition of a retired period is made again, so no
#: step of those tasks can be anywhere else) and the deletion of their events (in the detached
#: partitions too). A trigger of anyone else's on deleting a task (an audit trigger, another
#: table's foreign key) keeps the triggers on.
TRIGGERS_OFF_ALLOWED: Final = f"""
SELECT has_parameter_privilege('session_replication_role', 'SET') AND NOT EXISTS (
  SELECT FROM pg_trigger tg
  WHERE tg.tgrelid = 'tasks'::regclass AND tg.tgtype & 8 <> 0  -- fires on DELETE
    AND tg.tgenabled <> 'D' AND tg.tgname <> '{names.TASKS_DELETED_TRIGGER}'
    AND tg.tgconstraint IS DISTINCT FROM (
      SELECT c.oid FROM pg_constraint c
      WHERE c.conrelid = 'task_history'::regclass AND c.conname = '{names.STEPS_FOREIGN_KEY}'))
  AS allowed
"""
#: A ``DELETE_TASKS`` batch without triggers: they were 94% of its time, the cascade's statement
#: planned and run for each task (PostgreSQL 15, 10,000 tasks: 72 ms, 4.4 ms without). Each
#: batch first takes the lock that ``CREATE TRIGGER`` (and a new foreign key to ``tasks``) waits
#: for, then turns the triggers off for its transaction where ``TRIGGERS_OFF_ALLOWED`` says so:
#: what it read then holds until the batch commits. ``off``: whether it did.
LOCK_TASKS: Final = "LOCK TABLE tasks IN ROW EXCLUSIVE MODE"
TRIGGERS_OFF: Final = (
    "SELECT CASE WHEN a.allowed "
    "THEN set_config('session_replication_role', 'replica', true) = 'replica' "
    f"ELSE false END AS off FROM ({TRIGGERS_OFF_ALLOWED}) a")


#: How many times ``cleanup_batch_size`` a batch deletes with the triggers off: each task costs
#: a fifteenth of its time with them, so the batch (and its row locks) lasts no longer, and the
#: period takes a tenth of the transactions (100,000 tasks: 0.22 s against 0.29 to 0.33 s).
TRIGGERS_OFF_BATCH: Final = 10


def delete_tasks_batch(batch_size: int, triggers_off: bool) -> int:
    """How many tasks a ``DELETE_TASKS`` batch deletes (``batch_size``: the manager's
    ``cleanup_batch_size``)."""
    return batch_size * TRIGGERS_OFF_BATCH if triggers_off else batch_size


#: Bytes of a detached partition and its indexes (what dropping it frees).
SIZE: Final = "SELECT pg_total_relation_size(%(table)s::regclass) AS bytes"
SIZE_CLUSTER: Final = "SELECT citus_total_relation_size(%(table)s::regclass) AS bytes"


def create_due() -> Statement:
    return Statement("create_partitions", CREATE_DUE)


def create_for(at: str) -> Statement:
    """The partition of the bucket ``at`` (a save found none: ``sqlstates.missing_partition``)."""
    return Statement("create_partitions", CREATE_FOR, {"at": at})


def detach(parent: str, partition: str, *, concurrently: bool = True) -> sql.Composed:
    """Detach ``partition`` from ``parent``: ``concurrently``, without stopping writers
    (outside a transaction); else under the parent's lock, for a moment."""
    from psycopg import sql

    return sql.SQL("ALTER TABLE {} DETACH PARTITION {}" + (
        " CONCURRENTLY" if concurrently else "")).format(
        sql.Identifier(parent), sql.Identifier(partition))


def attach(parent: str, partition: str, lower: Any, upper: Any) -> sql.Composed:
    """Put a detached partition back (its range is checked by the constraint the detach left)."""
    from psycopg import sql

    return sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(parent), sql.Identifier(partition), _bound(lower, "MINVALUE"),
        _bound(upper, "MAXVALUE"))


def _bound(value: Any, infinite: str) -> sql.Composable:
    from psycopg import sql

    return sql.SQL(infinite) if value is None else sql.Literal(value)


def unlink(partition: str) -> sql.Composed:
    """A detached step partition's foreign key, dropped: deleting its tasks must not cascade
    into rows about to be dropped whole."""
    from psycopg import sql

    return sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
        sql.Identifier(partition), sql.Identifier(names.STEPS_FOREIGN_KEY))


def drop(partition: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition))


def events_cutoff() -> Statement:
    return Statement("cleanup_old_tasks (events)", EVENTS_CUTOFF)


def expired_events(params: Mapping[str, Any], cutoff: Any) -> Statement:
    """The event partitions past the event log's ``cutoff`` (``Cleanup.params``)."""
    return Statement("cleanup_old_tasks (events)", EXPIRED_EVENTS, {**params, "cutoff": cutoff})


# -- the listing for operators (``aiecs-db partitions``) --------------------------------------

#: Each partition: its range (NULL for an unbounded end), estimated rows, bytes with its
#: indexes, and whether retention at ``cutoff`` may drop it (its period ended before, and no
#: task of the period was active since).
LIST: Final = f"""
SELECT b.parent, b.partition, nullif(b.lower, '-infinity') AS lower,
       nullif(b.upper, 'infinity') AS upper,
       greatest(c.reltuples, 0)::bigint AS rows, pg_total_relation_size(c.oid) AS bytes,
       b.upper <= %(cutoff)s
         AND NOT EXISTS ({_active("b.lower", "b.upper", horizon=False)}) AS droppable
FROM aiecs_partition_bounds() b
JOIN pg_class c ON c.relname = b.partition AND c.relnamespace = current_schema()::regnamespace
ORDER BY b.lower, b.parent
"""

#: ``LIST`` on Citus: the rows and bytes of a partition are its shards' (the coordinator's
#: table holds none), and the live buckets are read first (Citus plans no join of a
#: distributed table with the partitions' bounds).
LIST_CLUSTER: Final = f"""
{_LIVE}
SELECT b.parent, b.partition, nullif(b.lower, '-infinity') AS lower,
       nullif(b.upper, 'infinity') AS upper,
       (SELECT coalesce(sum(greatest(r.result::real, 0)), 0)::bigint
        FROM run_command_on_shards(b.partition::regclass,
               $c$SELECT reltuples FROM pg_class WHERE oid = '%%s'::regclass$c$) r
        WHERE r.success) AS rows,
       citus_total_relation_size(b.partition::regclass) AS bytes,
       b.upper <= %(cutoff)s AND {_NOT_LIVE} AS droppable
FROM aiecs_partition_bounds() b
ORDER BY b.lower, b.parent
"""


@dataclass(frozen=True, slots=True)
class Drops:
    """How retention drops a period's partitions on a server (the dialect holds one,
    ``dialect.py``): the statements that find the periods, check one again after the detach,
    delete its tasks and measure what it frees, and whether the detach is concurrent; and the
    listing of the partitions with what retention may drop (``aiecs-db partitions``)."""

    droppable_sql: str
    still_inactive_sql: str
    delete_tasks_sql: str
    size_sql: str
    concurrently: bool
    listing_sql: str
    #: Whether a period's tasks may go with the triggers off (``TRIGGERS_OFF``).
    triggers_off: bool = False

    def droppable(self, params: Mapping[str, Any]) -> Statement:
        """The periods a cleanup may drop (``Cleanup.params``)."""
        return Statement("cleanup_old_tasks (partitions)", self.droppable_sql, params)

    def detach(self, parent: str, partition: str) -> sql.Composed:
        return detach(parent, partition, concurrently=self.concurrently)


#: A plain server's: by activity and by the cleanup's horizon, detached concurrently.
BY_HORIZON: Final = Drops(DROPPABLE, STILL_INACTIVE, DELETE_TASKS, SIZE, concurrently=True,
                          listing_sql=LIST, triggers_off=True)
#: A Citus cluster's (docs/scaling.md): by activity alone (transaction ids are each node's own;
#: the cleanup's cutoff keeps its margin); Citus has no ``DETACH … CONCURRENTLY``, so the
#: detach takes the parent's lock for a moment (waiting at most ``lock_timeout``); the tasks go
#: by key, a batch at a time (a row address means nothing across shards), with the triggers on
#: (the workers run them); sizes are the shards'.
BY_ACTIVITY: Final = Drops(DROPPABLE_CLUSTER, STILL_INACTIVE_CLUSTER, DELETE_TASKS_CLUSTER,
                           SIZE_CLUSTER, concurrently=False, listing_sql=LIST_CLUSTER)


def period(job_params: Mapping[str, Any], found: Row) -> dict[str, Any]:
    """The parameters of a period's statements."""
    return {**job_params, "lower": found.lower, "upper": found.upper}


# -- for operators (``aiecs-db maintain``, ``check``) ----------------------------------------

#: The periods from now to ``ahead`` periods on that some table has no partition for.
MISSING: Final = f"""
SELECT count(*) AS missing
FROM {names.PARTITIONING_TABLE} s, generate_series(0, s.ahead) AS i,
     unnest(ARRAY[{", ".join(f"'{t}'" for t in names.PARTITIONED_TABLES)}]) AS p(parent)
WHERE NOT EXISTS (
  SELECT FROM aiecs_partition_bounds() b
  WHERE b.parent = p.parent
    AND b.lower <= date_bin(s.width, now(), '{BUCKET_ORIGIN}') + s.width * i
    AND b.upper > date_bin(s.width, now(), '{BUCKET_ORIGIN}') + s.width * i)
"""
