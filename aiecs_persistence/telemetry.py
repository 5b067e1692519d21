"""OpenTelemetry: the managers' calls as spans and metrics, free when it is not installed.

Every public call of both managers is wrapped by :func:`operation`: it measures the call (the
one measurement of it: ``get_performance_report()`` and the ``db.client.operation.duration``
histogram both read it) and, when ``opentelemetry-api`` can be imported (the ``otel`` extra),
opens a CLIENT span named after the method, a child of the caller's current span, with the
database semantic conventions (``db.system.name``, ``db.namespace``, ``db.operation.name``,
``db.collection.name``, ``server.address``, ``server.port``; ``error.type``, the
``ErrorCode``, on failure). A call made inside another (``check_task_status`` reads through
``get_task``) is part of the outer one's span and figures.

What only the library knows rides on the same spans and instruments:

* group commit: the statement that carries a batch is a span of its own (``aiecs.batch.size``)
  linked to each caller's span; each caller's span says how long it waited for its batch;
* retries: span events;
* watchers: a span per catch-up, and ``aiecs.watch.lag`` (a change's commit to its yield);
* retention: tasks deleted, partitions dropped, bytes freed;
* the pool: connections by state and callers waiting for one.

User and task ids are not attributes unless a manager's ``trace_ids`` setting says so (they can
be personal data). Without ``opentelemetry`` nothing of it is imported; with the API and no SDK
behind its global providers a manager skips even the API's no-op calls, and looks again at most
every ``IDLE_CHECK`` seconds whether an SDK has been set up since (the benchmark's ``telemetry``
case measures both).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from .errors import PersistenceError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
    from opentelemetry.trace import SpanContext
    from sqlalchemy.engine import URL

__all__ = ["OPERATIONS", "Telemetry", "command_span", "error_type", "operation", "revision_spans",
           "step_span", "telemetry_for"]

F = TypeVar("F", bound=Callable[..., Any])

#: The instrumentation scope of our spans and instruments.
SCOPE: Final = "aiecs_persistence"
#: The public calls :func:`operation` measures (the performance report keeps the statements of
#: other names: a batch of saves, a cleanup's partitions).
OPERATIONS: set[str] = set()
#: Which table a call is about, where one is (``db.collection.name``).
COLLECTIONS: Final = {
    "save_task_history": "task_history", "save_task_history_many": "task_history",
    "load_task_history": "task_history", "list_steps": "task_history",
    "start_task": "tasks", "finish_task": "tasks", "mark_task_as_cancelled": "tasks",
    "check_task_status": "tasks", "get_task": "tasks", "get_user_tasks": "tasks",
    "list_tasks": "tasks", "cleanup_old_tasks": "tasks",
}
#: Bucket boundaries (seconds) of the duration histograms, as the conventions advise.
DURATION_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: How often (seconds) a manager whose telemetry found no SDK looks for one again.
IDLE_CHECK: Final = 0.1

#: Set while a public call runs: a public call made inside it is part of it.
_inside: ContextVar[bool] = ContextVar("aiecs_persistence_call", default=False)


def error_type(exc: BaseException) -> str:
    """``error.type`` of a failure: its ``ErrorCode`` value (``E001`` …) for our errors, else
    the exception's class, as the conventions ask."""
    if isinstance(exc, PersistenceError):
        return exc.error_code.value
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def operation(ids: int = 0) -> Callable[[F], F]:
    """Decorate a public method of a manager (async or blocking): one measured call, and one
    span when OpenTelemetry is there. ``ids``: how many of its first arguments are ids
    (1: ``user_id``; 2: ``user_id, task_id``; -1: its records hold them), attributes only
    under ``trace_ids``, withheld from a failure's exception event otherwise."""

    def wrap(fn: F) -> F:
        name = fn.__name__
        OPERATIONS.add(name)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def call_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                if _inside.get():
                    return await fn(self, *args, **kwargs)
                begun = _begin(self, name, ids, args, kwargs)
                try:
                    result = await fn(self, *args, **kwargs)
                except BaseException as exc:
                    _finish(self, name, begun, exc)
                    raise
                _finish(self, name, begun, None)
                return result

            return cast(F, call_async)

        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _inside.get():
                return fn(self, *args, **kwargs)
            begun = _begin(self, name, ids, args, kwargs)
            try:
                result = fn(self, *args, **kwargs)
            except BaseException as exc:
                _finish(self, name, begun, exc)
                raise
            _finish(self, name, begun, None)
            return result

        return cast(F, call)

    return wrap


