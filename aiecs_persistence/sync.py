"""``SyncDatabaseManager``: the blocking twin of :class:`~aiecs_persistence.DatabaseManager`.

Same methods, same arguments, same results, same statements (``statements.py``); only the
I/O style differs. Thread-safe: each call checks its own connection out of the pool.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from psycopg import Connection
from psycopg.errors import UniqueViolation
from psycopg_pool import ConnectionPool
from sqlalchemy.engine import URL

from . import statements as sql
from .config import libpq_conninfo
from .core import ManagerBase, connection_lost, returns_rows
from .domain import TaskStatus
from .errors import ValidationError
from .records import Page, StepRecord, TaskRecord

__all__ = ["SyncDatabaseManager"]

T = TypeVar("T")


class SyncDatabaseManager(ManagerBase):
    """Blocking persistence of task execution history (see ``DatabaseManager``)."""

    def __init__(
        self, db_config: Mapping[str, Any] | None = None, *, url: str | URL | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(db_config, url=url, **settings)
        self._pool: ConnectionPool[Connection[tuple[Any, ...]]] | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._pool is not None

    def connect(self, min_size: int | None = None, max_size: int | None = None) -> None:
        self.init_connection_pool(min_size, max_size)

    def init_connection_pool(self, min_size: int | None = None, max_size: int | None = None
                             ) -> None:
        with self._lock:
            if self._pool is not None:
                return
            self.prepare_schema()
            pool: ConnectionPool[Connection[tuple[Any, ...]]] = ConnectionPool(
                libpq_conninfo(self.url), name="aiecs-sync",
                **self.settings.pool_kwargs(min_size, max_size),
            )
            pool.open()
            self._pool = pool

    def init_database_schema(self) -> bool:
        self.prepare_schema()
        return True

    def disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def close(self) -> None:
        self.disconnect()

    def __enter__(self) -> SyncDatabaseManager:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def _ready(self) -> ConnectionPool[Connection[tuple[Any, ...]]]:
        if self._pool is None:
            self.connect()
        assert self._pool is not None
        return self._pool

    def _with_retries(self, statement: sql.Statement,
                      work: Callable[[Connection[tuple[Any, ...]]], T]) -> T:
        """``work`` on a pooled connection, retried by ``retry_delay``'s policy."""
        pool = self._ready()
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                with pool.connection() as conn:
                    result = work(conn)
            except Exception as exc:
                delay = self.retry_delay(statement, exc, attempt, started)
                if connection_lost(exc):
                    pool.check()  # other idle connections are likely gone too
                time.sleep(delay)
                continue
            self.observe(statement, started, True)
            return result

    def _run(self, statement: sql.Statement) -> list[tuple[Any, ...]]:
        local = self.settings.local_timeouts()

        def execute(conn: Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            if local is None:
                cur = conn.execute(statement.sql, statement.params)
            else:
                with conn.pipeline(), conn.transaction():
                    conn.execute(sql.SET_LOCAL_TIMEOUTS, local)
                    cur = conn.execute(statement.sql, statement.params)
            return cur.fetchall() if returns_rows(cur) else []

        return self._with_retries(statement, execute)

    # -- writes ------------------------------------------------------------------------------

    def save_task_history(self, user_id: str, task_id: str, step: int, step_result: Any) -> bool:
        full, fast = self._save_statements(user_id, task_id, step, step_result)
        if fast is not None:
            try:
                self._run(fast)
                return True
            except ValidationError as exc:
                if not self._task_was_gone(exc, user_id, task_id):
                    raise
        self._run(full)
        self._touch(user_id, task_id)
        return True

    def save_task_history_many(self, records: Iterable[Any]) -> int:
        sql.check_records(records)
        statement = sql.bulk_statement(records)

        def load(conn: Connection[tuple[Any, ...]]) -> int:
            chunk = sql.BulkChunk(self.settings.max_result_bytes)
            with conn.transaction():
                local = self.settings.local_timeouts()
                if local is not None:
                    conn.execute(sql.SET_LOCAL_TIMEOUTS, local)
                source = iter(records)
                with ThreadPoolExecutor(1, thread_name_prefix="aiecs-bulk") as builder:
                    pending = builder.submit(chunk.fill, source)
                    while (taken := pending.result()) is not None:
                        pending = builder.submit(chunk.fill, source)  # the next, meanwhile
                        self._write_chunk(conn, *taken)
            return chunk.seen

        return self._with_retries(statement, load)

    @staticmethod
    def _write_chunk(conn: Connection[tuple[Any, ...]], rows: list[tuple[Any, ...]],
                     tasks: sql.Statement) -> None:
        """One chunk of the bulk path (see statements.py): tasks, then COPY, else merge."""
        with conn.cursor() as cur:
            cur.execute(tasks.sql, tasks.params)
            try:
                with conn.transaction(), cur.copy(sql.BULK_COPY) as copy:
                    for row in rows:
                        copy.write_row(row)
            except UniqueViolation:  # some steps exist already: merge this chunk
                cur.execute(sql.BULK_STAGING)
                cur.execute(sql.BULK_STAGING_CLEAR)
                with cur.copy(sql.BULK_STAGING_COPY) as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(sql.BULK_MERGE)

    def start_task(self, user_id: str, task_id: str) -> TaskRecord:
        return sql.task_record(self._run(sql.start_task(user_id, task_id))[0])

    def finish_task(
        self, user_id: str, task_id: str, status: TaskStatus | str,
        error_code: Any = None, error_message: str | None = None,
    ) -> TaskRecord:
        statement = sql.finish_task(user_id, task_id, status, error_code, error_message)
        return sql.finished_task(self._run(statement), statement)

    def mark_task_as_cancelled(self, user_id: str, task_id: str) -> bool:
        return bool(self._run(sql.cancel_task(user_id, task_id))[0][0])

    def cleanup_old_tasks(
        self, days_old: float = 30, *, dry_run: bool = False,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        batch = self.settings.cleanup_batch_size
        now = dt.datetime.now(dt.UTC)
        self._forget_touched()
        statement = sql.cleanup_batch(days_old, batch, now, dry_run=dry_run)
        if dry_run:
            return int(self._run(statement)[0][0])
        total = 0
        while True:
            deleted = int(self._run(statement)[0][0])
            total += deleted
            if on_batch is not None:
                on_batch(deleted)
            if deleted < batch:
                return total

    # -- reads -------------------------------------------------------------------------------

    def report(self, since: dt.datetime | None = None, until: dt.datetime | None = None,
                 top: int = 10) -> dict[str, Any]:
        """Failures by error code and category, busiest steps and per-day counts of the steps
        created in ``[since, until)``, read through the reporting views."""
        return sql.report_data(self._run(sql.report(since, until, top)))

    def load_task_history(self, user_id: str, task_id: str) -> list[dict[str, Any]]:
        return sql.history_rows(self._run(sql.load_history(user_id, task_id)))

    def check_task_status(self, user_id: str, task_id: str) -> TaskStatus:
        record = self.get_task(user_id, task_id)
        return record.status if record else TaskStatus.PENDING

    def get_task(self, user_id: str, task_id: str) -> TaskRecord | None:
        rows = self._run(sql.get_task(user_id, task_id))
        return sql.task_record(rows[0]) if rows else None

    def get_user_tasks(self, user_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return sql.user_task_rows(self._run(sql.user_tasks(user_id, limit)))

    def list_tasks(self, user_id: str, *, limit: int = 100, **filters: Any) -> Page[TaskRecord]:
        statement = sql.list_tasks(user_id, limit=limit, **filters)
        return Page(*sql.task_page(self._run(statement), limit))

    def list_steps(self, user_id: str, *, limit: int = 100, **filters: Any) -> Page[StepRecord]:
        statement = sql.list_steps(user_id, limit=limit, **filters)
        return Page(*sql.step_page(self._run(statement), limit))
