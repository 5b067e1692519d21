"""OpenTelemetry (telemetry.py): the managers' spans, metrics and log records, read back from
the SDK's in-memory span exporter and metric reader; and nothing of it without the package."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aiecs_persistence import (
    DatabaseManager,
    InvalidTransitionError,
    SyncDatabaseManager,
    TaskStepResult,
)
from aiecs_persistence.telemetry import _of_the_api, server_address

from ..conftest import conninfo
from ..managers import close, make_manager
from .test_resilience import kill_connections

SECRET = "s3cret-Pa55"


def done(name: str, step: int = 0) -> TaskStepResult:
    return TaskStepResult(name, {"step": step}, True, "ok", "completed")


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def settings(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name in (None, s.name)]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [point for resource in (data.resource_metrics if data else ())
                for scope in resource.scope_metrics for m in scope.metrics
                if m.name == metric for point in m.data.data_points]


@pytest.fixture
def otel() -> Iterator[Otel]:
    """A tracer and a meter provider of this test's own (the global ones are left alone)."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def with_password(url: Any) -> Any:
    """The URL with a password (the server trusts local connections: it is never checked), so
    that the tests can look for it in what telemetry emits."""
    return url.set(password=SECRET)


def everything_emitted(otel: Otel) -> str:
    """Every span's name, attributes, events and links, and every metric point's attributes."""
    parts: list[Any] = []
    for span in otel.finished():
        parts += [span.name, dict(span.attributes or {}),
                  [(e.name, dict(e.attributes or {})) for e in span.events],
                  [dict(link.attributes or {}) for link in span.links]]
    data = otel.reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                parts += [metric.name, [dict(p.attributes or {}) for p in metric.data.data_points]]
    return json.dumps(parts, default=str)


def test_a_save_inside_a_callers_span_is_its_child_with_the_conventions(kind, db_url, otel):
    manager = make_manager(kind, url=with_password(db_url), **otel.settings())
    try:
        with otel.tracer_provider.get_tracer("app").start_as_current_span("request") as parent:
            manager.save_task_history("user-7", "task-9", 0, done("op"))
        manager.load_task_history("user-7", "task-9")
    finally:
        close(manager)
    (save,) = otel.finished("save_task_history")
    assert save.parent is not None and save.parent.span_id == parent.get_span_context().span_id
    assert save.context.trace_id == parent.get_span_context().trace_id
    assert save.kind is SpanKind.CLIENT
    assert save.instrumentation_scope is not None
    assert save.instrumentation_scope.name == "aiecs_persistence"
    assert save.status.status_code is StatusCode.UNSET
    assert dict(save.attributes or {}) == {
        "db.system.name": "postgresql", "db.namespace": db_url.database,
        "db.operation.name": "save_task_history", "db.collection.name": "task_history",
        "server.address": server_address(db_url), "server.port": db_url.port or 5432}
    assert save.attributes["server.address"]  # a host, or the Unix socket's directory
    (load,) = otel.finished("load_task_history")
    assert load.parent is None  # no span was current: a root
    emitted = everything_emitted(otel)
    for secret in (SECRET, "user-7", "task-9"):  # ids only with trace_ids=True
        assert secret not in emitted