def _begin(manager: Any, name: str, ids: int, args: Sequence[Any], kwargs: Mapping[str, Any]
           ) -> tuple[Token[bool], Telemetry, Any, float]:
    """A public call starts: inside it from now on, its span, its start time."""
    token = _inside.set(True)
    telemetry: Telemetry = manager._telemetry
    return token, telemetry, telemetry.start(name, ids, args, kwargs), time.perf_counter()


def _finish(manager: Any, name: str, begun: tuple[Token[bool], Telemetry, Any, float],
            exc: BaseException | None) -> None:
    """A public call ends (``exc``: how it failed): its span, its one measurement."""
    token, telemetry, scope, started = begun
    _inside.reset(token)
    manager.metrics.record(name, telemetry.end(name, scope, started, exc), exc is None)


class Telemetry:
    """What a manager tells OpenTelemetry: nothing (this class, when ``opentelemetry`` cannot
    be imported). ``_Otel`` below does the telling; the managers call the same methods."""

    @property
    def enabled(self) -> bool:
        """Whether spans and metrics are made (the managers skip work only they need)."""
        return False

    def locate(self, url: URL) -> None:
        """The database's attributes, once the manager's URL is known."""

    def watch_pool(self, manager: Any) -> None:
        """Report ``manager``'s pool (connections by state, callers waiting) while it lives."""

    def start(self, name: str, ids: int, args: Sequence[Any], kwargs: Mapping[str, Any]
              ) -> Any:
        """A call's span, current until :meth:`end` (None: no span)."""
        return None

    def end(self, name: str, scope: Any, started: float, exc: BaseException | None) -> float:
        """The call's end: its duration (seconds since ``started``), recorded."""
        return time.perf_counter() - started

    def current(self) -> SpanContext | None:
        """The current span's context, for a queued save's link to its caller."""
        return None

    def batch(self, size: int, callers: Iterable[SpanContext | None]) -> Any:
        """The span of one statement carrying ``size`` queued saves, linked to their callers'
        spans; a context manager."""
        return _NOTHING

    def waited(self, seconds: float) -> None:
        """A queued save's wait for its batch, on its caller's span."""

    def retry(self, statement: str, attempt: int, exc: BaseException | str) -> None:
        """A retried attempt, an event on the current span."""

    def catch_up(self, operation: str) -> Any:
        """The span of one catch-up of a watcher; a context manager."""
        return _NOTHING

    def lag(self, operation: str, committed: dt.datetime) -> None:
        """A watcher yields a change committed at ``committed``: the seconds since."""

    def retention(self, tasks: int, partitions: int, freed: int) -> None:
        """What a cleanup deleted."""


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


_NOTHING: Final = _Nothing()


def telemetry_for(trace_ids: bool, tracer_provider: Any = None, meter_provider: Any = None
                  ) -> Telemetry:
    """A manager's telemetry: OpenTelemetry's when its API can be imported, else none."""
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return Telemetry()
    return _Otel(trace_ids, tracer_provider, meter_provider)


#: The histograms: attribute of ``_Instruments``, name, unit, description, bucket boundaries.
HISTOGRAMS: Final = (
    ("duration", "db.client.operation.duration", "s",
     "Duration of the calls of aiecs-persistence's managers.", DURATION_BUCKETS),
    ("batch_size", "aiecs.group_commit.batch.size", "{save}",
     "Saves written by one statement of group commit.", BATCH_BUCKETS),
    ("wait", "aiecs.group_commit.wait.duration", "s",
     "How long a queued save waited for its batch to be written.", DURATION_BUCKETS),
    ("lag", "aiecs.watch.lag", "s",
     "From a change's commit to a watcher's yield of it.", DURATION_BUCKETS),
)
#: The counters: attribute, name, unit, description.
COUNTERS: Final = (
    ("deleted", "aiecs.retention.deleted", "{task}",
     "Tasks deleted by retention (cleanup_old_tasks)."),
    ("dropped", "aiecs.retention.partitions.dropped", "{partition}",
     "Partitions dropped whole by retention."),
    ("freed", "aiecs.retention.freed", "By", "Bytes of the partitions retention dropped."),
)


