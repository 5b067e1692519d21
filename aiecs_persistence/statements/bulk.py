"""The bulk path: ``save_task_history_many`` streams its records in chunks, all in one
transaction. For each chunk:
(1) its tasks are upserted (one statement, arrays as parameters) and their buckets read (each
step goes to its task's partition); (2) inside a savepoint, its
steps are COPYed straight into task_history, which PostgreSQL loads in batches (multi-insert,
the fastest way in); (3) only when that meets an existing step (a re-save: unique violation)
is the savepoint rolled back and the chunk merged instead: COPY into a temporary staging table
and one INSERT ... ON CONFLICT DO UPDATE, which follows the state machine like a single save.
A chunk holds one row per step: a step given again starts the next chunk, so that its second save
is a re-save of the first, checked by the state machine and logged (``BulkChunk``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

from .. import names
from ..errors import ValidationError
from .checks import check_id, check_step_index, step_fields
from .columns import RESULT_COLUMNS, STEP_COLUMNS, casted, listed, task_arrays
from .rows import Row
from .saves import (
    EVENTS_INSERT,
    OWN_EVENTS,
    STEP_CONFLICT,
    STEP_INSERT,
    TASKS_UPSERT,
    tasks_upsert,
)
from .statement import Statement

#: Statements one chunk may run (tasks, COPY or staging, clear, COPY, merge; events, notify):
#: its client deadline.
CHUNK_STATEMENTS: Final = 7
#: Records per chunk by default (the ``bulk_chunk_size`` setting): bounds the client's memory
#: (about 10 MB for typical results).
BULK_CHUNK: Final = 10_000

#: A chunk's tasks, and the events of those it creates (the transaction has ``own`` on).
BULK_TASKS: Final = f"""
WITH {OWN_EVENTS}, task AS ({TASKS_UPSERT})
{EVENTS_INSERT}
SELECT user_id, task_id, NULL, NULL, NULL, NULL, NULL, status, error_code, error_message,
       updated_at, bucket
FROM task WHERE inserted"""

#: A chunk's tasks on Citus: no shortcut, no ``own``. The events are the triggers' there:
#: ``aiecs.bulk_events`` set on the coordinator does not reach the workers' sessions.
BULK_TASKS_CLUSTER: Final = tasks_upsert(citus=True)

#: A chunk's tasks' buckets, once they are upserted (the pairs of the users and tasks given are
#: picked by ``with_buckets``).
BULK_BUCKETS: Final = (
    f"SELECT user_id, task_id, {names.BUCKET} FROM tasks "
    "WHERE user_id = ANY(%(users)s::text[]) AND task_id = ANY(%(tasks)s::text[])"
)

#: What a chunk's rows carry: a step's columns, then its task's bucket (``with_buckets``).
_ROW_COLUMNS: Final = (*STEP_COLUMNS, names.BUCKET)

BULK_COPY: Final = f"COPY task_history ({listed(_ROW_COLUMNS)}) FROM STDIN"

#: Staging columns are text (cast by the merge), but for these.
_STAGING_TYPES: Final = {"step": "integer", "completed": "boolean",
                         names.BUCKET: "timestamptz"}
BULK_STAGING: Final = (
    f"CREATE TEMP TABLE IF NOT EXISTS {names.STAGING_TABLE} ("
    + ", ".join(f"{c} {_STAGING_TYPES.get(c, 'text')}" for c in _ROW_COLUMNS)
    + ") ON COMMIT DROP"
)

BULK_STAGING_CLEAR: Final = f"TRUNCATE {names.STAGING_TABLE}"

BULK_STAGING_COPY: Final = f"COPY {names.STAGING_TABLE} ({listed(_ROW_COLUMNS)}) FROM STDIN"

BULK_MERGE: Final = (
    f"{STEP_INSERT}SELECT {casted(STEP_COLUMNS, '{}')}, {names.BUCKET}\n"
    f"FROM {names.STAGING_TABLE} ORDER BY user_id, task_id, step"
    f"{STEP_CONFLICT}"
)


#: The bulk path logs its own events (ddl.py, task events): the row trigger skips while set.
#: Its own statement: ``BULK_TASKS``'s ``own`` is not read when every task of a chunk is fresh.
BULK_EVENTS_ON: Final = f"SELECT {names.set_own_events()}"

#: A COPYed chunk's events: the same rows, COPYed again (reading them back from task_history
#: would make the planner scan the whole table).
BULK_EVENTS_COPY: Final = f"COPY {names.EVENTS_TABLE} ({listed(_ROW_COLUMNS)}) FROM STDIN"

#: A merged chunk's events, from the staging table.
BULK_MERGE_EVENTS: Final = (
    f"INSERT INTO {names.EVENTS_TABLE} ({listed(_ROW_COLUMNS)})\n"
    f"SELECT {casted(STEP_COLUMNS, '{}')}, {names.BUCKET} FROM {names.STAGING_TABLE}"
    " ORDER BY user_id, task_id, step"
)

#: ... and the wake-up of whoever watches one of its tasks (parameters: users, tasks).
BULK_NOTIFY: Final = f"""
SELECT {names.notify("k.user_id", "k.task_id")}
FROM unnest(%(users)s::text[], %(tasks)s::text[]) AS k(user_id, task_id)
JOIN {names.WATCHED_TABLE} w
  ON w.user_id = k.user_id AND w.task_id IN (k.task_id, '') AND w.until > now()