def test_a_failing_save_is_an_error_span_with_its_code(kind, db_url, otel, caplog):
    manager = make_manager(kind, url=db_url, **otel.settings())
    try:
        manager.save_task_history("user-7", "task-9", 0, done("op"))
        with caplog.at_level(logging.DEBUG, logger="aiecs_persistence"), \
                pytest.raises(InvalidTransitionError, match="user-7/task-9"):
            manager.save_task_history("user-7", "task-9", 0,
                                      TaskStepResult("op", 1, status="running"))
    finally:
        close(manager)
    failed = [s for s in otel.finished("save_task_history")
              if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert failed[0].attributes is not None and failed[0].attributes["error.type"] == "E001"
    (event,) = failed[0].events
    assert event.name == "exception" and event.attributes is not None
    # The error names the task for its caller; the trace and the log withhold the ids.
    assert "task <user_id>/<task_id>" in str(event.attributes["exception.message"])
    emitted = everything_emitted(otel) + " ".join(r.getMessage() for r in caplog.records)
    assert "user-7" not in emitted and "task-9" not in emitted
    assert any("E001" in r.getMessage() for r in caplog.records)
    counts = {p.attributes.get("error.type"): p.count
              for p in otel.points("db.client.operation.duration")
              if p.attributes["db.operation.name"] == "save_task_history"}
    assert counts == {None: 1, "E001": 1}


def test_64_concurrent_saves_yield_batch_spans_linking_every_caller(kind, db_url, otel,
                                                                    caplog):
    saves = [("u", f"task-{i}", 0, done("op")) for i in range(64)]
    tracer = otel.tracer_provider.get_tracer("app")
    settings = {"url": db_url, "auto_migrate": False, "pool_size": 4, "max_overflow": 0,
                **otel.settings()}
    if kind == "async":
        async def main() -> dict[str, Any]:
            async with DatabaseManager(**settings) as db:
                async def one(save: tuple[str, str, int, Any]) -> None:
                    with tracer.start_as_current_span(f"caller {save[1]}"):
                        await db.save_task_history(*save)

                await asyncio.gather(*(one(save) for save in saves))
                return db.get_performance_report()

        report = asyncio.run(main())
    else:
        with SyncDatabaseManager(**settings) as db, ThreadPoolExecutor(64) as pool:
            def call(save: tuple[str, str, int, Any]) -> None:
                with tracer.start_as_current_span(f"caller {save[1]}"):
                    db.save_task_history(*save)

            list(pool.map(call, saves))
            report = db.get_performance_report()
    # Nothing was added to a span after it ended (the SDK would warn): the batches are written
    # in a context of their own, not in that of the call that started their writer.
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
    saved = {s.context.span_id: s for s in otel.finished("save_task_history")}
    assert len(saved) == 64
    batches = otel.finished("save_task_history (batch)")
    assert batches and report["save_task_history (batch)"]["count"] == len(batches)
    linked: list[int] = []
    for batch in batches:
        assert batch.parent is None  # its own trace, linked to its callers'
        assert batch.attributes is not None
        assert batch.attributes["aiecs.batch.size"] == len(batch.links) > 1
        linked += [link.context.span_id for link in batch.links]
    assert len(linked) == len(set(linked)) and set(linked) <= set(saved)
    for span_id in linked:  # each caller in a batch says how long it waited for it
        attributes = saved[span_id].attributes or {}
        assert attributes["aiecs.group_commit.wait.duration"] >= 0
    assert report["save_task_history"]["count"] == 64
    (duration,) = [p for p in otel.points("db.client.operation.duration")
                   if p.attributes["db.operation.name"] == "save_task_history"]
    assert duration.count == 64  # every call, batched or not
    sizes = otel.points("aiecs.group_commit.batch.size")
    assert sizes and sizes[0].sum >= len(linked)
    waits = otel.points("aiecs.group_commit.wait.duration")
    assert waits and waits[0].count >= len(linked)


def test_ids_are_attributes_only_when_asked(db_url, otel):
    manager = make_manager("sync", url=db_url, trace_ids=True, **otel.settings())
    try:
        manager.save_task_history("user-7", "task-9", 0, done("op"))
        manager.list_tasks("user-7")
    finally:
        close(manager)
    (save,) = otel.finished("save_task_history")
    assert save.attributes is not None
    assert (save.attributes["aiecs.user_id"], save.attributes["aiecs.task_id"]) == (
        "user-7", "task-9")
    (listing,) = otel.finished("list_tasks")
    assert listing.attributes is not None and listing.attributes["aiecs.user_id"] == "user-7"
    assert "aiecs.task_id" not in listing.attributes


def test_a_retry_is_an_event_of_its_calls_span(kind, db_url, psql, otel):
    manager = make_manager(kind, url=db_url, backoff_base=0.01, **otel.settings())
    try:
        manager.save_task_history("u", "t", 0, done("op"))
        psql.close()
        assert kill_connections(db_url) >= 1
        manager.save_task_history("u", "t", 1, done("op", 1))
    finally:
        close(manager)
    last = otel.finished("save_task_history")[-1]
    retries = [e for e in last.events if e.name == "retry"]
    assert retries and retries[0].attributes is not None
    assert retries[0].attributes["aiecs.attempt"] == 1
    assert retries[0].attributes["error.type"] == "E005"  # a database error: connection lost
    assert last.status.status_code is StatusCode.UNSET  # and the save then succeeded


def test_log_records_inside_a_span_carry_its_ids(kind, db_url, otel, caplog):
    manager = make_manager(kind, url=db_url, **otel.settings())
    try:
        manager.connect()
        with caplog.at_level(logging.DEBUG, logger="aiecs_persistence"):
            manager.get_task("u", "t")
    finally:
        close(manager)
    (span,) = otel.finished("get_task")
    records = [r for r in caplog.records if r.getMessage().startswith("get_task ok")]
    assert records
    assert records[0].trace_id == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert records[0].span_id == format(span.context.span_id, "016x")  # type: ignore[attr-defined]


def test_a_watch_is_a_span_per_catch_up_and_its_lag_a_histogram(kind, db_url, otel):
    manager = make_manager(kind, url=db_url, **otel.settings())
    try:
        for step in range(3):
            manager.save_task_history("u", "t", step, done("op", step))
        manager.finish_task("u", "t", "completed")
        stream = manager.watch_task_history("u", "t")
        if kind == "async":
            async def drain() -> list[Any]:
                return [entry async for entry in stream]

            assert manager.loop is not None
            entries = manager.loop.run_until_complete(drain())
        else:
            entries = list(stream)
    finally:
        close(manager)
    assert len(entries) == 3
    catch_ups = otel.finished("watch_task_history (catch-up)")
    assert len(catch_ups) == 1  # one catch-up saw the ended task: not a span per entry
    (lag,) = otel.points("aiecs.watch.lag")
    assert lag.count == 3 and lag.min >= 0


def test_cleanup_and_the_pool_are_measured(kind, db_url, psql, otel):
    psql.execute("INSERT INTO tasks (user_id, task_id, updated_at) "
                 "SELECT 'u', 'old-' || i, now() - interval '60 days' "
                 "FROM generate_series(1, 5) i")
    manager = make_manager(kind, url=db_url, pool_size=2, **otel.settings())
    try:
        assert manager.cleanup_old_tasks(30) == 5
        connections = {p.attributes["db.client.connection.state"]: p.value
                       for p in otel.points("db.client.connection.count")}
        pending = otel.points("db.client.connection.pending_requests")
    finally:
        close(manager)
    (deleted,) = otel.points("aiecs.retention.deleted")
    assert deleted.value == 5
    assert set(connections) == {"idle", "used"} and connections["idle"] >= 2
    assert connections["used"] == 0  # between calls, none is in use
    assert [p.value for p in pending] == [0]


HIDE_OPENTELEMETRY = """
import sys, json
sys.modules["opentelemetry"] = None  # as if the extra were not installed
from aiecs_persistence import SyncDatabaseManager, TaskStepResult
with SyncDatabaseManager(url=sys.argv[1], auto_migrate=False) as db:
    db.save_task_history("u", "t", 0, TaskStepResult("op", 1, True, "ok", "completed"))
    report = db.get_performance_report()
print(json.dumps({"loaded": sorted(m for m, module in sys.modules.items()
                             if m.startswith("opentelemetry") and module is not None),
                  "saves": report["save_task_history"]["count"]}))
"""


def test_without_opentelemetry_nothing_of_it_is_imported(db_url):
    done_ = subprocess.run([sys.executable, "-c", HIDE_OPENTELEMETRY, str(
        db_url.render_as_string(hide_password=False))], capture_output=True, text=True,
        timeout=120)
    assert done_.returncode == 0, done_.stderr
    assert json.loads(done_.stdout) == {"loaded": [], "saves": 1}
    with psycopg.connect(conninfo(db_url)) as conn:
        assert conn.execute("SELECT count(*) FROM task_history").fetchone() == (1,)


def test_a_failing_bulk_withholds_its_message(kind, db_url, otel):
    manager = make_manager(kind, url=db_url, **otel.settings())
    try:
        manager.save_task_history("user-7", "task-9", 0, done("op"))
        with pytest.raises(InvalidTransitionError, match="user-7/task-9"):
            manager.save_task_history_many([
                ("user-7", "task-8", 0, done("op")),
                ("user-7", "task-9", 0, TaskStepResult("op", 1, status="running"))])
    finally:
        close(manager)
    (failed,) = otel.finished("save_task_history_many")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.events[0].attributes is not None
    assert "withheld" in str(failed.events[0].attributes["exception.message"])
    assert "user-7" not in everything_emitted(otel)


SDK_SET_UP_LATER = """
import sys, json, time
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from aiecs_persistence import SyncDatabaseManager, TaskStepResult
from aiecs_persistence.telemetry import IDLE_CHECK
ok = TaskStepResult("op", 1, True, "ok", "completed")
with SyncDatabaseManager(url=sys.argv[1], auto_migrate=False) as db:
    before = db._telemetry.enabled
    db.save_task_history("u", "before", 0, ok)  # the API alone: no SDK behind it yet
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    time.sleep(IDLE_CHECK * 1.5)
    db.save_task_history("u", "after", 0, ok)
    saves = db.get_performance_report()["save_task_history"]["count"]
data = reader.get_metrics_data()
counts = [p.count for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
          if m.name == "db.client.operation.duration" for p in m.data.data_points
          if p.attributes["db.operation.name"] == "save_task_history"]
print(json.dumps({"before": before, "spans": [s.name for s in spans.get_finished_spans()],
                  "durations": counts, "saves": saves}))
"""


def test_with_the_api_alone_nothing_is_made_until_an_sdk_is_set_up(db_url):
    """A manager made before the application sets up the SDK (the API's global providers are
    its no-op proxies then) skips the API's calls, and reports from the moment there is one."""
    done_ = subprocess.run([sys.executable, "-c", SDK_SET_UP_LATER, str(
        db_url.render_as_string(hide_password=False))], capture_output=True, text=True,
        timeout=120)
    assert done_.returncode == 0, done_.stderr
    # The later save and the close are spans; the first save only counts in the report.
    assert json.loads(done_.stdout) == {"before": False,
                                        "spans": ["save_task_history", "disconnect"],
                                        "durations": [1], "saves": 2}


def test_only_the_apis_own_providers_count_as_no_sdk():
    from opentelemetry import metrics, trace

    assert _of_the_api(trace.NoOpTracerProvider()) and _of_the_api(metrics.NoOpMeterProvider())
    assert _of_the_api(trace.ProxyTracerProvider())
    assert not _of_the_api(TracerProvider()) and not _of_the_api(MeterProvider())
    vendor = type("VendorProvider", (), {"__module__": "opentelemetry.tracing_vendor"})
    assert not _of_the_api(vendor())
