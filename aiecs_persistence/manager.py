"""``DatabaseManager``: the async manager, a drop-in replacement for upstream AIECS's class.

Same method names, arguments and return shapes as upstream (see the contract, §5), on
psycopg 3 and its connection pool (``psycopg_pool``): every call checks a connection out of
the pool, so concurrent coroutines never share one.

This file is also the source of the blocking ``SyncDatabaseManager``: ``sync.py`` is generated
from it by ``tools/async_to_sync.py`` (``async``/``await`` dropped, asyncio's pieces swapped
for threading's). Write every change of the managers here, once, then run that script. Where
the two differ, a live branch says how: ``if True:  # ASYNC`` holds the async code, its
``else`` the blocking manager's, and both are type-checked and linted (the ``else`` side in
``sync.py``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

if True:  # ASYNC
    import asyncio
    import contextvars
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable
else:
    import threading
    from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from . import prepared
from .config import libpq_conninfo
from .core import ManagerBase, SettingsKwargs, log, returns_rows, reusable
from .domain import ErrorCode, TaskStatus
from .errors import (
    PermissionDeniedError,
    PersistenceError,
    QueryTimeoutError,
    RetryExhaustedError,
    ValidationError,
)
from .group import Arrival
from .listen import AsyncListener, AsyncWaiter
from .queued import AsyncQueued
from .records import CleanupSummary, Page, StepRecord, TaskRecord
from .sqlstates import (
    classify,
    connection_lost,
    is_copy_refused,
    is_unique_violation,
    missing_partition,
    translate,
)
from .statements import bulk, checks, partitions, reads, saves, summaries, tasks
from .statements import cleanup as retention
from .statements import report as reporting
from .statements.rows import (
    Row,
    history_rows,
    report_data,
    step_page,
    task_page,
    task_record,
    user_task_rows,
)
from .statements.statement import SET_LOCAL, Statement, set_local
from .statements.watching import Watch
from .telemetry import operation
from .watch import HEARTBEAT

if TYPE_CHECKING:  # psycopg loads on connect, not on import (docs/performance.md)
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.engine import URL

__all__ = ["DatabaseManager"]

T = TypeVar("T")


class DatabaseManager(ManagerBase):
    """Async persistence of task execution history.

    ``DatabaseManager(db_config=None, *, url=None, **settings)``: ``url`` takes
    ``postgresql://…`` or ``postgresql+psycopg://…``; ``db_config`` the upstream form
    (``{"dsn": …}`` or host/port/user/password/database). With neither,
    ``AIECS_DATABASE_URL``, else the embedded PostgreSQL. Settings: see ``core.Settings``
    (pool sizes, timeouts, retries, ``max_result_bytes``, ``auto_migrate``).
    """

    def __init__(
        self, db_config: Mapping[str, Any] | None = None, *, url: str | URL | None = None,
        **settings: Unpack[SettingsKwargs],
    ) -> None:
        super().__init__(db_config, url=url, **settings)
        self._pool: AsyncConnectionPool[AsyncConnection[Row]] | None = None
        if True:  # ASYNC
            self._lock = asyncio.Lock()
        else:
            self._lock = threading.Lock()
        self._listener: AsyncListener | None = None
        self._held: list[AsyncConnection[Row]] = []
        if True:  # ASYNC
            self._drains: set[asyncio.Future[None]] = set()
        else:
            self._drainers = ThreadPoolExecutor(
                self.settings.group_commit_writers, thread_name_prefix="aiecs-group-commit")

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the pool is open (``connect`` was called and ``disconnect`` was not)."""
        return self._pool is not None

    @operation()
    async def connect(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Create the pool and make sure the schema is at head (upstream's signature)."""
        await self.init_connection_pool(min_size, max_size)

    @operation()
    async def init_connection_pool(
        self, min_size: int | None = None, max_size: int | None = None
    ) -> None:
        """Upstream's name of ``connect``: open the pool (once; later calls do nothing) after
        making sure the schema is at head."""
        async with self._lock:
            if self._pool is not None:
                return
            await asyncio.to_thread(self.prepare_schema)  # resolves self.url too
            self._pool_sizes = (min_size, max_size)
            self._pool = await self._open_pool()
            self._telemetry.watch_pool(self)
        await self._partitions_due()

    async def _partitions_due(self) -> None:
        """Create the history's partitions due (this period's and those kept ready ahead) as
        the pool opens, so that saves find them. A failure here is logged, not raised: a save
        that finds no partition creates the one it needs (``_with_retries``)."""
        try:
            await self._run(partitions.create_due())
        except PersistenceError as exc:
            log.warning("the partitions due could not be created now: %s", exc.message)

    async def _open_pool(self) -> AsyncConnectionPool[AsyncConnection[Row]]:
        from psycopg_pool import AsyncConnectionPool

        pool: AsyncConnectionPool[AsyncConnection[Row]] = AsyncConnectionPool(
            libpq_conninfo(self.url), name="aiecs-async", **self._pool_kwargs(*self._pool_sizes),
        )
        await pool.open()
        return pool

    async def _recover(
        self, pool: AsyncConnectionPool[AsyncConnection[Row]],
    ) -> AsyncConnectionPool[AsyncConnection[Row]]:
        """After a lost connection: whether the server answers (``core.ManagerBase._probe``;
        when it does not, the failure is raised, a transient one). When it answers again after
        refusing, the pool is replaced by a fresh one: psycopg_pool's reconnection backoff
        doubles without bound (1, 2, 4 … 64 s) and would outlast the outage by as much."""
        if True:  # ASYNC
            await asyncio.to_thread(self._probe)
        else:
            self._probe()
        if not self._outage_seen:
            return pool
        async with self._lock:
            self._outage_seen = False
            current, stale = self._pool, None
            if current is pool:  # not replaced (nor closed) by another call meanwhile
                await self._release_held()
                self._pool = current = await self._open_pool()
                stale = pool
        if current is None:  # disconnected meanwhile
            return await self._ready()
        if stale is not None:
            log.info("the server answers again: a fresh connection pool")
            if True:  # ASYNC
                closing = asyncio.ensure_future(stale.close())
                self._drains.add(closing)
                closing.add_done_callback(self._drains.discard)
            else:
                threading.Thread(target=stale.close, name="aiecs-old-pool", daemon=True).start()
        return current

    @operation()
    async def init_database_schema(self) -> bool:
        """Upstream's name: migrate to head (errors are raised, never swallowed)."""
        await asyncio.to_thread(self.prepare_schema)
        return True

    @operation()
    async def disconnect(self) -> None:
        """Close the pool and its connections (a later call connects again)."""
        if True:  # ASYNC
            if self._drains:  # queued saves are written before the pool closes
                await asyncio.wait(list(self._drains))
        else:
            self._drainers.shutdown(wait=True)  # queued saves are written before it closes
            self._drainers = ThreadPoolExecutor(
                self.settings.group_commit_writers, thread_name_prefix="aiecs-group-commit")
        await self._release_held()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def close(self) -> None:
        """Alias of ``disconnect``."""
        await self.disconnect()

    async def __aenter__(self) -> DatabaseManager:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    async def _ready(self) -> AsyncConnectionPool[AsyncConnection[Row]]:
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        return self._pool

    async def _checkout(
        self, pool: AsyncConnectionPool[AsyncConnection[Row]], writer: bool
    ) -> AsyncConnection[Row]:
        """A connection for a call; for a save (``writer``), the one a save last used when it
        is idle (its backend is warm, its statements prepared), else one from the pool."""
        held = self._held
        if writer and held:
            return held.pop()
        conn = await pool.getconn()
        if True:  # ASYNC
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # psycopg_pool waits with asyncio.wait_for, which on Python 3.11 drops a
                # cancellation that arrives as the connection is handed over: honour it here (a
                # cancelled watcher would otherwise follow its task for ever).
                await pool.putconn(conn)
                raise asyncio.CancelledError
        return conn

    async def _checkin(
        self, pool: AsyncConnectionPool[AsyncConnection[Row]],
        conn: AsyncConnection[Row], writer: bool, ok: bool,
    ) -> None:
        """A connection back after a call. Up to ``group_commit_writers`` are kept for saves
        between them, leaving at least one in the pool for everything else; any that failed
        goes back to the pool, which checks it (as does one of a pool replaced meanwhile)."""
        held = self._held
        if writer and ok and pool is self._pool and len(held) < min(
                self.settings.group_commit_writers, pool.max_size - 1) and reusable(conn):
            held.append(conn)
        else:
            await pool.putconn(conn)

    async def _release_held(self) -> None:
        """The connections kept for saves, back to the pool (before it closes)."""
        pool, held, self._held = self._pool, self._held, []
        if pool is not None:
            for conn in held:
                await pool.putconn(conn)

    async def _with_retries(
        self, statement: Statement,
        work: Callable[[AsyncConnection[Row]], Awaitable[T]], *, writer: bool = False,
    ) -> T:
        """``work`` on a pooled connection (``writer``: see ``_checkout``), retried by
        ``retry_delay``'s policy."""
        pool = self._pool or await self._ready()
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                if self._suspect:  # a connection was lost: does the server answer?
                    pool = await self._recover(pool)
                conn = await self._checkout(pool, writer)
                ok = False
                try:
                    with self._deadline(conn, statement):
                        result = await work(conn)
                    ok = True
                finally:
                    await self._checkin(pool, conn, writer, ok)
            except Exception as exc:
                at = missing_partition(exc)
                if at is not None and statement.idempotent and (
                        attempt < self.settings.max_attempts):
                    self._telemetry.retry(statement.name, attempt, "missing_partition")
                    # A save in a period with no partition yet (idle for longer than the
                    # partitions made ahead): create it, then save again. (-1: retention is
                    # dropping that period; once its task is deleted, the save creates it anew.)
                    # Its bucket unknown (row security kept it out of the message): the
                    # partitions due, and none made means the row's period is another one.
                    made = await self._run(
                        partitions.create_for(at) if at else partitions.create_due())
                    created = made[0].created if made else 0
                    if created < 0 or (not at and created == 0):
                        await asyncio.sleep(self.settings.backoff(attempt))
                    continue
                delay = self.retry_delay(statement, exc, attempt, started)
                if connection_lost(exc) and not self._suspect:
                    self._suspect = True  # the next attempt asks the server first
                    await pool.check()  # other idle connections are likely gone too
                await asyncio.sleep(delay)
                continue
            self.observe(statement, started, True)
            return result

    async def _run(
        self, statement: Statement, *, writer: bool = False
    ) -> list[Row]:
        local = self._local_settings()
        if statement.local:
            local = {**(local or {}), **statement.local}

        async def execute(conn: AsyncConnection[Row]) -> list[Row]:
            if local is None:
                if statement.lean and self._lean:
                    await self._send(conn, statement)
                    return []
                cur = await conn.execute(statement.sql, statement.params)
            else:
                async with conn.pipeline(), conn.transaction():
                    await conn.execute(SET_LOCAL, set_local(local))
                    cur = await conn.execute(statement.sql, statement.params)
            return await cur.fetchall() if returns_rows(cur) else []

        return await self._with_retries(statement, execute, writer=writer)

    async def _send(self, conn: AsyncConnection[Row], statement: Statement,
                    again: bool = True) -> None:
        """``statement`` as a prepared statement of ours, through libpq (prepared.py); prepared
        on the connection first when it is not yet there, or again (once) when it is no longer
        there (a pooler that changes server connections under a session would lose it every
        time: that error is raised)."""
        pgconn, query = conn.pgconn, prepared.prepared(statement.sql)
        if not prepared.is_prepared(conn, query):
            pgconn.send_prepare(query.name, query.query)
            results = await conn.wait(prepared.results(pgconn))
            if prepared.failure(results) != prepared.ALREADY_PREPARED:
                prepared.check(results)
            prepared.mark_prepared(conn, query)
        pgconn.send_query_prepared(query.name, query.values(statement.params))
        results = await conn.wait(prepared.results(pgconn))
        if again and prepared.failure(results) == prepared.NOT_PREPARED:  # deallocated
            prepared.forget(conn)
            await self._send(conn, statement, again=False)
            return
        prepared.check(results)

    async def _set_local(self, conn: AsyncConnection[Row]) -> None:
        """In a transaction, under ``transaction_pooling``: its timeouts and search_path."""
        local = self._local_settings()
        if local is not None:
            await conn.execute(SET_LOCAL, set_local(local))

    # -- writes ------------------------------------------------------------------------------

    @operation(ids=2)
    async def save_task_history(
        self, user_id: str, task_id: str, step: int, step_result: Any
    ) -> bool:
        """Record one step (idempotent on user_id, task_id, step); one atomic statement, or
        one row of a group-committed batch while other saves are in flight (group.py)."""
        full, fast = self._save_statements(user_id, task_id, step, step_result)
        group = self._group
        if group is None:
            await self._save_one(full, fast)
            return True
        save = AsyncQueued(saves.step_key(full), full, fast)
        arrival = group.arrive(save)
        if arrival is Arrival.ALONE:  # every writer was free: out at once, alone
            try:
                await self._save_one(full, fast)
            finally:
                self._drain(group.finish([save.key]))
            return True
        telemetry = self._telemetry
        if telemetry.enabled:
            save.caller = telemetry.current()
        queued = time.perf_counter()
        if arrival is Arrival.LEAD:  # a free writer takes it with whatever queues meanwhile
            self._drain(None)
        try:
            await save.wait()
        except BaseException:
            group.withdraw(save)
            raise
        if telemetry.enabled:
            telemetry.waited(time.perf_counter() - queued)
        save.outcome()
        return True

    async def _save_one(self, full: Statement, fast: Statement | None) -> None:
        """One save in its own statement: the step alone when this manager touched the task
        less than a second ago, else (or when the task was deleted meanwhile) the full save."""
        user_id, task_id, _ = saves.step_key(full)
        if self._pool is None:  # connected: the shape of the save is known
            await self.connect()
        if fast is not None:
            try:
                await self._run(fast, writer=True)
                return
            except ValidationError as exc:
                if not self._task_was_gone(exc, user_id, task_id):
                    raise
        lone = self._dialect.lone(full, self.settings.lock_timeout_ms)
        try:
            await self._run(lone, writer=True)
        except ValidationError as exc:
            if not self._task_was_gone(exc, user_id, task_id):
                raise
            await self._run(lone, writer=True)  # a cleanup deleted the task meanwhile: again
        self._touch(user_id, task_id)

    def _drain(self, batch: list[AsyncQueued] | None) -> None:
        """Write ``batch`` (None: the batch of a writer that ``GroupCommit.arrive`` started,
        taken when it runs), then every batch the queue holds after it, on a task of its
        own."""
        if batch == []:
            return
        if True:  # ASYNC
            # In a context of its own: the batches are no part of the call that started the
            # writer (its span may end first; the batch's span is a root linked to each caller).
            task = asyncio.get_running_loop().create_task(self._write_batches(batch),
                                                          context=contextvars.Context())
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        else:
            self._drainers.submit(self._write_batches, batch)

    async def _write_batches(self, batch: list[AsyncQueued] | None) -> None:
        assert self._group is not None
        if batch is None:
            batch = self._group.lead()
        while batch:
            try:
                await self._write_batch(batch)
            except BaseException as exc:  # the loop is closing: nobody may wait for ever
                for save in batch:
                    save.resolve(exc)
                self._group.finish([save.key for save in batch], take=False)
                raise
            # The callers just answered save again at once, as a rule: let them queue before
            # this writer takes its next batch (or goes free, and the first of them would go
            # out alone while the others queue behind it).
            await asyncio.sleep(0)
            batch = self._group.finish([save.key for save in batch])

    async def _write_batch(self, batch: list[AsyncQueued]) -> None:
        """One statement for the batch. If a rule rejected one of its saves (a constraint, a
        move, a scoped role's row-level security), or a lock or the retries ran out (one
        blocked key, a kill storm that a big statement cannot outrun), each save alone, so
        each caller gets its own outcome; any other failure (a closed manager) is every
        caller's."""
        if len(batch) > 1:
            try:
                with self._telemetry.batch(len(batch), [save.caller for save in batch]):
                    await self._run(self._saves([save.full for save in batch]), writer=True)
            except (ValidationError, PermissionDeniedError, RetryExhaustedError,
                    QueryTimeoutError):
                pass  # below, one at a time
            except Exception as exc:
                for save in batch:
                    save.resolve(exc)
                return
            else:
                for save in batch:
                    self._touch(save.key[0], save.key[1])
                    save.resolve()
                return
        for save in batch:
            try:
                await self._save_one(save.full, save.fast)
            except Exception as exc:
                save.resolve(exc)
            else:
                save.resolve()

    @operation(ids=-1)
    async def save_task_history_many(self, records: Iterable[Any] | AsyncIterable[Any]) -> int:
        """Save many (user_id, task_id, step, step_result) records in one transaction: all of
        them or none. The input is streamed in chunks of ``bulk_chunk_size`` records, each
        COPYed straight into ``task_history`` (merged instead when it re-saves existing
        steps), so memory stays flat however long the input. The records obey the rules of the
        same saves made one by one, in the order given: a step given twice is saved, then
        re-saved (its move checked, both events logged). Returns the number of records."""
        checks.check_records(records)
        statement = bulk.bulk_statement(records)

        async def load(conn: AsyncConnection[Row]) -> int:
            chunk = bulk.BulkChunk(self.settings.max_result_bytes, self.settings.bulk_chunk_size,
                                   tasks_sql=self._dialect.bulk_tasks)
            async with conn.transaction():
                await self._set_local(conn)
                if self._dialect.own_events:  # else the triggers log (dialect.py)
                    await conn.execute(bulk.BULK_EVENTS_ON)
                if True:  # ASYNC
                    if isinstance(records, AsyncIterable):
                        async for record in records:
                            if chunk.add(record) and (taken := chunk.take()):
                                await self._write_chunk(conn, *taken)
                        if taken := chunk.take():
                            await self._write_chunk(conn, *taken)
                        return chunk.seen
                await self._write_chunks(conn, chunk, iter(records))
            return chunk.seen

        return await self._with_retries(statement, load)

    async def _write_chunks(
        self, conn: AsyncConnection[Row], chunk: bulk.BulkChunk, source: Iterator[Any]
    ) -> None:
        """Validate each chunk in a worker thread while the server loads the previous one."""
        if True:  # ASYNC
            pending = asyncio.ensure_future(asyncio.to_thread(chunk.fill, source))
            try:
                while (taken := await pending) is not None:
                    pending = asyncio.ensure_future(asyncio.to_thread(chunk.fill, source))
                    await self._write_chunk(conn, *taken)
            finally:
                if not pending.done():  # a write failed: let the builder finish, drop it
                    await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # retrieved, so asyncio does not report it
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="aiecs-bulk") as builder:
                pending = builder.submit(chunk.fill, source)
                while (taken := pending.result()) is not None:
                    pending = builder.submit(chunk.fill, source)  # the next, meanwhile
                    self._write_chunk(conn, *taken)

    async def _write_chunk(
        self, conn: AsyncConnection[Row], rows: list[tuple[Any, ...]],
        tasks: Statement,
    ) -> None:
        """One chunk of the bulk path (see statements.py): tasks, then COPY, else merge;
        under one client deadline."""
        with self._deadline(conn, tasks, bulk.CHUNK_STATEMENTS):
            await self._write_chunk_now(conn, rows, tasks, own_events=self._dialect.own_events)

    @staticmethod
    async def _write_chunk_now(
        conn: AsyncConnection[Row], rows: list[tuple[Any, ...]], tasks: Statement,
        *, own_events: bool,
    ) -> None:
        """``own_events``: the chunk logs its events and wakes watchers (off on Citus, where
        the triggers log and watchers poll)."""
        import psycopg

        async with conn.cursor() as cur:
            await cur.execute(tasks.sql, tasks.params)
            await cur.execute(bulk.BULK_BUCKETS, tasks.params)
            rows = bulk.with_buckets(rows, await cur.fetchall())
            try:
                async with conn.transaction(), cur.copy(bulk.BULK_COPY) as copy:
                    for row in rows:
                        await copy.write_row(row)
            except psycopg.Error as exc:  # some steps exist already: merge this chunk
                # ... as it is under row-level security, which PostgreSQL refuses a COPY
                if not (is_unique_violation(exc) or is_copy_refused(exc)):
                    raise
                await cur.execute(bulk.BULK_STAGING)
                await cur.execute(bulk.BULK_STAGING_CLEAR)
                async with cur.copy(bulk.BULK_STAGING_COPY) as copy:
                    for row in rows:
                        await copy.write_row(row)
                await cur.execute(bulk.BULK_MERGE)
                if own_events:
                    await cur.execute(bulk.BULK_MERGE_EVENTS)
            else:
                if own_events:
                    async with cur.copy(bulk.BULK_EVENTS_COPY) as copy:
                        for row in rows:
                            await copy.write_row(row)
            if own_events:
                await cur.execute(bulk.BULK_NOTIFY, tasks.params)

    @operation(ids=2)
    async def start_task(self, user_id: str, task_id: str) -> TaskRecord:
        """Mark a task running (creating it if needed)."""
        found = await self._run(tasks.start_task(user_id, task_id))
        return task_record(found[0])

    @operation(ids=2)
    async def finish_task(
        self, user_id: str, task_id: str, status: TaskStatus | str,
        error_code: Any = None, error_message: str | None = None,
    ) -> TaskRecord:
        """End a task with a terminal status, following the state machine."""
        statement = tasks.finish_task(user_id, task_id, status, error_code, error_message)
        return tasks.finished_task(await self._run(statement), statement)

    @operation(ids=2)
    async def mark_task_as_cancelled(self, user_id: str, task_id: str) -> bool:
        """Cancel the task (E004). False when it had already ended otherwise."""
        return tasks.cancelled(await self._run(tasks.cancel_task(user_id, task_id)))

    @operation()
    async def cleanup_old_tasks(
        self, days_old: float = 30, *, dry_run: bool = False,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """Delete tasks (and their steps) with no activity for ``days_old`` days, in bounded
        batches (each its own short transaction); returns how many tasks were deleted (or, with
        ``dry_run``, would be). ``on_batch`` is called with each batch's count. Activity
        acknowledged after the call began is never deleted (see statements.py, retention)."""
        start = await self._run(retention.cleanup_start(days_old))
        job = retention.Cleanup.starting(days_old, self.settings.cleanup_batch_size, start[0],
                                         self._dialect.retention)
        self._forget_touched()
        if dry_run:
            counted = await self._run(job.count)
            return int(counted[0].tasks)

        async def batch(conn: AsyncConnection[Row]) -> tuple[int, int]:
            async with conn.transaction():
                await self._set_local(conn)
                cur = await conn.execute(job.pick.sql, job.params)
                keys = await cur.fetchall()
                if not keys:
                    return 0, 0
                params = job.picked(keys)
                for statement in job.then:
                    cur = await conn.execute(statement, params)
                row = await cur.fetchone()
            return len(keys), int(row.deleted) if row else 0

        dropped = await self._drop_periods(job, on_batch)
        if self._dialect.expires_events:
            events = await self._expire_events(job)
            dropped = dropped._replace(
                partitions_dropped=dropped.partitions_dropped + events.partitions_dropped,
                bytes_freed=dropped.bytes_freed + events.bytes_freed)
        total = dropped.tasks
        while True:
            locked, deleted = await self._with_retries(job.pick, batch)
            total += deleted
            if on_batch is not None:
                on_batch(deleted)
            if locked < self.settings.cleanup_batch_size:
                self.last_cleanup = dropped._replace(tasks=total)
                self._telemetry.retention(total, dropped.partitions_dropped, dropped.bytes_freed)
                await self._summarize_periods()
                return total

    async def _drop_periods(
        self, job: retention.Cleanup, on_batch: Callable[[int], object] | None,
    ) -> CleanupSummary:
        """Retention by partitions (statements/partitions.py): each period whose tasks are all
        inactive past the cutoff loses its partitions whole. A role that does not own the
        tables (``aiecs-db grant``'s writer) cannot detach them: its cleanup goes row by row,
        as the owner's does for what remains."""
        periods = await self._run(self._dialect.drops.droppable(job.params))
        done = CleanupSummary()
        for found in periods:
            outcome = await self._drop_period(job, found)
            if outcome is None:
                break
            deleted, freed = outcome
            if freed:
                done = CleanupSummary(done.tasks + deleted, done.tasks_in_partitions + deleted,
                                      done.partitions_dropped + len(found.partitions),
                                      done.bytes_freed + freed)
            if on_batch is not None:
                on_batch(deleted)
        return done

    async def _drop_period(self, job: retention.Cleanup, found: Row
                           ) -> tuple[int, int] | None:
        """One period's partitions detached, its tasks checked again, then deleted while the
        partitions are dropped; the tasks deleted and the bytes freed (None: this role may not
        detach, or the lock of a detach was busy past ``lock_timeout``; bytes 0: the period
        came back to life meanwhile, and is kept)."""
        params = partitions.period(job.params, found)
        drops = self._dialect.drops
        pool = await self._ready()
        conn = await pool.getconn()
        detached: list[tuple[str, str]] = []
        try:
            try:
                await conn.execute(partitions.RETIRE, params)
                for parent, partition in zip(found.parents, found.partitions, strict=True):
                    await conn.execute(drops.detach(parent, partition))
                    detached.append((parent, partition))
            except Exception as exc:
                if detached:
                    await self._attach_again(conn, detached, found)
                failure = translate(exc)
                if isinstance(failure, PermissionDeniedError):
                    log.info("cleanup: this role may not detach partitions; row by row")
                    return None
                if isinstance(failure, QueryTimeoutError):  # a plain detach, beside writers
                    log.info("cleanup: a partition's lock was busy; row by row")
                    return None
                raise
            cur = await conn.execute(drops.still_inactive_sql, params)
            row = await cur.fetchone()
            if row is None or not row.inactive:  # a save reached one of its tasks: keep it
                await self._attach_again(conn, detached, found)
                return 0, 0
            for parent, partition in detached:
                if parent == "task_history":
                    await conn.execute(partitions.unlink(partition))
            deleted, freed = await self._delete_beside_drops(
                conn, pool, params, [partition for _, partition in detached])
            log.info("cleanup: dropped the partitions of %s .. %s (%d tasks, %d bytes)",
                     found.lower, found.upper, deleted, freed)
            return deleted, freed
        except Exception as exc:
            if classify(exc) is None:  # ours, or a bug: as it is
                raise
            raise translate(exc, operation="cleanup_old_tasks") from None
        finally:
            await pool.putconn(conn)

    async def _delete_period_tasks(
        self, conn: AsyncConnection[Row], params: dict[str, Any],
    ) -> int:
        """A dropped period's tasks deleted from ``tasks``, a batch a transaction (with the
        triggers off where ``TRIGGERS_OFF`` says so, each batch deciding under its lock)."""
        drops = self._dialect.drops
        deleted = 0
        while True:
            async with conn.transaction():
                await conn.execute(partitions.PLAN_EACH_TIME)
                off = False
                if drops.triggers_off:
                    await conn.execute(partitions.LOCK_TASKS)
                    cur = await conn.execute(partitions.TRIGGERS_OFF)
                    row = await cur.fetchone()
                    off = bool(row and row.off)
                cur = await conn.execute(drops.delete_tasks_sql, {
                    **params, "batch_size": partitions.delete_tasks_batch(
                        self.settings.cleanup_batch_size, off)})
                row = await cur.fetchone()
            gone = int(row.deleted) if row else 0
            deleted += gone
            if not gone:
                return deleted

    async def _delete_beside_drops(
        self, conn: AsyncConnection[Row], pool: AsyncConnectionPool[AsyncConnection[Row]],
        params: dict[str, Any], tables: list[str],
    ) -> tuple[int, int]:
        """The period's tasks deleted on ``conn`` while its detached ``tables`` are dropped on
        another connection of the pool: the tasks deleted and the bytes freed. A drop waits for
        its files to be truncated, the operating system's work, which the deletion need not
        wait behind (a period of 100,000 tasks: 370 ms of deletion beside 402 ms of drops).
        A pool of one connection drops the tables on ``conn`` first, then deletes."""
        if pool.max_size < 2:
            freed = await self._drop_tables(conn, tables)
            return await self._delete_period_tasks(conn, params), freed
        if True:  # ASYNC
            dropping = asyncio.ensure_future(self._drop_tables_apart(pool, tables))
            try:
                deleted = await self._delete_period_tasks(conn, params)
            except BaseException:
                await asyncio.wait([dropping])  # the tables go all the same
                if not dropping.cancelled():
                    dropping.exception()  # retrieved: the deletion's error is the one raised
                raise
            return deleted, await dropping
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="aiecs-drop") as dropper:
                dropping = dropper.submit(self._drop_tables_apart, pool, tables)
                deleted = self._delete_period_tasks(conn, params)
                return deleted, dropping.result()

    async def _drop_tables(self, conn: AsyncConnection[Row], tables: list[str]) -> int:
        """Detached partitions dropped, their files returned to the operating system; the
        bytes freed."""
        freed = 0
        for table in tables:
            cur = await conn.execute(self._dialect.drops.size_sql, {"table": table})
            size = await cur.fetchone()
            freed += int(size.bytes) if size else 0
            await conn.execute(partitions.drop(table))
        return freed

    async def _drop_tables_apart(
        self, pool: AsyncConnectionPool[AsyncConnection[Row]], tables: list[str],
    ) -> int:
        """``_drop_tables`` on a connection of its own."""
        conn = await pool.getconn()
        try:
            return await self._drop_tables(conn, tables)
        finally:
            await pool.putconn(conn)

    async def _summarize_periods(self) -> None:
        """The summaries of the closed periods due one (statements/summaries.py), for the
        reports. A failure is logged, not raised: a report reads what has no summary."""
        try:
            for found in await self._run(summaries.due()):
                for _ in range(2):  # the trigger first, then the figures
                    if (await self._run(summaries.summarize(found.partition)))[0].done:
                        break
        except PersistenceError as exc:
            log.warning("cleanup: periods could not be summarized now: %s", exc.message)

    async def _expire_events(self, job: retention.Cleanup) -> CleanupSummary:
        """The event log's own, shorter retention (statements/partitions.py): each event
        partition past ``events_kept`` whose tasks are all inactive since is dropped."""
        (setting,) = await self._run(partitions.events_cutoff())
        if setting.cutoff is None:
            return CleanupSummary()
        done = CleanupSummary()
        for found in await self._run(partitions.expired_events(job.params, setting.cutoff)):
            freed = await self._drop_events(
                {**partitions.period(job.params, found), "cutoff": setting.cutoff}, found)
            if freed is None:
                break
            if freed:
                done = done._replace(partitions_dropped=done.partitions_dropped + 1,
                                     bytes_freed=done.bytes_freed + freed)
        return done

    async def _drop_events(self, params: dict[str, Any], found: Row) -> int | None:
        """One event partition: watchers below its events told to reload, the partition
        detached, read again, and dropped; the bytes freed (0: an event was written or a task
        came back to life meanwhile, and it is kept; None: this role may not detach)."""
        (parent,), (partition,) = found.parents, found.partitions
        pool = await self._ready()
        conn = await pool.getconn()
        try:
            try:  # the writer role may neither read a partition directly nor detach it
                top = await self._events_top(conn, partition)
                await conn.execute(partitions.EXPIRE_EVENTS, {**params, "top": top})
                await conn.execute(partitions.detach(parent, partition))
            except Exception as exc:
                if isinstance(translate(exc), PermissionDeniedError):
                    return None
                raise
            cur = await conn.execute(partitions.STILL_INACTIVE, params)
            still = await cur.fetchone()
            if still is None or not still.inactive or (
                    await self._events_top(conn, partition) > top):
                await self._attach_again(conn, [(parent, partition)], found)
                return 0
            cur = await conn.execute(partitions.SIZE, {"table": partition})
            size = await cur.fetchone()
            await conn.execute(partitions.drop(partition))
            log.info("cleanup: dropped the events of %s .. %s", found.lower, found.upper)
            return int(size.bytes) if size else 0
        except Exception as exc:
            if classify(exc) is None:
                raise
            raise translate(exc, operation="cleanup_old_tasks") from None
        finally:
            await pool.putconn(conn)

    @staticmethod
    async def _events_top(conn: AsyncConnection[Row], partition: str) -> int:
        cur = await conn.execute(partitions.events_top(partition))
        row = await cur.fetchone()
        return int(row.top) if row else 0

    @staticmethod
    async def _attach_again(conn: AsyncConnection[Row], detached: list[tuple[str, str]],
                            found: Row) -> None:
        for parent, partition in detached:
            await conn.execute(partitions.attach(parent, partition, found.lower, found.upper))

    # -- reads -------------------------------------------------------------------------------

    @operation()
    async def report(
        self, since: dt.datetime | None = None, until: dt.datetime | None = None, top: int = 10
    ) -> dict[str, Any]:
        """Failures by error code and category, busiest steps and per-day counts of the steps
        created in ``[since, until)``, read through the reporting views."""
        await self._ready()  # connected: the shape of the statement is known
        return report_data(await self._run(reporting.report(
            since, until, top, form=self._dialect.report_form)))

    @operation(ids=2)
    async def load_task_history(self, user_id: str, task_id: str) -> list[dict[str, Any]]:
        """``[{"step", "result": step_result.dict(), "timestamp", "status"}]`` by step."""
        await self._ready()  # connected: the shape of the statement is known
        return history_rows(await self._run(
            reads.load_history(user_id, task_id, form=self._dialect.load_form)))

    @operation(ids=2)
    async def check_task_status(self, user_id: str, task_id: str) -> TaskStatus:
        """The task's status; PENDING for an unknown task (as upstream; see get_task)."""
        record = await self.get_task(user_id, task_id)
        return record.status if record else TaskStatus.PENDING

    @operation(ids=2)
    async def get_task(self, user_id: str, task_id: str) -> TaskRecord | None:
        """The task's record (status, error, timestamps), or None when it is unknown."""
        found = await self._run(reads.get_task(user_id, task_id))
        return task_record(found[0]) if found else None

    @operation(ids=1)
    async def get_user_tasks(self, user_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """``[{"task_id", "last_updated", "status"}]``, newest first (upstream's shape)."""
        return user_task_rows(await self._run(reads.user_tasks(user_id, limit)))

    @operation(ids=1)
    async def list_tasks(
        self, user_id: str, *, limit: int = 100,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        error_code: ErrorCode | str | Iterable[ErrorCode | str] | None = None,
        step_name: str | None = None, since: dt.datetime | None = None,
        until: dt.datetime | None = None, cursor: str | None = None,
    ) -> Page[TaskRecord]:
        """A page of a user's tasks, newest first. Filters: ``status``, ``error_code`` (one
        or several), ``step_name``, ``since``/``until`` (activity time), ``cursor`` (a page's
        ``next_cursor``)."""
        statement = reads.list_tasks(
            user_id, limit=limit, status=status, error_code=error_code, step_name=step_name,
            since=since, until=until, cursor=cursor)
        return Page(*task_page(await self._run(statement), limit))

    @operation(ids=1)
    async def list_steps(
        self, user_id: str, *, limit: int = 100, task_id: str | None = None,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        error_code: ErrorCode | str | Iterable[ErrorCode | str] | None = None,
        step_name: str | None = None, since: dt.datetime | None = None,
        until: dt.datetime | None = None, cursor: str | None = None,
    ) -> Page[StepRecord]:
        """A page of a user's steps, newest first. Filters: ``task_id``, ``status``,
        ``error_code``, ``step_name``, ``since``/``until``, ``cursor``."""
        statement = reads.list_steps(
            user_id, limit=limit, task_id=task_id, status=status, error_code=error_code,
            step_name=step_name, since=since, until=until, cursor=cursor)
        return Page(*step_page(await self._run(statement), limit))

    # -- following ---------------------------------------------------------------------------

    def watch_task_history(
        self, user_id: str, task_id: str, *, after: str | None = None,
        until_finished: bool = True, poll_interval: float = 1.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Follow a task as it is written: every change already stored (after ``after``, the
        ``token`` of an event from an earlier watch), then each new step and each re-save as it
        is committed, in commit order; entries shaped as ``load_task_history``'s, each with a
        resume ``token``. With ``until_finished``, it ends once the task has ended and every
        step committed before that was yielded. Woken by LISTEN/NOTIFY (one connection per
        manager), else polling every ``poll_interval`` seconds (see watch.py). Arguments are
        checked at once; nothing runs until the first iteration."""
        watch = Watch(user_id, task_id, after)
        return self._follow(watch, watch.steps, until_finished,
                            checks.check_poll_interval(poll_interval))

    def watch_user_tasks(
        self, user_id: str, *, after: str | None = None, poll_interval: float = 1.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Follow a user's tasks: each status change (``{"task_id", "status", "error_code",
        "error_message", "timestamp", "token"}``) as it is committed, for a dashboard; every
        change already stored first (after ``after``). It never ends by itself."""
        watch = Watch(user_id, None, after)
        return self._follow(watch, watch.tasks, False, checks.check_poll_interval(poll_interval))

    async def _follow(
        self, watch: Watch, take: Callable[[list[Row]], Iterator[dict[str, Any]]],
        until_finished: bool, interval: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch loop: catch up, yield, wait for a wake-up (or ``interval``), again."""
        await self._ready()  # connected: the shape of the catch-up is known
        telemetry = self._telemetry
        name = "watch_user_tasks" if watch.task_id is None else "watch_task_history"
        waiter = await self._subscribe(watch)
        try:
            while True:
                if waiter is not None:
                    waiter.clear()
                with telemetry.catch_up(name):
                    horizon = self._dialect.horizon(watch)  # on Citus, the user's node's
                    if horizon is None:
                        rows = await self._run(watch.statement())
                    else:
                        node = await self._run(horizon)
                        rows = await self._run(watch.statement(int(node[0].horizon)))
                for entry in take(rows):
                    if telemetry.enabled:
                        telemetry.lag(name, dt.datetime.fromisoformat(entry["timestamp"]))
                    yield entry
                if until_finished and watch.finished:
                    return
                await self._idle(waiter, interval)
        finally:
            await self._unsubscribe(watch, waiter)

    async def _subscribe(self, watch: Watch) -> AsyncWaiter | None:
        """Wake-ups for ``watch``'s key, registered so writers notify; None when watchers
        poll (``ManagerBase._notified``)."""
        if not self._notified:
            return None
        if self._listener is None:
            await self._ready()
            self._listener = AsyncListener(libpq_conninfo(self.url), self._connect_kwargs())
        waiter = self._listener.subscribe(watch.user_id, watch.key)
        await self._run(watch.registration(self._listener.listener_id))
        return waiter

    async def _unsubscribe(self, watch: Watch, waiter: AsyncWaiter | None) -> None:
        listener = self._listener
        if waiter is None or listener is None:
            return
        if listener.unsubscribe(watch.user_id, watch.key, waiter) and self.connected:
            with suppress(PersistenceError):
                await self._run(watch.registration(listener.listener_id, stop=True))

    async def _idle(self, waiter: AsyncWaiter | None, interval: float) -> None:
        """Between catch-ups: until a notification, or ``interval`` when polling."""
        if waiter is None:
            await asyncio.sleep(interval)
            return
        listening = self._listener is not None and self._listener.listening
        await waiter.wait(HEARTBEAT if listening else interval)