"""


def bulk_row(seq: int, record: Any, *, max_result_bytes: int) -> tuple[Any, ...]:
    """One validated row (``STEP_COLUMNS``) of ``save_task_history_many`` from
    its ``seq``-th (user_id, task_id, step, step_result) record."""
    where = f"records[{seq}]."
    try:
        user_id, task_id, step, step_result = record
    except (TypeError, ValueError):
        raise ValidationError(
            f"records[{seq}]: expected (user_id, task_id, step, step_result)",
            field=f"records[{seq}]",
        ) from None
    try:
        fields = step_fields(step_result, max_result_bytes=max_result_bytes, path=where)
        return (
            check_id(user_id, "user_id"), check_id(task_id, "task_id"), check_step_index(step),
            *(fields[c] for c in RESULT_COLUMNS),
        )
    except ValidationError as exc:
        if exc.field and not exc.field.startswith("records["):
            raise ValidationError(f"{where}{exc.message}", field=f"{where}{exc.field}") from None
        raise


def with_buckets(rows: Iterable[tuple[Any, ...]], found: Iterable[Row]
                 ) -> list[tuple[Any, ...]]:
    """A chunk's rows, each with its task's bucket (``BULK_BUCKETS``'s rows). A task missing
    there (deleted meanwhile) leaves the bucket NULL, which the COPY refuses."""
    buckets = {(r.user_id, r.task_id): getattr(r, names.BUCKET) for r in found}
    return [(*row, buckets.get((row[0], row[1]))) for row in rows]


def bulk_statement(records: Any) -> Statement:
    """The bulk path's identity for retries and metrics: a list or tuple can be read again,
    so the whole transaction may be retried after a transient failure (a deadlock with a
    concurrent writer, a lost connection); a generator cannot."""
    return Statement("save_task_history_many", BULK_COPY,
                     idempotent=isinstance(records, Sequence), statements=None)


class BulkChunk:
    """Validated rows of up to ``size`` records, one per step.

    A record that saves a step the chunk already holds ends the chunk and starts the next one,
    so the two saves are written in the order given, the second as a re-save of the first:
    the state machine checks the move between them (an illegal one fails the whole call with
    ``InvalidTransitionError``, E001, and writes nothing) and each leaves its event, exactly as
    the same saves made one by one."""

    def __init__(self, max_result_bytes: int, size: int = BULK_CHUNK, *,
                 tasks_sql: str = BULK_TASKS) -> None:
        self.max_result_bytes = max_result_bytes
        self.size = size
        self.tasks_sql = tasks_sql
        self.seen = 0  # records taken so far, over all chunks
        self._rows: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        #: A re-save of a step in this chunk: the first row of the next one.
        self._next: tuple[Any, ...] | None = None

    def add(self, record: Any) -> bool:
        """Validate and keep one record; True when the chunk is to be written now (full, or
        the record re-saves one of its steps)."""
        row = bulk_row(self.seen, record, max_result_bytes=self.max_result_bytes)
        self.seen += 1
        key = (row[0], row[1], row[2])
        if key in self._rows:
            self._next = row
            return True
        self._rows[key] = row
        return len(self._rows) >= self.size

    def fill(self, records: Iterator[Any]) -> tuple[list[tuple[Any, ...]], Statement] | None:
        """Take records until the chunk is to be written or ``records`` runs out, then
        ``take()``. The managers call it in a worker thread, validating one chunk while the
        server loads the previous one."""
        for record in records:
            if self.add(record):
                break
        return self.take()

    def take(self) -> tuple[list[tuple[Any, ...]], Statement] | None:
        """The chunk's rows in key order and the statement upserting its tasks; then the next
        chunk starts (with the re-save that ended this one, if any)."""
        if not self._rows:
            return None
        rows = [self._rows[k] for k in sorted(self._rows)]
        self._rows = {}
        if self._next is not None:
            row, self._next = self._next, None
            self._rows[row[0], row[1], row[2]] = row
        tasks = Statement("save_task_history_many", self.tasks_sql,
                          task_arrays((r[0], r[1]) for r in rows))
        return rows, tasks
