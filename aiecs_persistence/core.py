"""What the async and the blocking manager share: settings, the schema check on connect,
the retry policy, error translation and the performance counters.

The managers themselves only move statements (built by ``statements/``, in the form the
``dialect`` chosen at connect wants) to PostgreSQL and back, each in its own I/O style.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypedDict, Unpack

from . import retry
from .config import libpq_conninfo, resolve_url, safe_url, with_connect_timeout
from .deadline import arm
from .dialect import PLAIN, Dialect, dialect_for
from .errors import PersistenceError, RetryExhaustedError, SchemaMismatchError, ValidationError
from .group import MAX_BATCH, WRITERS, GroupCommit
from .jsonb import DEFAULT_MAX_BYTES
from .records import CleanupSummary
from .sqlstates import (
    CHECK_VIOLATION,
    FOREIGN_KEY_VIOLATION,
    classify,
    dropped,
    translate,
    unreachable,
)
from .statements import Statement
from .statements.bulk import BULK_CHUNK
from .statements.saves import SAVE_STEP_ONLY, save_step
from .telemetry import OPERATIONS, telemetry_for

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from . import migrate

log: Final = logging.getLogger("aiecs_persistence")
#: How long a task this manager saved to counts as freshly active (seconds).
TOUCH_TTL: Final = 1.0
#: How many such tasks a manager remembers (the oldest is forgotten first).
TOUCH_MAX: Final = 10_000
#: Seconds a probe of the server waits for its connection, unless ``connect_timeout`` says.
PROBE_TIMEOUT: Final = 5


@dataclass(frozen=True)
class Settings:
    """Tunables of a manager (keyword arguments of both constructors)."""

    pool_size: int = 4
    max_overflow: int = 4
    pool_timeout: float = 30.0
    #: Seconds to wait for a new connection; None: the URL's ``connect_timeout``, else 10.
    connect_timeout: int | None = None
    statement_timeout_ms: int | None = 30_000
    lock_timeout_ms: int | None = 10_000
    max_attempts: int = retry.MAX_ATTEMPTS
    backoff_base: float = retry.BACKOFF_BASE
    backoff_max: float = retry.BACKOFF_MAX
    max_result_bytes: int = DEFAULT_MAX_BYTES
    auto_migrate: bool = True
    cleanup_batch_size: int = 1_000
    #: Records per chunk of ``save_task_history_many`` (each chunk is validated, then COPYed).
    bulk_chunk_size: int = BULK_CHUNK
    #: psycopg prepares a statement on a connection after this many runs of it; ``None``
    #: turns server-side prepared statements off (PgBouncer < 1.21 in transaction mode), the
    #: saves' own (prepared.py) included.
    prepare_threshold: int | None = 5
    #: Added to the server's ``statement_timeout`` to make a call's client-side deadline
    #: (deadline.py): a call whose server never answers ends this long after its statement
    #: should have been cancelled, with ``QueryTimeoutError``.
    deadline_grace_ms: int = 1_000
    #: Watchers are woken by LISTEN/NOTIFY (one listening connection per manager); False:
    #: they poll every ``poll_interval`` (always so under ``transaction_pooling``).
    notifications: bool = True
    #: Behind a connection pooler in transaction mode (PgBouncer ``pool_mode = transaction``):
    #: no server-side prepared statements, no session settings at connect; each call runs as
    #: ``BEGIN; SET LOCAL`` the timeouts``; statement; COMMIT``, pipelined (docs/scaling.md).
    transaction_pooling: bool = False
    #: Group commit (group.py): saves that arrive while ``group_commit_writers`` saves are
    #: in flight queue, and go out together, up to ``group_commit_max_batch`` per statement.
    #: False: every save takes its own connection and statement.
    group_commit: bool = True
    group_commit_writers: int = WRITERS
    group_commit_max_batch: int = MAX_BATCH
    #: OpenTelemetry (telemetry.py): user and task ids as span attributes (off: they can be
    #: personal data).
    trace_ids: bool = False
    #: OpenTelemetry's tracer and meter providers; None: the global ones.
    tracer_provider: Any = None
    meter_provider: Any = None

    def connect_args(self, url_options: str | None = None,
                     search_path: str | None = None) -> dict[str, Any]:
        """psycopg's connection arguments; ``url_options``, the URL's own ``options``
        (``-c search_path=…``), come first, then the schema of our objects as the whole
        ``search_path`` (so that no schema created later can shadow them) and our timeouts
        (which win a conflict)."""
        timeout = {} if self.connect_timeout is None else {"connect_timeout": self.connect_timeout}
        if self.transaction_pooling:  # a pooler would refuse (or drop) startup options
            return timeout
        options = [url_options] if url_options else []
        if search_path is not None:
            options.append(f"-c search_path={_option_value(quoted(search_path))}")
        if self.statement_timeout_ms is not None:
            options.append(f"-c statement_timeout={int(self.statement_timeout_ms)}")
        if self.lock_timeout_ms is not None:
            options.append(f"-c lock_timeout={int(self.lock_timeout_ms)}")
        args: dict[str, Any] = dict(timeout)
        if options:
            args["options"] = " ".join(options)
        return args

    def pool_kwargs(self, min_size: int | None = None, max_size: int | None = None,
                    url_options: str | None = None, search_path: str | None = None
                    ) -> dict[str, Any]:
        """Arguments of psycopg_pool's ``ConnectionPool``/``AsyncConnectionPool``: at least
        ``pool_size`` connections, up to ``pool_size + max_overflow`` (upstream's
        ``min_size``/``max_size`` override them), each in autocommit with the timeouts."""
        low = max(1, min_size if min_size is not None else self.pool_size)
        high = max(low, max_size if max_size is not None else self.pool_size + self.max_overflow)
        prepare = None if self.transaction_pooling else self.prepare_threshold
        kwargs = {"autocommit": True, "prepare_threshold": prepare, "client_encoding": "utf8",
                  **self.connect_args(url_options, search_path)}
        return {"min_size": low, "max_size": high, "timeout": self.pool_timeout,
                "kwargs": kwargs, "open": False}

    def local_settings(self, search_path: str | None = None) -> dict[str, str] | None:
        """The timeouts (and ``search_path``, the schema of our objects) for
        ``statements.SET_LOCAL`` under ``transaction_pooling`` (``0`` means no limit, as in
        PostgreSQL); None when they travel at connect."""
        if not self.transaction_pooling:
            return None
        local = {"statement_timeout": str(int(self.statement_timeout_ms or 0)),
                 "lock_timeout": str(int(self.lock_timeout_ms or 0))}
        if search_path is not None:
            local["search_path"] = quoted(search_path)
        return local

    def deadline(self, statements: int) -> float | None:
        """Seconds a call of ``statements`` statements may take, or None (no timeout)."""
        if not self.statement_timeout_ms:
            return None
        return (self.statement_timeout_ms * statements + self.deadline_grace_ms) / 1000

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
        return retry.backoff(attempt, self.backoff_base, self.backoff_max)


class SettingsKwargs(TypedDict, total=False):
    """The settings as keyword arguments of both managers' constructors, for type checkers
    (``Settings`` documents each; a test keeps the two in step)."""

    pool_size: int
    max_overflow: int
    pool_timeout: float
    connect_timeout: int | None
    statement_timeout_ms: int | None
    lock_timeout_ms: int | None
    max_attempts: int
    backoff_base: float
    backoff_max: float
    max_result_bytes: int
    auto_migrate: bool
    cleanup_batch_size: int
    bulk_chunk_size: int
    prepare_threshold: int | None
    deadline_grace_ms: int
    notifications: bool
    transaction_pooling: bool
    group_commit: bool
    group_commit_writers: int
    group_commit_max_batch: int
    trace_ids: bool
    tracer_provider: Any
    meter_provider: Any


@dataclass
class OperationStats:
    """Calls of one operation: how many, how many failed, and their durations (seconds)."""

    count: int = 0
    errors: int = 0
    total: float = 0.0
    fastest: float = float("inf")
    slowest: float = 0.0

    def add(self, seconds: float, ok: bool) -> None:
        self.count += 1
        self.errors += 0 if ok else 1
        self.total += seconds
        self.fastest = min(self.fastest, seconds)
        self.slowest = max(self.slowest, seconds)

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "errors": self.errors, "avg_time": self.total / self.count,
                "min_time": self.fastest, "max_time": self.slowest}


class Metrics:
    """Per-operation counters and latency statistics (the seed's monitoring report)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, OperationStats] = {}

    def record(self, operation: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self._stats.setdefault(operation, OperationStats()).add(seconds, ok)

    def report(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {op: stats.as_dict() for op, stats in self._stats.items()}


class ManagerBase:
    """State and logic shared by :class:`DatabaseManager` and :class:`SyncDatabaseManager`."""

    def __init__(
        self,
        db_config: Mapping[str, Any] | None = None,
        *,
        url: str | URL | None = None,
        **settings: Unpack[SettingsKwargs],
    ) -> None:
        unknown = set(settings) - set(Settings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        self.settings = Settings(**settings)
        for name in ("group_commit_writers", "group_commit_max_batch"):
            if getattr(self.settings, name) < 1:
                raise ValidationError(f"{name}: must be at least 1", field=name)
        #: The server's dialect (plain or Citus), found at connect (``dialect.py``).
        self._dialect: Dialect = PLAIN
        #: The schema of our objects, found at connect: every connection's whole search_path.
        self._schema: str | None = None
        #: The pool's sizes given to ``connect`` (upstream's ``min_size``/``max_size``).
        self._pool_sizes: tuple[int | None, int | None] = (None, None)
        #: A connection was lost: the next attempt asks the server first (``_probe``).
        self._suspect = False
        #: The server refused a probe since: once it answers, the pool is replaced.
        self._outage_seen = False
        self._group = GroupCommit(
            self.settings.group_commit_writers, self.settings.group_commit_max_batch,
            one_user=lambda: self._dialect.one_user_batches,
        ) if self.settings.group_commit else None
        #: Saves take the lean path (prepared.py): not behind a transaction-mode pooler, and
        #: not with server-side prepared statements turned off.
        self._lean = not self.settings.transaction_pooling and (
            self.settings.prepare_threshold is not None)
        #: Oldest first (an ``OrderedDict``: forgetting the oldest is O(1); a dict's first key
        #: is found by scanning past every slot freed before it).
        self._touched: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._touched_lock = threading.Lock()
        self._db_config = db_config
        self._url_arg = url
        self._url: URL | None = None
        self.metrics = Metrics()
        #: Spans and metrics (telemetry.py): OpenTelemetry's when it is installed.
        self._telemetry = telemetry_for(self.settings.trace_ids, self.settings.tracer_provider,
                                        self.settings.meter_provider)
        #: What the last ``cleanup_old_tasks`` did (the command line reports it).
        self.last_cleanup = CleanupSummary()

    # -- where -----------------------------------------------------------------------------

    @property
    def url(self) -> URL:
        """The resolved database URL (resolving may start the embedded server)."""
        if self._url is None:
            self._url = resolve_url(self._db_config, self._url_arg)
            self._telemetry.locate(self._url)
        return self._url

    def __repr__(self) -> str:
        where = safe_url(self._url) if self._url is not None else "unresolved"
        return f"<{type(self).__name__} {where} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def _connect_kwargs(self) -> dict[str, Any]:
        """psycopg's connection arguments for a connection of this manager's own (the
        listener's): the pool's, but autocommit."""
        kwargs = dict(self._pool_kwargs(None, None)["kwargs"])
        kwargs.pop("autocommit", None)
        return kwargs

    def _pool_kwargs(self, min_size: int | None, max_size: int | None) -> dict[str, Any]:
        """The pool's arguments for this manager's URL (its ``options`` kept); its connections
        return rows as named tuples, read by name (``statements/rows.py``)."""
        from psycopg.rows import namedtuple_row

        options = self.url.query.get("options")
        given = options if isinstance(options, str) else " ".join(options or ())
        kwargs = self.settings.pool_kwargs(min_size, max_size, given or None, self._schema)
        kwargs["kwargs"]["row_factory"] = namedtuple_row
        return kwargs

    def _probe(self) -> None:
        """Whether the server takes connections: one of our own, opened and closed. Raises
        what opening it raises (transient: a refused or dropped connection), and remembers
        that it did; when it opens, the suspicion is lifted."""
        import psycopg

        kwargs = self._connect_kwargs()
        kwargs["connect_timeout"] = kwargs.get("connect_timeout") or PROBE_TIMEOUT
        try:
            psycopg.connect(libpq_conninfo(self.url), **kwargs).close()
        except psycopg.Error:
            self._outage_seen = True
            raise
        self._suspect = False

    def _local_settings(self) -> dict[str, str] | None:
        """What each call sets for its transaction under ``transaction_pooling``."""
        return self.settings.local_settings(self._schema)

    # -- schema ------------------------------------------------------------------------------

    def prepare_schema(self) -> migrate.SchemaStatus:
        """Bring an empty (or older) database to head when ``auto_migrate``; else, or after,
        raise ``SchemaMismatchError`` unless the schema is at head with matching enums."""
        from . import migrate  # Alembic loads on connect, not on import

        url = with_connect_timeout(self.url, self.settings.connect_timeout)
        status = self._inspect_schema(url)
        if (not status.at_head or status.distribution_problems) and self.settings.auto_migrate:
            if status.current is not None and not migrate.is_known_revision(status.current):
                raise SchemaMismatchError(
                    f"the database is at revision {status.current}, which this version of "
                    "aiecs-persistence does not know (newer code migrated it?); upgrade "
                    "aiecs-persistence"
                )
            log.info("migrating %s to %s", safe_url(self.url), status.head)
            migrate.upgrade(url)
            status = self._inspect_schema(url)
        if not status.ok:
            raise SchemaMismatchError(status.describe())
        self._dialect = dialect_for(status.on_citus)
        self._schema = status.schema
        return status

    def _inspect_schema(self, url: URL) -> migrate.SchemaStatus:
        """``migrate.inspect``, again after a connection the server killed (during the
        inspection, or while it was starting), by the retry policy of the saves. A wrong
        password or a missing database is raised at once."""
        from . import migrate

        attempt = 0
        while True:
            attempt += 1
            try:
                return migrate.inspect(url)
            except PersistenceError as exc:
                # (A server that refuses connections was asked again already: migrate.connection.)
                if not dropped(exc) or unreachable(exc):
                    raise
                if attempt >= self.settings.max_attempts:
                    raise RetryExhaustedError(
                        f"{exc.message} (gave up after {attempt} attempts)", attempts=attempt,
                        sqlstate=exc.sqlstate) from None
                delay = self.settings.backoff(attempt)
                log.log(logging.WARNING if attempt == 1 else logging.DEBUG,
                        "inspect the schema: connection lost (attempt %d of %d), retrying "
                        "in %.3fs: %s", attempt, self.settings.max_attempts, delay,
                        exc.message)
                time.sleep(delay)

    # -- tasks this manager touched lately (the save's fast path) -------------------------

    def _recently_touched(self, user_id: str, task_id: str) -> bool:
        """Whether a save of this manager touched the task less than ``TOUCH_TTL`` ago, so
        its activity is fresh and the next save may write the step alone. Activity
        (``tasks.updated_at``) is therefore recorded to within two seconds."""
        touched = self._touched.get((user_id, task_id))
        return touched is not None and time.monotonic() - touched < TOUCH_TTL

    def _touch(self, user_id: str, task_id: str) -> None:
        key, now = (user_id, task_id), time.monotonic()
        with self._touched_lock:
            touched = self._touched
            touched[key] = now
            touched.move_to_end(key)
            if len(touched) > TOUCH_MAX:
                touched.popitem(last=False)

    def _save_statements(
        self, user_id: Any, task_id: Any, step: Any, step_result: Any
    ) -> tuple[Statement, Statement | None]:
        """The full save, and the step-only one when this manager touched the task less than
        ``TOUCH_TTL`` ago (None otherwise)."""
        full = save_step(user_id, task_id, step, step_result,
                         max_result_bytes=self.settings.max_result_bytes)
        fresh = self._dialect.step_only_saves and self._recently_touched(user_id, task_id)
        return full, replace(full, sql=SAVE_STEP_ONLY) if fresh else None

    @property
    def _notified(self) -> bool:
        """Whether watchers are woken by notifications: not when ``notifications=False``, nor
        behind a transaction-mode pooler (no session to LISTEN in), nor on Citus (they are
        raised on the workers, out of reach of a client of the coordinator): they poll."""
        s = self.settings
        return s.notifications and not s.transaction_pooling and self._dialect.notifications

    def _saves(self, saves: Sequence[Statement]) -> Statement:
        """The statement that writes ``save_step`` statements of distinct keys together (on
        Citus, one user's: ``GroupCommit.one_user``)."""
        return self._dialect.batch(saves, self.settings.lock_timeout_ms)

    def _task_was_gone(self, exc: ValidationError, user_id: str, task_id: str) -> bool:
        """After a save failed: whether its task was not there for it: deleted meanwhile (a
        step-only save), or created by a writer that committed after the save began, so that
        the save could not read its bucket (``saves.py``). The task is then forgotten, and the
        caller saves again the full way."""
        no_bucket = exc.sqlstate == CHECK_VIOLATION and "no partition" in exc.message
        if exc.sqlstate != FOREIGN_KEY_VIOLATION and not no_bucket:
            return False
        self._forget_touched(user_id, task_id)
        return True

    def _forget_touched(self, user_id: str | None = None, task_id: str | None = None) -> None:
        """Forget one task (or, with no argument, every task)."""
        with self._touched_lock:
            if user_id is None or task_id is None:
                self._touched.clear()
            else:
                self._touched.pop((user_id, task_id), None)

    # -- errors and retries ----------------------------------------------------------------

    def retry_delay(
        self, statement: Statement, exc: Exception, attempt: int, started: float
    ) -> float:
        """After a failed attempt: the seconds to wait before the next one, or raise.

        Only idempotent statements are retried, only after transient failures, and at most
        ``max_attempts`` times in all. Database errors are raised as their
        ``PersistenceError``; anything else (our own ``ValidationError``) as it is.
        """
        kind = classify(exc)
        if kind is not None and kind.transient and statement.idempotent and (
            attempt < self.settings.max_attempts
        ):
            delay = self.settings.backoff(attempt)
            failure = translate(exc)
            log.log(
                logging.WARNING if attempt == 1 else logging.DEBUG,
                "%s: transient failure (attempt %d of %d), retrying in %.3fs: %s",
                statement.name, attempt, self.settings.max_attempts, delay, failure.message,
            )
            self._telemetry.retry(statement.name, attempt, failure)
            return delay
        self.observe(statement, started, False)
        if kind is None:
            raise exc
        err = translate(exc, operation=statement.name)
        if isinstance(err, RetryExhaustedError):
            err = RetryExhaustedError(
                f"{statement.name}: gave up after {attempt} attempt(s): {err.message}",
                attempts=attempt, sqlstate=err.sqlstate,
            )
        # The caller receives the error: it is theirs to log, not ours (DEBUG only, and by
        # its code: the message names the task, and ids can be personal data).
        log.debug("%s failed: %s %s", statement.name, err.error_code.value, type(err).__name__)
        raise err from None

    def _deadline(
        self, conn: Any, statement: Statement, statements: int | None = None
    ) -> AbstractContextManager[object]:
        """The client-side deadline of ``statement`` on ``conn`` (or of ``statements``
        statements): ``with manager._deadline(conn, statement): …``."""
        count = statements if statements is not None else statement.statements
        seconds = None if count is None else self.settings.deadline(count)
        if seconds is None:
            return nullcontext()
        return arm(conn.pgconn.socket, seconds, statement.name)

    def observe(self, statement: Statement, started: float, ok: bool) -> None:
        """Record one statement (since ``started``, a ``perf_counter`` time) in the metrics,
        unless a public call of its name is measured already (``telemetry.operation``)."""
        elapsed = time.perf_counter() - started
        if statement.name not in OPERATIONS:
            self.metrics.record(statement.name, elapsed, ok)
        if ok and log.isEnabledFor(logging.DEBUG):
            log.debug("%s ok in %.2f ms", statement.name, elapsed * 1000,
                      extra={"operation": statement.name})

    def get_performance_report(self) -> dict[str, dict[str, float]]:
        """Per operation: count, errors, avg_time, min_time, max_time (seconds)."""
        return self.metrics.report()


#: libpq's ``PQTRANS_IDLE`` and ``PGRES_TUPLES_OK`` (psycopg.pq's TransactionStatus.IDLE and
#: ExecStatus.TUPLES_OK; a test checks them), so that importing the managers loads no psycopg.
TRANSACTION_IDLE: Final = 0
TUPLES_OK: Final = 2


def quoted(schema: str) -> str:
    """``schema`` as a SQL identifier (for ``search_path``)."""
    return '"' + schema.replace('"', '""') + '"'


def _option_value(value: str) -> str:
    """``value`` inside libpq's ``options``, where spaces separate arguments."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def reusable(conn: Any) -> bool:
    """Whether a connection a call just used may serve the next one as it is: open and idle
    (not in a transaction, not broken)."""
    return not conn.closed and conn.pgconn.transaction_status == TRANSACTION_IDLE


def returns_rows(cursor: Any) -> bool:
    """Whether the statement just run returned rows (cheaper than building ``description``)."""
    result = cursor.pgresult
    return result is not None and result.status == TUPLES_OK
