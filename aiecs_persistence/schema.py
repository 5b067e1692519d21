"""The database schema: one ``MetaData``, native enums, tables and their CHECK constraints
(the functions, triggers and views beside them are in ``ddl.py``).

This module is the *model* of the schema. The migrations in ``migrations/versions`` are frozen
snapshots that build the same thing; the drift tests (``tests/migrations``) compare the two
through PostgreSQL's catalogs, so neither can change without the other.

Everything a rule of the contract needs is enforced inside PostgreSQL, for every writer:

* the consistency rules of §3 are CHECK constraints named ``ck_<table>_<rule>``;
* status changes follow the state machine of §2, checked by ``BEFORE`` triggers that raise
  SQLSTATE ``AE001`` with a message naming both statuses;
* the triggers also keep ``updated_at``, ``started_at`` and ``finished_at`` truthful.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, ENUM, INTERVAL, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from . import names
from .ddl import (
    DDL_STATEMENTS,
    DEFAULT_AHEAD,
    DEFAULT_EVENTS_KEPT,
    DROP_STATEMENTS,
    SEED_ERROR_CODES,
    SEED_PARTITIONS,
    bucket_sql,
)
from .domain import ID_MAX_LENGTH, ErrorCode, TaskStatus

__all__ = [
    "ID_MAX_LENGTH",
    "Base",
    "ErrorCodeRow",
    "Partitioning",
    "Task",
    "TaskEvent",
    "TaskHistory",
    "Watched",
    "error_code_enum",
    "metadata",
    "task_status_enum",
]

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: Final = MetaData(naming_convention=NAMING_CONVENTION)

# Native enums whose labels are the Python enums' values; through the ORM a column reads back
# as the Python member (``TaskStatus.RUNNING``), not as its string.
task_status_enum: Final = ENUM(
    TaskStatus, name="task_status", metadata=metadata, create_type=True,
    values_callable=lambda members: [m.value for m in members],
)
error_code_enum: Final = ENUM(
    ErrorCode, name="error_code", metadata=metadata, create_type=True,
    values_callable=lambda members: [m.value for m in members],
)

_UNSUCCESSFUL_SQL: Final = "('failed', 'timed_out', 'cancelled')"
_TERMINAL_SQL: Final = "('completed', 'failed', 'timed_out', 'cancelled')"
_NOW: Final = text("now()")
_TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = metadata


def _id_checks(*columns: str) -> list[CheckConstraint]:
    return [
        CheckConstraint(
            f"char_length({c}) BETWEEN 1 AND {ID_MAX_LENGTH}", name=f"{c}_length"
        )
        for c in columns
    ]


def _error_checks() -> list[CheckConstraint]:
    return [
        CheckConstraint(
            "(error_code IS NOT NULL) = (error_message IS NOT NULL AND error_message <> '')",
            name="error_pair",
        ),
        CheckConstraint(
            f"(error_code IS NOT NULL) = (status IN {_UNSUCCESSFUL_SQL})",
            name="error_iff_unsuccessful",
        ),
    ]


class _TaskKey:
    """The key every per-task table starts with (``user_id`` is also the distribution column
    on Citus, see docs/scaling.md)."""

    user_id: Mapped[str] = mapped_column(Text, sort_order=-2)
    task_id: Mapped[str] = mapped_column(Text, sort_order=-2)


class _Bucket:
    """The partition key of a task's rows (``ddl.py``, partitions): its creation time truncated
    to the partition width, set once on the task by this default and copied by its steps and
    events. (A step written by hand without it gets the current bucket: right for a task
    created in the same period, refused by the foreign key otherwise.)"""

    bucket: Mapped[dt.datetime] = mapped_column(
        _TZ, server_default=text(bucket_sql()), sort_order=9)


_PARTITIONED: Final = {"postgresql_partition_by": f"RANGE ({names.BUCKET})"}


class _Outcome:
    """Status, error and activity times: shared by a task and each of its steps. (The
    ``sort_order`` keeps each table's column order as the migrations create it.)"""

    status: Mapped[TaskStatus] = mapped_column(
        task_status_enum, server_default=text("'pending'::task_status"), sort_order=1
    )
    error_code: Mapped[ErrorCode | None] = mapped_column(error_code_enum, sort_order=1)
    error_message: Mapped[str | None] = mapped_column(Text, sort_order=1)
    created_at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW, sort_order=2)
    updated_at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW, sort_order=2)


class ErrorCodeRow(Base):
    """The ``error_codes`` catalog: one row per ``ErrorCode``, for reports to join."""

    __tablename__ = "error_codes"
    __table_args__ = (
        CheckConstraint(
            "category IN ('client', 'timeout', 'execution', 'system')", name="category"
        ),
    )

    code: Mapped[ErrorCode] = mapped_column(error_code_enum, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    category: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)


