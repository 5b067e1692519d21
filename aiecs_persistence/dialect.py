"""What differs between a plain PostgreSQL server and a Citus cluster, decided once, at connect
(``ManagerBase.prepare_schema``), so that no method of the managers asks which one it is on.

On Citus (docs/scaling.md) a statement must name one user to run on one node, row locks across
shards are refused, transaction ids are each node's own, and notifications raised on a worker
never reach a client of the coordinator. So there:

* a save is one call of ``aiecs_save_steps`` (``statements.saves.SAVE_STEPS_CALL``), which the
  node that owns the user runs whole, and a group-commit batch holds one user's saves;
* the step-only save (a task touched less than a second ago) is not used: the call probes the
  task's freshness itself;
* the bulk path upserts tasks without the freshness probe, and the triggers log its events;
* retention goes by activity alone, with a margin (``statements.cleanup.BY_ACTIVITY``); it
  drops a period's partitions with a plain detach (Citus cannot detach one concurrently;
  ``statements.partitions.BY_ACTIVITY``), and the event log has no retention of its own;
* the report aggregates per figure, since ``GROUPING SETS`` is refused;
* a task's load reads its bucket by a subquery: a function reading ``tasks`` cannot run in a
  worker's statement;
* a watcher's catch-up runs under the horizon of the user's node, and watchers poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from .statements import Statement, bulk, cleanup, partitions, reads, report, saves, watching

__all__ = ["CITUS", "PLAIN", "Dialect", "dialect_for"]


class Dialect:
    """A plain PostgreSQL server (this class) or a Citus cluster (``Citus``)."""

    name: ClassVar[str] = "postgresql"
    #: A group-commit batch holds the saves of one user only.
    one_user_batches: ClassVar[bool] = False
    #: A save to a task touched less than a second ago may write the step alone.
    step_only_saves: ClassVar[bool] = True
    #: The bulk path logs its own events and wakes watchers (else the triggers log them).
    own_events: ClassVar[bool] = True
    #: Watchers can be woken by LISTEN/NOTIFY (else they poll).
    notifications: ClassVar[bool] = True
    #: How a cleanup tells an inactive task and holds it.
    retention: ClassVar[cleanup.Retention] = cleanup.BY_HORIZON
    #: The report's statement.
    report_form: ClassVar[str] = report.REPORT
    #: A task's load.
    load_form: ClassVar[str] = reads.LOAD_HISTORY
    #: The bulk path's task upsert.
    bulk_tasks: ClassVar[str] = bulk.BULK_TASKS
    #: How retention drops whole partitions before going row by row.
    drops: ClassVar[partitions.Drops] = partitions.BY_HORIZON
    #: The event log has its own, shorter retention (on Citus, its partitions go with the
    #: history's: the positions of watchers there are each node's transaction ids).
    expires_events: ClassVar[bool] = True

    def batch(self, lone_saves: Sequence[Statement], lock_timeout_ms: int | None) -> Statement:
        """The statement that writes ``save_step`` statements of distinct keys together."""
        return saves.save_steps(lone_saves)

    def lone(self, save: Statement, lock_timeout_ms: int | None) -> Statement:
        """The statement that writes one ``save_step`` statement."""
        return save

    def horizon(self, watch: watching.Watch) -> Statement | None:
        """The statement whose answer a catch-up runs under (``Watch.statement``), or None
        when the catch-up's own snapshot gives it."""
        return None

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


class Citus(Dialect):
    """A Citus coordinator (see the module's docstring)."""

    name = "citus"
    one_user_batches = True
    step_only_saves = False
    own_events = False
    notifications = False
    retention = cleanup.BY_ACTIVITY
    report_form = report.REPORT_CLUSTER
    load_form = reads.LOAD_HISTORY_CLUSTER
    bulk_tasks = bulk.BULK_TASKS_CLUSTER
    drops = partitions.BY_ACTIVITY
    expires_events = False

    def batch(self, lone_saves: Sequence[Statement], lock_timeout_ms: int | None) -> Statement:
        return saves.save_steps_call(lone_saves, lock_timeout_ms)

    def lone(self, save: Statement, lock_timeout_ms: int | None) -> Statement:
        return saves.save_steps_call([save], lock_timeout_ms)

    def horizon(self, watch: watching.Watch) -> Statement | None:
        return watch.node_horizon()


PLAIN: Dialect = Dialect()
CITUS: Dialect = Citus()


def dialect_for(on_citus: bool) -> Dialect:
    """The dialect of a database (``migrate.SchemaStatus.on_citus``)."""
    return CITUS if on_citus else PLAIN
