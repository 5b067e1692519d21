"""Names that Python and SQL share, written once: the statements (``statements/``), the
server-side DDL (``ddl.py``) and the listeners (``watch.py``) interpolate them from here.

A frozen migration revision keeps its own copy of whatever it created (revisions never import
the package's DDL); a rename here therefore needs a revision of its own.
"""

from __future__ import annotations

from typing import Final

#: The prefix of the listeners' channels: each listener has one of its own, ``CHANNEL`` + '_' +
#: its id in ``WATCHED_TABLE`` (``channel``), and hears only of the tasks it registered there.
#: So no listener learns of other users' tasks (a scoped role's registrations are its users').
CHANNEL: Final = "aiecs_events"
#: Between user_id and task_id in a notification's payload (the ASCII unit separator).
SEPARATOR: Final = "\x1f"
#: ``SEPARATOR`` as a SQL expression.
SEPARATOR_SQL: Final = f"chr({ord(SEPARATOR)})"

#: Set for its transaction by every statement of ours that logs its own events (the saves, the
#: bulk path): the event triggers then skip, decided by their WHEN clause.
OWN_EVENTS_SETTING: Final = "aiecs.bulk_events"

#: Who watches which task (or, with task_id '', which user): writers notify only for these.
WATCHED_TABLE: Final = "aiecs_watched"
#: The bulk path's per-transaction staging table (a merge of re-saved steps).
STAGING_TABLE: Final = "aiecs_staging"
#: The log of changes that watchers follow.
EVENTS_TABLE: Final = "task_events"

#: The SQLSTATE the state machine's triggers raise for an illegal move (``InvalidTransitionError``).
INVALID_TRANSITION_SQLSTATE: Final = "AE001"
#: The SQLSTATE raised for an UPDATE of a key or a creation time (``ValidationError``).
IMMUTABLE_SQLSTATE: Final = "AE002"

#: The column every per-task table is range-partitioned by: the task's creation time, truncated to
#: the partition width (``ddl.py``, partitions), carried by its steps and its events.
BUCKET: Final = "bucket"
#: The one-row table holding the partition width and how far ahead partitions are created.
PARTITIONING_TABLE: Final = "aiecs_partitioning"
#: Creates the partitions due (``ddl.PARTITIONS_FUNCTION``): those from now on, or the one of a
#: given bucket.
PARTITIONS_FUNCTION: Final = "aiecs_create_partitions"
#: The oldest partition a window of steps since a time can reach (``ddl.WINDOW_START_FUNCTION``).
WINDOW_START_FUNCTION: Final = "aiecs_window_start"
#: The bucket of a task (``ddl.TASK_BUCKET_FUNCTION``): a task's load prunes by it.
TASK_BUCKET_FUNCTION: Final = "aiecs_task_bucket"
#: The figures of each closed period, that reports add up instead of reading its partition
#: (``ddl.SUMMARIZE_FUNCTION``), and the function that makes them.
SUMMARIES_TABLE: Final = "aiecs_period_summaries"
SUMMARIZE_FUNCTION: Final = "aiecs_summarize_period"
#: The tables partitioned by ``BUCKET``.
PARTITIONED_TABLES: Final = ("task_history", "task_events")
#: The steps' foreign key to their task (named by the schema's naming convention), and the
#: trigger that deletes a deleted task's events: the two things a task's deletion sets off.
STEPS_FOREIGN_KEY: Final = "fk_task_history_tasks"
TASKS_DELETED_TRIGGER: Final = "tr_tasks_deleted"

#: The saves of one user as one call, run on the user's node on Citus.
SAVE_STEPS_FUNCTION: Final = "aiecs_save_steps"
#: The xmin horizon of the node that holds a user's rows (watchers on Citus).
HORIZON_FUNCTION: Final = "aiecs_xmin_horizon"


def set_own_events() -> str:
    """The SQL expression that turns the event triggers off for the current transaction."""
    return f"set_config('{OWN_EVENTS_SETTING}', 'on', true)"


def channel(listener: str) -> str:
    """The channel of the listener registered as ``listener`` in ``WATCHED_TABLE``."""
    return f"{CHANNEL}_{listener}"


def notify(user: str, task: str, listener: str = "w.listener") -> str:
    """The SQL call that wakes a listener (``listener``: the SQL expression of its id, by
    default that of a row ``w`` of ``WATCHED_TABLE``) for the task ``user``/``task``."""
    return f"pg_notify('{CHANNEL}_' || {listener}, {user} || {SEPARATOR_SQL} || {task})"


def payload(user_id: str, task_id: str) -> str:
    """A notification's payload, and the key watchers wait on (``task_id`` '' for a user)."""
    return f"{user_id}{SEPARATOR}{task_id}"

#: Which roles see and write which users' rows (``scopes.py``), and the group role every scoped
#: role is made a member of: the restrictive policies name it, so roles outside it pay nothing.
SCOPES_TABLE: Final = "aiecs_scopes"
SCOPED_ROLE: Final = "aiecs_scoped"
#: The ``LIKE`` patterns of the current role's scope (``ddl.SCOPE_PATTERNS_FUNCTION``).
SCOPE_PATTERNS_FUNCTION: Final = "aiecs_scope_patterns"
#: The tables under row-level security: those holding users' rows, the summaries (figures of
#: every user's steps) and the scopes themselves.
ROW_SECURITY_TABLES: Final = ("tasks", "task_history", EVENTS_TABLE, WATCHED_TABLE,
                              SUMMARIES_TABLE, SCOPES_TABLE)
#: The policy every role gets on those tables (every row); ``scopes.py`` adds the restrictive
#: ones of the scoped roles.
OPEN_POLICY: Final = "aiecs_rows"