class Task(_TaskKey, _Outcome, _Bucket, Base):
    """One row per (user_id, task_id): the task's lifecycle. Not partitioned: the lookup of a
    task by its key, and of its partition by its ``bucket``."""

    __tablename__ = "tasks"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "task_id"),
        # What the steps' foreign key names (a partitioned table's keys include its bucket);
        # led by the bucket, with the activity, for retention: a period's tasks still active.
        UniqueConstraint(names.BUCKET, "user_id", "task_id",
                         postgresql_include=["updated_at"]),
        *_id_checks("user_id", "task_id"),
        *_error_checks(),
        CheckConstraint(
            f"(finished_at IS NOT NULL) = (status IN {_TERMINAL_SQL})", name="finished_at"
        ),
        # Listings of a user's tasks, newest first, with a keyset on (updated_at, task_id).
        Index("ix_tasks_user_id_updated_at", "user_id", text("updated_at DESC"),
              text("task_id DESC")),
        # Retention (cleanup_old_tasks) and time-range reports across users.
        Index("ix_tasks_updated_at", "updated_at"),
    )

    started_at: Mapped[dt.datetime | None] = mapped_column(_TZ, sort_order=3)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TZ, sort_order=3)


class TaskHistory(_TaskKey, _Outcome, _Bucket, Base):
    """One row per step of a task (``step`` is its 0-based position), in its task's partition.
    Unique on (user_id, task_id, step): the key also holds the bucket, which the foreign key
    makes the task's own."""

    __tablename__ = "task_history"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "task_id", "step", names.BUCKET),
        # The primary key's prefix (user_id, task_id) is the index behind this foreign key.
        ForeignKeyConstraint(
            ["user_id", "task_id", names.BUCKET],
            ["tasks.user_id", "tasks.task_id", f"tasks.{names.BUCKET}"], ondelete="CASCADE"
        ),
        CheckConstraint("step >= 0", name="step_index"),
        # The whitespace of domain.BLANK_CHARS (PostgreSQL spells \v as \x0B).
        CheckConstraint(r"btrim(step_name, E' \t\n\r\f\x0B') <> ''", name="step_name"),
        CheckConstraint("completed = (status = 'completed')", name="completed_flag"),
        *_error_checks(),
        # Step queries of one user, newest first, keyset on (updated_at, task_id, step).
        Index("ix_task_history_user_id_updated_at", "user_id", text("updated_at DESC"),
              text("task_id DESC"), text("step DESC")),
        # Failures by error code over time (reports, the failures_by_day view).
        Index("ix_task_history_error_code_created_at", "error_code", "created_at",
              postgresql_where=text("error_code IS NOT NULL")),
        # Reports over a time window: steps are appended in time order, so a BRIN index (one
        # summary per 32 pages, next to nothing per insert) finds the window's blocks;
        # autovacuum summarizes each range as it fills (an unsummarized one is always read).
        Index("ix_task_history_created_at", "created_at", postgresql_using="brin",
              postgresql_with={"pages_per_range": 32, "autosummarize": "on"}),
        # list_tasks(step_name=…): a user's tasks with a step of that name. Without task_id,
        # a user's steps of one name share a key, stored once with the list of their rows
        # (about 10 bytes a step, where (user_id, step_name, task_id) took 56).
        Index("ix_task_history_user_id_step_name", "user_id", "step_name"),
        _PARTITIONED,
    )

    step: Mapped[int] = mapped_column(Integer)
    step_name: Mapped[str] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    completed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    message: Mapped[str] = mapped_column(Text, server_default=text("''"))


class TaskEvent(_TaskKey, _Bucket, Base):
    """One committed change: an insert or update of a step (``step`` set), or a task's status
    change (``step`` NULL). Append-only, written by the triggers below; what watchers follow
    (watch.py). ``tx`` is the writing transaction, ``seq`` the order of writing."""

    __tablename__ = "task_events"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "task_id", "tx", "seq", names.BUCKET),
        # A user's task changes (watch_user_tasks), by transaction.
        Index("ix_task_events_user_id_tx", "user_id", "tx", "seq",
              postgresql_where=text("step IS NULL")),
        _PARTITIONED,
    )

    tx: Mapped[int] = mapped_column(
        BigInteger, server_default=text("((pg_current_xact_id())::text)::bigint")
    )
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    step: Mapped[int | None] = mapped_column(Integer)
    step_name: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    completed: Mapped[bool | None] = mapped_column(Boolean)
    message: Mapped[str | None] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(task_status_enum)
    error_code: Mapped[ErrorCode | None] = mapped_column(error_code_enum)
    error_message: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW)