class _Instruments:
    """The instruments of one meter provider, made once (a provider refuses a second
    instrument of one name), with the pools its observable instruments read."""

    duration: Histogram
    batch_size: Histogram
    wait: Histogram
    lag: Histogram
    deleted: Counter
    dropped: Counter
    freed: Counter

    def __init__(self, meter: Meter) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self.managers: weakref.WeakSet[Any] = weakref.WeakSet()
        for attribute, name, unit, description, buckets in HISTOGRAMS:
            setattr(self, attribute, meter.create_histogram(
                name, unit=unit, description=description,
                explicit_bucket_boundaries_advisory=buckets))
        for attribute, name, unit, description in COUNTERS:
            setattr(self, attribute, meter.create_counter(name, unit=unit,
                                                          description=description))
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [self._connections], unit="{connection}",
            description="Connections of the managers' pools, by state.")
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", [self._pending], unit="{request}",
            description="Callers waiting for a connection of a manager's pool.")

    def _pools(self) -> Iterable[tuple[str, Any, int]]:
        for manager in list(self.managers):
            pool = manager._pool
            if pool is not None:
                yield manager._telemetry.pool_name, pool, len(manager._held)

    def _connections(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, pool, held in self._pools():
            stats = pool.get_stats()
            idle = stats.get("pool_available", 0) + held
            used = stats.get("pool_size", 0) - idle
            base = {"db.client.connection.pool.name": name}
            yield self._observation(idle, {**base, "db.client.connection.state": "idle"})
            yield self._observation(used, {**base, "db.client.connection.state": "used"})

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, pool, _ in self._pools():
            yield self._observation(pool.get_stats().get("requests_waiting", 0),
                                    {"db.client.connection.pool.name": name})


#: Instruments by meter provider (kept for the process's life, as providers are).
_INSTRUMENTS: dict[Any, _Instruments] = {}


def _instruments(provider: Any) -> _Instruments:
    from opentelemetry import metrics

    provider = provider if provider is not None else metrics.get_meter_provider()
    found = _INSTRUMENTS.get(provider)
    if found is None:
        from . import __version__

        found = _INSTRUMENTS[provider] = _Instruments(provider.get_meter(SCOPE, __version__))
    return found


class _TraceIds(logging.Filter):
    """Gives the library's log records made inside a span its ``trace_id`` and ``span_id``
    (hexadecimal, as OpenTelemetry writes them), so logs and traces join."""

    def filter(self, record: logging.LogRecord) -> bool:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def _log_trace_ids() -> None:
    logger = logging.getLogger(SCOPE)
    if not any(isinstance(f, _TraceIds) for f in logger.filters):
        logger.addFilter(_TraceIds())


def _of_the_api(provider: Any) -> bool:
    """Whether ``provider`` is one the API package itself makes (its proxy before an SDK is set
    up, or its no-op): one that records nothing."""
    module = type(provider).__module__
    return any(module == api or module.startswith(f"{api}.")
               for api in ("opentelemetry.trace", "opentelemetry.metrics"))


class _Otel(Telemetry):
    def __init__(self, trace_ids: bool, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from . import __version__

        self._trace = trace
        self._context = context
        self._kind = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self._metrics = _instruments(meter_provider)
        # Providers given to the manager are used as they are; the global ones are looked at
        # (``_idle``) until one of them is an SDK's. While idle, the calls made for every save
        # skip the API (``start``, ``end``, ``batch``; the managers ask ``enabled`` before the
        # others a save makes); the rarer calls go through the API's no-op.
        self._live = tracer_provider is not None or meter_provider is not None
        self._look_again = 0.0
        self._trace_ids = trace_ids
        self._where: dict[str, Any] = {"db.system.name": "postgresql"}
        self._attributes: dict[str, dict[str, Any]] = {}
        self.pool_name = "aiecs_persistence"
        _log_trace_ids()

    def _idle(self) -> bool:
        """No SDK behind the API's global providers (looked at every ``IDLE_CHECK`` s at most):
        the calls skip even the API's no-op."""
        if self._live:
            return False
        now = time.monotonic()
        if now < self._look_again:
            return True
        from opentelemetry import metrics, trace

        self._look_again = now + IDLE_CHECK
        self._live = not (_of_the_api(trace.get_tracer_provider())
                          and _of_the_api(metrics.get_meter_provider()))
        return not self._live

    @property
    def enabled(self) -> bool:
        return not self._idle()

    def locate(self, url: URL) -> None:
        where: dict[str, Any] = {"db.system.name": "postgresql"}
        if url.database:
            where["db.namespace"] = url.database
        address = server_address(url)
        if address:
            where["server.address"] = address
        where["server.port"] = url.port or 5432
        self._where, self._attributes = where, {}
        self.pool_name = f"{address or 'localhost'}:{where['server.port']}/{url.database or ''}"

    def watch_pool(self, manager: Any) -> None:
        self._metrics.managers.add(manager)

    def _for(self, name: str) -> dict[str, Any]:
        attributes = self._attributes.get(name)
        if attributes is None:
            attributes = {**self._where, "db.operation.name": name}
            if name in COLLECTIONS:
                attributes["db.collection.name"] = COLLECTIONS[name]
            self._attributes[name] = attributes
        return attributes

    def start(self, name: str, ids: int, args: Sequence[Any], kwargs: Mapping[str, Any]
              ) -> Any:
        if self._idle():
            return None
        span = self._tracer.start_span(name, kind=self._kind, attributes=self._for(name))
        if not span.is_recording():
            return None
        named: dict[str, str] = {"records": ""} if ids < 0 else {}
        for i, key in enumerate(("user_id", "task_id")[:max(ids, 0)]):
            value = args[i] if i < len(args) else kwargs.get(key)
            if isinstance(value, str) and value:
                named[key] = value
        if self._trace_ids:
            for key, value in named.items():
                span.set_attribute(f"aiecs.{key}", value)
            named = {}
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token, "server.port" in self._where, named

    def end(self, name: str, scope: Any, started: float, exc: BaseException | None) -> float:
        seconds = time.perf_counter() - started
        if scope is None and self._idle():
            return seconds
        if exc is None:
            self._metrics.duration.record(seconds, self._for(name))
        else:
            kind = error_type(exc)
            self._metrics.duration.record(seconds, {**self._for(name), "error.type": kind})
        if scope is not None:
            span, token, located, named = scope
            self._context.detach(token)
            if not located:  # the URL was resolved during the call
                span.set_attributes(self._for(name))
            if exc is not None:
                span.set_status(self._error)
                span.set_attribute("error.type", kind)
                span.record_exception(exc, attributes=_withheld(exc, named) if named else None)
            span.end()
        return seconds

    def current(self) -> SpanContext | None:
        context = self._trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def batch(self, size: int, callers: Iterable[SpanContext | None]) -> Any:
        from opentelemetry.trace import Link

        if self._idle():
            return _NOTHING
        self._metrics.batch_size.record(size, self._where)
        links: list[Link] = [Link(caller) for caller in callers if caller is not None]
        attributes = {**self._for("save_task_history"), "aiecs.batch.size": size}
        # Its own trace's root (empty context), not a child of whichever caller led it.
        return self._tracer.start_as_current_span(
            "save_task_history (batch)", _root(), kind=self._kind, attributes=attributes,
            links=links)

    def waited(self, seconds: float) -> None:
        self._metrics.wait.record(seconds, self._where)
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attribute("aiecs.group_commit.wait.duration", seconds)

    def retry(self, statement: str, attempt: int, exc: BaseException | str) -> None:
        span = self._trace.get_current_span()
        if span.is_recording():
            kind = exc if isinstance(exc, str) else error_type(exc)
            span.add_event("retry", {"aiecs.statement": statement, "aiecs.attempt": attempt,
                                     "error.type": kind})

    def catch_up(self, operation: str) -> Any:
        return self._tracer.start_as_current_span(
            f"{operation} (catch-up)", kind=self._kind, attributes=self._for(operation))

    def lag(self, operation: str, committed: dt.datetime) -> None:
        seconds = time.time() - committed.timestamp()
        self._metrics.lag.record(max(0.0, seconds), self._for(operation))

    def retention(self, tasks: int, partitions: int, freed: int) -> None:
        where = self._where
        self._metrics.deleted.add(tasks, where)
        if partitions:
            self._metrics.dropped.add(partitions, where)
            self._metrics.freed.add(freed, where)


def server_address(url: URL) -> str | None:
    """``server.address``: the URL's host, or the Unix socket's directory it names in its
    query (``?host=/run/postgresql``), as the conventions say for sockets."""
    if url.host:
        return url.host
    given = url.query.get("host")
    first = given[0] if isinstance(given, tuple) and given else given
    return first if isinstance(first, str) and first else None


def _withheld(exc: BaseException, named: Mapping[str, str]) -> dict[str, str]:
    """The exception event's message and stack trace with the call's ids replaced by their
    names (``<user_id>``): our messages name the task a failure is about, and ids can be
    personal data (``trace_ids=True`` keeps them)."""
    import re
    import traceback

    if "records" in named:  # the ids are the records': withhold the message whole
        what = f"{type(exc).__name__} ({error_type(exc)}): message withheld (it names tasks)"
        return {"exception.message": what, "exception.stacktrace": what}

    def withhold(text: str) -> str:
        for key, value in named.items():
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", f"<{key}>", text)
        return text

    return {"exception.message": withhold(str(exc)),
            "exception.stacktrace": withhold("".join(traceback.format_exception(exc)))}


def _root() -> Context:
    """An empty context: a span started in it is the root of its own trace."""
    from opentelemetry.context import Context

    return Context()


# -- migrations and the command line ------------------------------------------------------------


@contextlib.contextmanager
def step_span(name: str) -> Iterator[None]:
    """An INTERNAL span of the global tracer around a step that is no manager call (a
    migration command, the upgrade of a manager that connects); nothing without
    OpenTelemetry."""
    try:
        from opentelemetry import trace
    except ImportError:
        yield
        return
    with trace.get_tracer(SCOPE).start_as_current_span(name):
        yield


def revision_spans() -> Callable[..., None]:
    """Alembic's ``on_version_apply`` hook: each revision applied (or reverted) becomes a span,
    from the end of the one before (or from this call) to its own end, named
    ``migrate <revision>``; nothing without OpenTelemetry."""
    try:
        from opentelemetry import trace
    except ImportError:
        return lambda **_: None
    tracer = trace.get_tracer(SCOPE)
    last = time.time_ns()

    def applied(*, step: Any, **_: Any) -> None:
        nonlocal last
        now = time.time_ns()
        revision = step.up_revision_id if step.is_upgrade else step.down_revision_ids
        span = tracer.start_span(f"migrate {revision}", start_time=last, attributes={
            "aiecs.migration.revision": str(revision),
            "aiecs.migration.direction": "upgrade" if step.is_upgrade else "downgrade"})
        span.end(end_time=now)
        last = now

    return applied


# -- the command line ---------------------------------------------------------------------------


@contextlib.contextmanager
def command_span(argv: Sequence[str]) -> Iterator[None]:
    """``aiecs-db``'s run as a trace, when the OpenTelemetry SDK is installed and the standard
    environment asks for one: ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` name the
    exporters (``otlp`` when only ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; with neither, none:
    a command line does not try to reach a collector nobody configured; one that is not
    installed is skipped with a warning when named), ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` the resource, ``OTEL_SDK_DISABLED=true`` turns it off. The
    command is one span (``aiecs-db cleanup``), the manager's calls its children; everything
    is exported before the process exits. Without the SDK: nothing."""
    providers = _configure_from_environment()
    if providers is None:
        yield
        return
    from opentelemetry.trace import Status, StatusCode

    tracer_provider, meter_provider = providers
    words = [arg for arg in argv if not arg.startswith("-")]
    name = " ".join(["aiecs-db", *words[:1]])
    tracer = tracer_provider.get_tracer(SCOPE)
    try:
        with tracer.start_as_current_span(name, record_exception=False,
                                          set_status_on_exception=False) as span:
            try:
                yield
            except SystemExit as exc:  # typer ends every run so: non-zero is a failure
                if exc.code not in (None, 0):
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute("error.type", f"exit {exc.code}")
                raise
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", error_type(exc))
                raise
    finally:
        tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()


def _configure_from_environment() -> tuple[Any, Any] | None:
    """The SDK's tracer and meter providers, made global, with the exporters the environment
    names (None: no SDK, or it is disabled, or no exporter could be made)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return None
    span_exporters = _exporters("traces")
    metric_exporters = _exporters("metrics")
    if not span_exporters and not metric_exporters:
        return None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "aiecs-db")})
    tracer_provider = TracerProvider(resource=resource)
    for exporter in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    meter_provider = None
    if metric_exporters:
        meter_provider = MeterProvider(resource=resource, metric_readers=[
            PeriodicExportingMetricReader(exporter) for exporter in metric_exporters])
        metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def _exporters(signal: str) -> list[Any]:
    """The exporters ``OTEL_<SIGNAL>_EXPORTER`` names, from the entry points the SDK and the
    exporter packages register."""
    from importlib.metadata import entry_points

    given = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER")
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"}
    if given is None and not endpoint & set(os.environ):
        return []  # nothing asked for: no exporter trying to reach a collector nobody runs
    names = [n.strip() for n in (given or "otlp").split(",") if n.strip() not in ("", "none")]
    made = []
    for name in names:
        found = list(entry_points(group=f"opentelemetry_{signal}_exporter", name=name))
        if not found:
            if given is not None:
                logging.getLogger(SCOPE).warning(
                    "OTEL_%s_EXPORTER: no exporter %r is installed", signal.upper(), name)
            continue
        made.append(found[0].load()())
    return made