class Watched(Base):
    """The tasks (``task_id`` '' for all of a user's) that a manager's listener watches, until
    ``until`` unless renewed: the triggers notify only for these."""

    __tablename__ = "aiecs_watched"
    __table_args__ = (PrimaryKeyConstraint("user_id", "task_id", "listener"),)

    user_id: Mapped[str] = mapped_column(Text)
    task_id: Mapped[str] = mapped_column(Text)
    listener: Mapped[str] = mapped_column(Text)
    until: Mapped[dt.datetime] = mapped_column(_TZ)


class Partitioning(Base):
    """The partitions' settings (one row): their ``width`` (the bucket of a task), how many
    are kept ready ``ahead`` of the current one, and the periods retention dropped. Change
    the width with ``aiecs_set_partition_width(interval)``, which also changes the buckets'
    default. The event log (what watchers resume from) is kept ``events_kept``, shorter than
    the history (``ddl.EVENTS_RETENTION_FUNCTION``); NULL keeps it as long as the history."""

    __tablename__ = names.PARTITIONING_TABLE
    __table_args__ = (
        CheckConstraint("one_row", name="one_row"),
        CheckConstraint("width >= interval '1 second'", name="width"),
        CheckConstraint("ahead BETWEEN 0 AND 366", name="ahead"),
        CheckConstraint("events_kept >= interval '1 second'", name="events_kept"),
    )

    one_row: Mapped[bool] = mapped_column(Boolean, primary_key=True,
                                          server_default=text("true"))
    width: Mapped[dt.timedelta] = mapped_column(INTERVAL)
    ahead: Mapped[int] = mapped_column(Integer, server_default=text(str(DEFAULT_AHEAD)))
    #: Periods before this were dropped by retention: no partition is created for them again.
    retired_before: Mapped[dt.datetime | None] = mapped_column(_TZ)
    events_kept: Mapped[dt.timedelta | None] = mapped_column(
        INTERVAL, server_default=text(f"'{DEFAULT_EVENTS_KEPT}'::interval"))
    #: The event partitions of periods before this were dropped (their history may remain).
    events_dropped_before: Mapped[dt.datetime | None] = mapped_column(_TZ)
    #: Every dropped event was written by a transaction below this id: a watcher whose
    #: position is below it may have missed some (``watch.py``, expired tokens).
    events_horizon: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class PeriodSummary(Base):
    """The figures of one closed period's history partition (``ddl.SUMMARIZE_FUNCTION``):
    what a report adds up instead of reading the partition, while ``writes_seen`` (the writes
    counted when they were made) still equals ``writes`` (counted by the partition's trigger
    ever since)."""

    __tablename__ = names.SUMMARIES_TABLE

    partition: Mapped[str] = mapped_column(Text, primary_key=True)
    writes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    writes_seen: Mapped[int] = mapped_column(BigInteger, server_default=text("-1"))
    first_created: Mapped[dt.datetime | None] = mapped_column(_TZ)
    last_created: Mapped[dt.datetime | None] = mapped_column(_TZ)
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    made_at: Mapped[dt.datetime | None] = mapped_column(_TZ)


class Scope(Base):
    """A scoped role (``scopes.py``): it sees the rows whose ``user_id`` is ``LIKE`` one of
    its ``patterns``, and writes them when ``writes``. Kept in the schema, so that a scope
    replicates and survives a dump and restore with the rows it guards."""

    __tablename__ = names.SCOPES_TABLE
    __table_args__ = (
        CheckConstraint("cardinality(patterns) > 0", name="patterns"),
    )

    role: Mapped[str] = mapped_column(Text, primary_key=True)
    patterns: Mapped[list[str]] = mapped_column(ARRAY(Text))
    writes: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[dt.datetime] = mapped_column(_TZ, server_default=_NOW)


#: Rows that set aside upstream history could not be adopted (see migration 0002).
legacy_rejects: Final = Table(
    "legacy_task_history_rejects",
    metadata,
    Column("legacy_id", BigInteger, primary_key=True, autoincrement=False),
    Column("reason", Text, nullable=False),
    Column("row_data", JSONB, nullable=False),
    Column("set_aside_at", _TZ, nullable=False, server_default=_NOW),
)


def _executor(statement: str) -> Any:
    """An event listener running ``statement`` through ``text()`` (``DDL()`` would treat the
    ``%`` of PL/pgSQL's ``RAISE`` as a format character)."""

    def run(target: Any, connection: Any, **kw: Any) -> None:
        connection.execute(text(statement))

    return run


# ``metadata.create_all`` builds what the migrations build: the tables above, then the
# server-side DDL (ddl.py) and the error codes; ``drop_all`` drops that DDL first.
for _ddl in (*DDL_STATEMENTS, SEED_ERROR_CODES, *SEED_PARTITIONS):
    event.listen(metadata, "after_create", _executor(_ddl))
for _drop in DROP_STATEMENTS:
    event.listen(metadata, "before_drop", _executor(_drop))
