"""aiecs-persistence against raw psycopg 3, same server, same schema, same run.

    .venv/bin/python benchmarks/run.py                # full size (about 3 minutes)
    .venv/bin/python benchmarks/run.py --scale 0.01   # a quick smoke run (CI)
    .venv/bin/python benchmarks/run.py --only citus --citus-url postgresql://…/aiecs
                                                      # a save on Citus vs plain PostgreSQL

The server is ``--url``, else ``AIECS_DATABASE_URL``, else the embedded PostgreSQL. A fresh
database (``aiecs_bench`` unless ``--database``) is created on it, migrated, filled by the
benchmark itself (seeded, deterministic) and dropped at the end (``--keep`` keeps it). A
Citus coordinator's database (one with the ``citus`` extension: Citus does not propagate
``CREATE DATABASE``) is used as it is: it must hold no tasks, and is emptied at the end.

Every case prints our figure, the raw-psycopg baseline measured in the same run, their ratio
and whether the target is met (ratios, not absolute times, are the targets: the machines are
noisy). Latency cases alternate ours and the baseline call by call, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import upstream
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.table import Table
from upstream import UpstreamManager

from aiecs_persistence import (
    DatabaseManager,
    SyncDatabaseManager,
    TaskStepResult,
    embedded,
    migrate,
    names,
    roles,
    scopes,
)
from aiecs_persistence.config import libpq_conninfo, normalize_url, resolve_url
from aiecs_persistence.records import encode_cursor

console = Console(width=120)
COLUMNS = ("user_id, task_id, step, step_name, result, completed, message, status, "
           "error_code, error_message")
INSERT_STEP = (f"INSERT INTO task_history ({COLUMNS}) VALUES "
               "(%s, %s, %s, %s, %s::jsonb, %s, %s, %s::task_status, %s::error_code, %s)")
LOAD = ("SELECT step, step_name, result, completed, message, status, error_code, "
        "error_message, updated_at FROM task_history WHERE user_id = %s AND task_id = %s "
        "ORDER BY step")
LIST_FIRST = ("SELECT user_id, task_id, status, error_code, error_message, created_at, "
              "updated_at, started_at, finished_at FROM tasks WHERE user_id = %s "
              "ORDER BY updated_at DESC, task_id DESC LIMIT %s")
LIST_AFTER = ("SELECT user_id, task_id, status, error_code, error_message, created_at, "
              "updated_at, started_at, finished_at FROM tasks WHERE user_id = %s "
              "AND (updated_at, task_id) < (%s, %s) "
              "ORDER BY updated_at DESC, task_id DESC LIMIT %s")
#: The report as plain SQL would write it (one CTE of the window's steps, read five times, a
#: count(DISTINCT …) sort per figure): the baseline of the report case, on the same data.
REPORT_PLAIN = """
WITH h AS (
  SELECT user_id, task_id, step_name, status, error_code, error_name, error_category,
         created_at
  FROM step_details
  WHERE created_at >= COALESCE(%(since)s::timestamptz, '-infinity')
    AND created_at < COALESCE(%(until)s::timestamptz, 'infinity')
)
SELECT
  (SELECT jsonb_build_object('steps', count(*),
                             'tasks', count(DISTINCT (user_id, task_id)),
                             'failures', count(*) FILTER (WHERE error_code IS NOT NULL))
   FROM h),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.failures DESC, x.error_code), '[]')
   FROM (SELECT error_code, error_name, error_category, count(*) AS failures,
                count(DISTINCT (user_id, task_id)) AS tasks
         FROM h WHERE error_code IS NOT NULL
         GROUP BY error_code, error_name, error_category) x),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.failures DESC, x.category), '[]')
   FROM (SELECT error_category AS category, count(*) AS failures
         FROM h WHERE error_code IS NOT NULL GROUP BY error_category) x),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.steps DESC, x.step_name), '[]')
   FROM (SELECT step_name, count(*) AS steps,
                count(*) FILTER (WHERE error_code IS NOT NULL) AS failures
         FROM h GROUP BY step_name ORDER BY count(*) DESC, step_name
         LIMIT %(top)s) x),
  (SELECT COALESCE(jsonb_agg(x ORDER BY x.day), '[]')
   FROM (SELECT ((created_at AT TIME ZONE 'UTC')::date)::text AS day, count(*) AS steps,
                count(*) FILTER (WHERE status = 'completed') AS completed,
                count(*) FILTER (WHERE error_code IS NOT NULL) AS failures
         FROM h GROUP BY 1) x)
"""
ROUNDS = 5
#: The telemetry case's managers (one has no opentelemetry) and its four results.
TELEMETRY_WHO = {"api": "API without SDK", "sdk": "SDK, in-memory exporter"}
#: The row security case's managers: the same writer role with it and without it; a scoped one.
SECURITY_WHO = {"on": "unscoped writer, row-level security forced",
                "scoped": "scoped writer (its policies evaluated)"}
#: Their targets: an unscoped writer pays nothing measurable; a scoped one, its policies (the
#: patterns read once per statement and policy).
SECURITY_LIMITS = (("on", 1.03), ("scoped", 1.25))
TELEMETRY_CASES = ("sequential saves, API without SDK", "sequential saves, SDK",
                   "64 coroutines, API without SDK", "64 coroutines, SDK")
PAIRED_NOTE = (f"{ROUNDS} rounds, ours and the baseline back to back in alternating order; "
               "figures are medians, the ratio the median of the per-round ratios")
STEP_NAMES = ("search.web", "fetch.page", "llm.plan", "llm.generate", "parse.pdf",
              "tool.python", "store.vector", "report.write")


@dataclass
class Result:
    case: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    ok: bool | None
    note: str = ""


# -- data ---------------------------------------------------------------------------------------


def step_result(rng: random.Random, step: int) -> TaskStepResult:
    name = STEP_NAMES[step % len(STEP_NAMES)]
    if rng.random() < 0.1:
        return TaskStepResult(name, None, False, f"{name} failed", "failed", "E003",
                              "tool raised ValueError")
    payload = {"tokens": rng.randint(20, 4000), "score": round(rng.random(), 4),
               "summary": "lorem ipsum dolor sit amet " * rng.randint(1, 4)}
    return TaskStepResult(name, payload, True, f"{name} done", "completed")


Record = tuple[str, str, int, TaskStepResult]


def records(user: str, tasks: int, steps: int, seed: int, start: int = 0) -> Iterator[Record]:
    rng = random.Random(seed)
    for t in range(start, start + tasks):
        for s in range(steps):
            yield user, f"task-{t}", s, step_result(rng, s)


def raw_row(user: str, task: str, step: int, r: TaskStepResult) -> tuple[Any, ...]:
    return (user, task, step, r.step, json.dumps(r.result), r.completed, r.message, r.status,
            r.error_code, r.error_message)


def paired(rounds: dict[str, list[float]]) -> tuple[float, float, float]:
    """Median rates and the median of per-round ratios (each round's two runs are adjacent in
    time, so a slow spell of the machine hits both)."""
    ratios = [o / b for o, b in zip(rounds["ours"], rounds["base"], strict=True)]
    return (statistics.median(rounds["ours"]), statistics.median(rounds["base"]),
            statistics.median(ratios))


def one(row: tuple[Any, ...] | None, whole: bool = False) -> Any:
    """The single value (or, with ``whole``, the row) of a one-row query."""
    if row is None:
        raise RuntimeError("expected a row")
    return row if whole else row[0]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def fmt_ms(samples: list[float]) -> str:
    return f"{median_ms(samples):.3f} ms"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def latency_result(case: str, ours: list[float], base: list[float], limit: float,
                   note: str = "") -> Result:
    ratio = statistics.median(ours) / statistics.median(base)
    return Result(case, fmt_ms(ours), fmt_ms(base), ratio, f"median ≤ {limit}×",
                  ratio <= limit, note)


def sdk_floor(tracer_provider: Any, meter_provider: Any) -> float:
    """Seconds the OpenTelemetry SDK itself takes, here, for what each call costs at least: a
    CLIENT span with the conventions' six attributes made current and ended, and one record
    of a histogram with the same attributes (median of 20 runs of 500)."""
    from opentelemetry import context, trace

    tracer = tracer_provider.get_tracer("aiecs_bench_floor")
    histogram = meter_provider.get_meter("aiecs_bench_floor").create_histogram("floor", "s")
    attributes = {"db.system.name": "postgresql", "db.namespace": "bench",
                  "server.address": "127.0.0.1", "server.port": 5432,
                  "db.operation.name": "save_task_history", "db.collection.name": "task_history"}
    runs = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(500):
            span = tracer.start_span("floor", kind=trace.SpanKind.CLIENT, attributes=attributes)
            token = context.attach(trace.set_span_in_context(span))
            histogram.record(0.001, attributes)
            context.detach(token)
            span.end()
        runs.append((time.perf_counter() - t0) / 500)
    return statistics.median(runs)


def floor_note(floor: float, save: float) -> str:
    return (f"the SDK's own floor here (one span with these attributes and one histogram "
            f"record, no database): {floor * 1e6:.0f} µs a call, {floor / save:.0%} of a "
            f"save's {save * 1e6:.0f} µs")


# -- the cases ------------------------------------------------------------------------------


class Bench:
    def __init__(self, url: Any, scale: float, report: Callable[[Result], None]) -> None:
        self.url = url
        self.conninfo = libpq_conninfo(url)
        self.scale = scale
        self.report = report

    def n(self, full: int, minimum: int = 10) -> int:
        return max(minimum, int(full * self.scale))

    async def create_tasks(self, conn: psycopg.AsyncConnection[Any], user: str, count: int,
                           spaced: bool = False) -> None:
        async with conn.cursor() as cur, cur.copy(
            "COPY tasks (user_id, task_id, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            base = time.time() - count - 10
            for t in range(count):
                when = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(base + t)) if (
                    spaced) else "now"
                await copy.write_row((user, f"task-{t}", "running", when, when))

    async def single(self, db: DatabaseManager, conn: psycopg.AsyncConnection[Any]) -> None:
        count = self.n(5000)
        await self.create_tasks(conn, "single-base", count // 10 + 1)
        data = list(records("x", count // 10 + 1, 10, seed=1))[:count]
        ours: list[float] = []
        base: list[float] = []
        for i, (_, task, step, r) in enumerate(data):
            t0 = time.perf_counter()
            await db.save_task_history("single-ours", task, step, r)
            t1 = time.perf_counter()
            await conn.execute(INSERT_STEP, raw_row("single-base", task, step, r))
            t2 = time.perf_counter()
            if i >= 20:  # warm-up: psycopg prepares statements after 5 runs
                ours.append(t1 - t0)
                base.append(t2 - t1)
        self.report(latency_result(f"single: save_task_history ×{count}, one coroutine",
                                   ours, base, 1.5,
                                   "ours upserts the task and the step in one statement"))

    def blocking(self) -> None:
        count = self.n(5000)
        data = list(records("x", count // 10 + 1, 10, seed=2))[:count]
        ours: list[float] = []
        base: list[float] = []
        with SyncDatabaseManager(url=self.url, auto_migrate=False) as db, psycopg.connect(
            self.conninfo, autocommit=True
        ) as conn:
            with conn.cursor() as cur, cur.copy("COPY tasks (user_id, task_id) FROM STDIN") as cp:
                for t in range(count // 10 + 1):
                    cp.write_row(("block-base", f"task-{t}"))
            for i, (_, task, step, r) in enumerate(data):
                t0 = time.perf_counter()
                db.save_task_history("block-ours", task, step, r)
                t1 = time.perf_counter()
                conn.execute(INSERT_STEP, raw_row("block-base", task, step, r))
                t2 = time.perf_counter()
                if i >= 20:
                    ours.append(t1 - t0)
                    base.append(t2 - t1)
        self.report(latency_result(f"blocking: SyncDatabaseManager.save_task_history ×{count}",
                                   ours, base, 1.5))

    async def concurrent(self, conn: psycopg.AsyncConnection[Any]) -> None:
        total, workers = self.n(20_000, 64), 64
        per = total // workers
        rounds: dict[str, list[float]] = {"ours": [], "base": []}
        for rnd in range(ROUNDS):
            user = f"conc{rnd}"
            await self.create_tasks(conn, f"{user}-base", workers)
            data = [list(records("x", 1, per, seed=100 + w)) for w in range(workers)]
            order = ("ours", "base") if rnd % 2 == 0 else ("base", "ours")
            for who in order:
                run = self._concurrent_ours if who == "ours" else self._concurrent_base
                rounds[who].append(await run(f"{user}-{who}", data) * per * workers)
        ours, base, ratio = paired(rounds)
        self.report(Result(f"concurrent: {workers} coroutines, pool of 8, {per * workers} saves",
                           f"{ours:,.0f} saves/s", f"{base:,.0f} saves/s", ratio, "≥ 0.8×",
                           ratio >= 0.8, PAIRED_NOTE))

    async def _concurrent_ours(self, user: str, data: list[list[Record]]) -> float:
        """1 / seconds for all the saves, 64 coroutines through our manager (pool of 8)."""
        async with DatabaseManager(url=self.url, auto_migrate=False, pool_size=8,
                                   max_overflow=0) as db:
            async def worker(w: int) -> None:
                for _, _, step, r in data[w]:
                    await db.save_task_history(user, f"task-{w}", step, r)

            await db.get_task("warm", "up")
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(len(data))))
            return 1 / (time.perf_counter() - t0)

    async def _concurrent_base(self, user: str, data: list[list[Record]]) -> float:
        """The same through psycopg_pool's AsyncConnectionPool and a plain INSERT."""
        async with AsyncConnectionPool(self.conninfo, min_size=8, max_size=8,
                                       kwargs={"autocommit": True}) as pool:
            async def worker(w: int) -> None:
                for _, _, step, r in data[w]:
                    async with pool.connection() as c:
                        await c.execute(INSERT_STEP, raw_row(user, f"task-{w}", step, r))

            await pool.wait()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(len(data))))
            return 1 / (time.perf_counter() - t0)

    # -- OpenTelemetry (aiecs_persistence/telemetry.py) -----------------------------------

    async def telemetry(self) -> None:
        """Saves through three managers in one process, in turn: one without OpenTelemetry
        (the no-op telemetry a manager has when ``opentelemetry`` cannot be imported), one
        with the API and no SDK (the global providers: the API's no-op), one with the SDK (a
        batch span processor into an in-memory exporter, an in-memory metric reader)."""
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
        except ImportError:
            for what in TELEMETRY_CASES:
                self.report(Result(f"telemetry: {what}", "not run", "—", None, "—", None,
                                   "needs opentelemetry-sdk (the test or bench extra)"))
            return
        from aiecs_persistence.telemetry import Telemetry

        tracer_provider = TracerProvider()
        # It keeps the last 2,048 spans (an exporter that kept them all would grow the heap
        # that every garbage collection walks; a real one sends them and lets them go).
        tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(2048)))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        settings: dict[str, Any] = {"url": self.url, "auto_migrate": False, "pool_size": 8,
                                    "max_overflow": 0}
        managers = {"none": DatabaseManager(**settings), "api": DatabaseManager(**settings),
                    "sdk": DatabaseManager(**settings, tracer_provider=tracer_provider,
                                           meter_provider=meter_provider)}
        managers["none"]._telemetry = Telemetry()
        floor = sdk_floor(tracer_provider, meter_provider)
        try:
            for db in managers.values():
                await db.connect()
            await self._telemetry_sequential(managers, floor)
            await self._telemetry_concurrent(managers, floor)
        finally:
            for db in managers.values():
                await db.disconnect()
            tracer_provider.shutdown()
            meter_provider.shutdown()

    async def _sequential_in_turn(self, managers: dict[str, DatabaseManager], prefix: str,
                                  seed: int) -> tuple[int, dict[str, list[float]]]:
        """Sequential saves through each manager in turn (each first in turn): how many, and
        each manager's latencies (after a warm-up)."""
        count = self.n(3000, 60)
        data = list(records("x", count // 10 + 1, 10, seed=seed))[:count]
        latencies: dict[str, list[float]] = {who: [] for who in managers}
        names_ = list(managers)
        for i, (_, task, step, r) in enumerate(data):
            for who in names_[i % len(names_):] + names_[:i % len(names_)]:
                t0 = time.perf_counter()
                await managers[who].save_task_history(f"{prefix}-seq-{who}", task, step, r)
                if i >= 20:
                    latencies[who].append(time.perf_counter() - t0)
        return count, latencies

    async def _concurrent_in_turn(self, managers: dict[str, DatabaseManager], prefix: str,
                                  seed: int, rounds: int = ROUNDS,
                                  ) -> tuple[int, dict[str, list[float]]]:
        """64 coroutines saving through each manager in turn, ``rounds`` rounds: how many saves
        a round, and each manager's rate (saves/s) by round."""
        workers = 64
        per = max(2, self.n(12_800, 64 * 2) // workers)
        rates: dict[str, list[float]] = {who: [] for who in managers}
        names_ = list(managers)
        for rnd in range(rounds):
            data = [list(records("x", 1, per, seed=seed + w)) for w in range(workers)]
            for who in names_[rnd % len(names_):] + names_[:rnd % len(names_)]:
                db = managers[who]

                async def worker(w: int, db: DatabaseManager = db,
                                 user: str = f"{prefix}-{rnd}-{who}",
                                 data: list[list[Record]] = data) -> None:
                    for _, _, step, r in data[w]:
                        await db.save_task_history(user, f"task-{w}", step, r)

                t0 = time.perf_counter()
                await asyncio.gather(*(worker(w) for w in range(workers)))
                rates[who].append(per * workers / (time.perf_counter() - t0))
        return per * workers, rates

    async def _telemetry_sequential(self, managers: dict[str, DatabaseManager],
                                    floor: float) -> None:
        count, latencies = await self._sequential_in_turn(managers, "otel", 40)
        base = statistics.median(latencies["none"])
        for who, limit in (("api", 1.02), ("sdk", 1.10)):
            note = "baseline: the same manager without opentelemetry; managers in turn"
            if who == "sdk":
                note += f"; {floor_note(floor, base)}"
            self.report(latency_result(
                f"telemetry: sequential saves, {TELEMETRY_WHO[who]} (×{count})",
                latencies[who], latencies["none"], limit, note))

    async def _telemetry_concurrent(self, managers: dict[str, DatabaseManager],
                                    floor: float) -> None:
        # Each manager with opentelemetry against the one without, the two alone in turn: the
        # SDK's garbage (its spans, the processor's thread) would land on whichever manager
        # runs after it. The API's comparison has three times the rounds of the other cases:
        # a 2% line is within a round's noise.
        for who, limit, rounds in (("api", 1.02, 3 * ROUNDS), ("sdk", 1.05, ROUNDS)):
            total, rates = await self._concurrent_in_turn(
                {"none": managers["none"], who: managers[who]}, f"otel-{who}", 300, rounds)
            # The cost: the rate without opentelemetry over the rate with it, round by round.
            costs = [n / o for n, o in zip(rates["none"], rates[who], strict=True)]
            cost = statistics.median(costs)
            note = (f"ratio: the rate without over the rate with, the median of {rounds} "
                    "rounds, the two managers in turn")
            if who == "sdk":
                note += f"; {floor_note(floor, 1 / statistics.median(rates['none']))}"
            self.report(Result(
                f"telemetry: 64 coroutines, {total} saves, {TELEMETRY_WHO[who]}",
                f"{statistics.median(rates[who]):,.0f} saves/s",
                f"{statistics.median(rates['none']):,.0f} saves/s", cost, f"cost ≤ {limit}×",
                cost <= limit, note))

    # -- row-level security (aiecs_persistence/scopes.py) ----------------------------------

    async def row_security(self) -> None:
        """Saves by an unscoped writer role (not a superuser: row-level security applies to
        it) into our schema, where it is forced with the open policy, and into a copy of the
        schema without it (the baseline), managers in turn; and by a scoped writer (its
        restrictive policies evaluated), for the record."""
        off_schema, writer, scoped = "bench_rls_off", "aiecs_bench_writer", "aiecs_bench_scoped"
        admin = psycopg.connect(self.conninfo, autocommit=True)
        try:
            admin.execute(f"DROP SCHEMA IF EXISTS {off_schema} CASCADE")
            admin.execute(f"CREATE SCHEMA {off_schema}")
            off_url = self.url.update_query_dict({"options": f"-c search_path={off_schema}"})
            migrate.upgrade(off_url)
            for table in names.ROW_SECURITY_TABLES:
                admin.execute(f"ALTER TABLE {off_schema}.{table} DISABLE ROW LEVEL SECURITY")
            for role in (writer, scoped):
                if not admin.execute("SELECT FROM pg_roles WHERE rolname = %s",
                                     [role]).fetchone():
                    admin.execute(f"CREATE ROLE {role} LOGIN")
            database = one(admin.execute("SELECT current_database()").fetchone())
            admin.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {writer}')
            for schema in ("public", off_schema):
                admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {writer}")
                admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                              f"{schema} TO {writer}")
            scopes.run(admin, scopes.scope_statements(admin, scoped, ["rls-%"], writes=True))
            urls = {"off": off_url.set(username=writer, password=None),
                    "on": self.url.set(username=writer, password=None),
                    "scoped": self.url.set(username=scoped, password=None)}
            settings: dict[str, Any] = {"auto_migrate": False, "pool_size": 8,
                                        "max_overflow": 0}
            managers = {who: DatabaseManager(url=url, **settings) for who, url in urls.items()}
            try:
                for db in managers.values():
                    await db.connect()
                await self._security_sequential(managers)
                await self._security_concurrent(managers)
                await self._security_bulk(managers)
            finally:
                for db in managers.values():
                    await db.disconnect()
        finally:
            admin.execute(f"DROP SCHEMA IF EXISTS {off_schema} CASCADE")
            for role in (writer, scoped):
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE {role}")
            admin.close()

    async def _security_sequential(self, managers: dict[str, DatabaseManager]) -> None:
        count, latencies = await self._sequential_in_turn(managers, "rls", 50)
        for who, limit in SECURITY_LIMITS:
            self.report(latency_result(
                f"row security: sequential saves, {SECURITY_WHO[who]} (×{count})",
                latencies[who], latencies["off"], limit,
                "baseline: the same writer role, a schema without row-level security; "
                "managers in turn"))

    async def _security_concurrent(self, managers: dict[str, DatabaseManager]) -> None:
        # Three times the rounds of the other cases: a 3% line is within a round's noise.
        total, rates = await self._concurrent_in_turn(managers, "rls", 500, 3 * ROUNDS)
        for who, limit in SECURITY_LIMITS:
            costs = [n / o for n, o in zip(rates["off"], rates[who], strict=True)]
            cost = statistics.median(costs)
            self.report(Result(
                f"row security: 64 coroutines, {total} saves, {SECURITY_WHO[who]}",
                f"{statistics.median(rates[who]):,.0f} saves/s",
                f"{statistics.median(rates['off']):,.0f} saves/s", cost, f"cost ≤ {limit}×",
                cost <= limit, f"ratio: the rate without over the rate with, the median of "
                f"{3 * ROUNDS} rounds, the managers in turn"))

    async def _security_bulk(self, managers: dict[str, DatabaseManager]) -> None:
        """``save_task_history_many`` by the writer role with and without row-level security:
        PostgreSQL refuses it COPY FROM under row-level security, so each chunk is staged and
        merged instead."""
        steps = self.n(100_000, 100)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for rnd in range(3):
            for who in ("on", "off") if rnd % 2 == 0 else ("off", "on"):
                data = list(records(f"rls-bulk{rnd}-{who}", steps // 10, 10, seed=70 + rnd))
                t0 = time.perf_counter()
                await managers[who].save_task_history_many(data)
                rates[who].append(len(data) / (time.perf_counter() - t0))
        ratio = statistics.median(on / off for on, off in zip(rates["on"], rates["off"],
                                                              strict=True))
        self.report(Result(
            f"row security: save_task_history_many of {steps:,} steps, "
            f"{SECURITY_WHO['on']}", f"{statistics.median(rates['on']):,.0f} rows/s",
            f"{statistics.median(rates['off']):,.0f} rows/s", ratio, "≥ 0.5×", ratio >= 0.5,
            "baseline: the same writer role without row-level security, which may COPY; "
            "3 rounds in alternating order"))

    # -- against the class our users replace (benchmarks/upstream.py) ---------------------

    async def upstream(self) -> None:
        """Ours against upstream AIECS's class, reproduced on asyncpg, both pools of 8."""
        async with DatabaseManager(url=self.url, auto_migrate=False, pool_size=8,
                                   max_overflow=0) as ours, \
                UpstreamManager(self.url, 8, 8) as theirs:
            await self._upstream_sequential(ours, theirs, 1, 1.05)
            await self._upstream_sequential(ours, theirs, 10, 0.9)
            await self._upstream_load(ours, theirs)
        await self._upstream_concurrent(True)
        await self._upstream_concurrent(False)

    async def _upstream_sequential(self, ours: DatabaseManager, theirs: UpstreamManager,
                                   steps: int, limit: float) -> None:
        count = self.n(3000, 40)
        data = list(records("x", count // steps + 1, steps, seed=20 + steps))[:count]
        mine: list[float] = []
        base: list[float] = []
        for i, (_, task, step, r) in enumerate(data):
            first, second = (ours, theirs) if i % 2 == 0 else (theirs, ours)
            t0 = time.perf_counter()
            await first.save_task_history(f"seq{steps}", task, step, r)
            t1 = time.perf_counter()
            await second.save_task_history(f"seq{steps}", task, step, r)
            t2 = time.perf_counter()
            if i >= 20:
                mine.append(t1 - t0 if first is ours else t2 - t1)
                base.append(t2 - t1 if first is ours else t1 - t0)
        what = "each save a new task" if steps == 1 else f"{steps} steps per task, in order"
        self.report(latency_result(f"upstream: sequential saves, {what} (×{count})",
                                   mine, base, limit, "baseline: upstream's class on asyncpg"))

    async def _upstream_load(self, ours: DatabaseManager, theirs: UpstreamManager) -> None:
        tasks, reads = self.n(200, 10), self.n(2000, 40)
        for manager in (ours, theirs):
            for _, task, step, r in records("x", tasks, 20, seed=31):
                await manager.save_task_history("loader", task, step, r)
        rng = random.Random(4)
        mine: list[float] = []
        base: list[float] = []
        for i in range(reads + 20):
            task = f"task-{rng.randrange(tasks)}"
            t0 = time.perf_counter()
            a = await ours.load_task_history("loader", task)
            t1 = time.perf_counter()
            b = await theirs.load_task_history("loader", task)
            t2 = time.perf_counter()
            assert len(a) == len(b) == 20, (len(a), len(b))
            if i >= 20:
                mine.append(t1 - t0)
                base.append(t2 - t1)
        self.report(latency_result("upstream: load_task_history of a 20-step task", mine, base,
                                   1.0, "baseline: upstream's class on asyncpg"))

    async def _upstream_concurrent(self, new_tasks: bool) -> None:
        total, workers = self.n(20_000, 128), 64
        per = total // workers
        rounds: dict[str, list[float]] = {"ours": [], "base": []}
        for rnd in range(ROUNDS):
            if new_tasks:  # every save a task of its own
                data = [[(f"task-{w}-{i}", 0, r) for i, (_, _, _, r) in enumerate(
                    records("x", 1, per, seed=400 + w))] for w in range(workers)]
            else:  # each coroutine one task, its steps in order
                data = [[(f"task-{w}", s, r) for _, _, s, r in records("x", 1, per, seed=500 + w)]
                        for w in range(workers)]
            for who in ("ours", "base") if rnd % 2 == 0 else ("base", "ours"):
                user = f"up{int(new_tasks)}-{rnd}-{who}"
                manager: Any = (DatabaseManager(url=self.url, auto_migrate=False, pool_size=8,
                                                max_overflow=0) if who == "ours"
                                else UpstreamManager(self.url, 8, 8))
                async with manager:
                    async def worker(w: int, manager: Any = manager, user: str = user,
                                     data: list[list[Any]] = data) -> None:
                        for task, step, r in data[w]:
                            await manager.save_task_history(user, task, step, r)

                    await asyncio.sleep(0.2)  # the pool filled
                    t0 = time.perf_counter()
                    await asyncio.gather(*(worker(w) for w in range(workers)))
                    rounds[who].append(per * workers / (time.perf_counter() - t0))
        ours, base, ratio = paired(rounds)
        what = "each save a new task" if new_tasks else "64 tasks, each saving its steps in order"
        self.report(Result(f"upstream: {workers} coroutines, {what} ({per * workers} saves)",
                           f"{ours:,.0f} saves/s", f"{base:,.0f} saves/s", ratio, "≥ 2.0×",
                           ratio >= 2.0, "baseline: upstream's class on asyncpg; "
                           + PAIRED_NOTE))

    async def watchers(self) -> None:
        """The watchers' cost to writers: 64 coroutines saving with no watcher, with 100 idle
        watchers (of tasks nobody writes), and with 10 watchers of the tasks being written,
        in rotating order within each round."""
        total, workers = self.n(20_000, 64), 64
        per = total // workers
        modes = ("none", "idle", "watched")
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for rnd in range(ROUNDS):
            data = [list(records("x", 1, per, seed=300 + w)) for w in range(workers)]
            for mode in modes[rnd % 3:] + modes[:rnd % 3]:
                rate = await self._saves_while_watched(f"watch{rnd}-{mode}", data, mode)
                rates[mode].append(rate * per * workers)
        for mode, label in (("idle", "100 idle watchers"),
                            ("watched", "10 watchers of the written tasks")):
            ours, base, ratio = paired({"ours": rates[mode], "base": rates["none"]})
            self.report(Result(f"watchers: {workers} coroutines saving, {label}",
                               f"{ours:,.0f} saves/s", f"{base:,.0f} saves/s unwatched", ratio,
                               "≥ 0.9×", ratio >= 0.9, PAIRED_NOTE))

    async def _saves_while_watched(self, user: str, data: list[list[Record]],
                                   mode: str) -> float:
        """1 / seconds for all the saves (as ``_concurrent_ours``) while ``mode``'s watchers
        follow, on a manager of their own (its one LISTEN connection serves them all)."""
        watched = {"none": [], "idle": [(f"{user}-idle", f"idle-{i}") for i in range(100)],
                   "watched": [(user, f"task-{w}") for w in range(10)]}[mode]
        async with DatabaseManager(url=self.url, auto_migrate=False, pool_size=8,
                                   max_overflow=0) as db, \
                DatabaseManager(url=self.url, auto_migrate=False, pool_size=4) as watching:
            async def follow(user_id: str, task_id: str) -> None:
                async for _ in watching.watch_task_history(user_id, task_id,
                                                           until_finished=False):
                    pass

            async def worker(w: int) -> None:
                for _, _, step, r in data[w]:
                    await db.save_task_history(user, f"task-{w}", step, r)

            followers = [asyncio.ensure_future(follow(u, t)) for u, t in watched]
            await db.get_task("warm", "up")
            await asyncio.sleep(0.5)  # every watcher registered, the listener listening
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(len(data))))
            rate = 1 / (time.perf_counter() - t0)
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            return rate

    async def bulk(self, db: DatabaseManager, conn: psycopg.AsyncConnection[Any]) -> None:
        steps = self.n(200_000, 100)
        tasks = steps // 10
        rates: dict[str, list[float]] = {"ours": [], "base": []}
        for rnd in range(ROUNDS):
            data = list(records(f"bulk{rnd}", tasks, 10, seed=7 + rnd))
            for who in ("ours", "base") if rnd % 2 == 0 else ("base", "ours"):
                t0 = time.perf_counter()
                if who == "ours":
                    await db.save_task_history_many(data)
                else:
                    await self._copy_straight(conn, f"bulk{rnd}-base", tasks, data)
                rates[who].append(len(data) / (time.perf_counter() - t0))
        ours, base, ratio = paired(rates)
        self.report(Result(f"bulk: save_task_history_many of {steps:,} steps (10 per task)",
                           f"{ours:,.0f} rows/s", f"{base:,.0f} rows/s", ratio, "≥ 0.8×",
                           ratio >= 0.8,
                           "baseline: COPY into tasks, then task_history; " + PAIRED_NOTE))

    @staticmethod
    async def _copy_straight(conn: psycopg.AsyncConnection[Any], user: str, tasks: int,
                             data: list[Record]) -> None:
        """The bulk baseline: COPY the tasks, then the steps, in one transaction."""
        async with conn.transaction(), conn.cursor() as cur:
            async with cur.copy("COPY tasks (user_id, task_id, status) FROM STDIN") as cp:
                for t in range(tasks):
                    await cp.write_row((user, f"task-{t}", "running"))
            async with cur.copy(f"COPY task_history ({COLUMNS}) FROM STDIN") as cp:
                for _, task, step, r in data:
                    await cp.write_row(raw_row(user, task, step, r))

    def memory(self) -> int:
        """Run the 1M-step generator in a child process (a clean peak-RSS reading)."""
        steps = self.n(1_000_000, 200)
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(steps)],
            env=os.environ | {"AIECS_BENCH_URL": self.url.render_as_string(
                hide_password=False)},
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{done.stderr}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        grown = figures["grown_mb"]
        self.report(Result(f"memory: save_task_history_many of {steps:,} steps from a generator",
                           f"peak RSS +{grown:.1f} MB", "—", None, "growth < 150 MB",
                           grown < 150,
                           f"{figures['rows_per_s']:,.0f} rows/s; peak RSS "
                           f"{figures['peak_mb']:.0f} MB (after warm-up "
                           f"{figures['start_mb']:.0f} MB); "
                           f"table now holds {figures['table_rows']:,} steps"))
        return int(figures["tasks"])

    async def read(self, db: DatabaseManager, conn: psycopg.AsyncConnection[Any],
                   tasks: int) -> None:
        reads = self.n(2000, 20)
        rows = one(await (await conn.execute("SELECT count(*) FROM task_history")).fetchone())
        rng = random.Random(3)
        ours: list[float] = []
        base: list[float] = []
        for i in range(reads + 20):
            task = f"task-{rng.randrange(tasks)}"
            t0 = time.perf_counter()
            a = await db.load_task_history("mem", task)
            t1 = time.perf_counter()
            b = await (await conn.execute(LOAD, ("mem", task))).fetchall()
            t2 = time.perf_counter()
            assert len(a) == len(b) == 20, (len(a), len(b))
            if i >= 20:
                ours.append(t1 - t0)
                base.append(t2 - t1)
        self.report(latency_result(
            f"read: load_task_history of a 20-step task, table of {rows:,} steps",
            ours, base, 1.5, "ours also builds upstream's dicts"))

    async def listing(self, db: DatabaseManager, conn: psycopg.AsyncConnection[Any]) -> None:
        count, page, reads = self.n(20_000, 200), 50, self.n(1000, 20)
        await self.create_tasks(conn, "lister", count, spaced=True)
        deep_at = count - 2 * page
        shallow_at = min(page * 2, deep_at)

        async def cursor_at(offset: int) -> tuple[Any, ...]:
            return tuple(one(await (await conn.execute(
                "SELECT updated_at, task_id FROM tasks WHERE user_id = 'lister' "
                "ORDER BY updated_at DESC, task_id DESC OFFSET %s LIMIT 1", [offset - 1],
            )).fetchone(), whole=True))

        when, task = await cursor_at(deep_at)
        cursor, shallow = encode_cursor(when, task), encode_cursor(*await cursor_at(shallow_at))
        keys = ("of", "bf", "od", "bd", "os", "offset")
        samples: dict[str, list[float]] = {k: [] for k in keys}
        for i in range(reads + 20):
            t0 = time.perf_counter()
            first = await db.list_tasks("lister", limit=page)
            t1 = time.perf_counter()
            await (await conn.execute(LIST_FIRST, ("lister", page + 1))).fetchall()
            t2 = time.perf_counter()
            deep = await db.list_tasks("lister", limit=page, cursor=cursor)
            t3 = time.perf_counter()
            await (await conn.execute(LIST_AFTER, ("lister", when, task, page + 1))).fetchall()
            t4 = time.perf_counter()
            await db.list_tasks("lister", limit=page, cursor=shallow)
            t5 = time.perf_counter()
            if i % 10 == 0:  # what keyset pagination avoids: OFFSET reads every row before
                await (await conn.execute(LIST_FIRST + " OFFSET %s",
                                          ("lister", page + 1, deep_at))).fetchall()
                samples["offset"].append(time.perf_counter() - t5)
            assert len(first.items) == len(deep.items) == page
            if i >= 20:
                for key, value in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                      strict=False):
                    samples[key].append(value)
        self.report(latency_result(f"listing: first page of {page}, user with {count:,} tasks",
                                   samples["of"], samples["bf"], 1.5))
        self.report(latency_result(f"listing: deep page (after {deep_at:,}), keyset",
                                   samples["od"], samples["bd"], 1.5))
        ratio = statistics.median(samples["od"]) / statistics.median(samples["os"])
        first_ratio = statistics.median(samples["od"]) / statistics.median(samples["of"])
        base_ratio = statistics.median(samples["bd"]) / statistics.median(samples["bf"])
        self.report(Result(
            f"listing: deep page against an early one (after {shallow_at})",
            fmt_ms(samples["od"]), fmt_ms(samples["os"]) + " (early)", ratio,
            "no more than the first pages (≤ 1.1×)", ratio <= 1.1,
            f"against the first page, which has no cursor: {first_ratio:.2f}× (the hand-"
            f"written query: {base_ratio:.2f}×), a fixed cost of the row comparison, not of "
            f"depth; OFFSET {deep_at:,} instead: {fmt_ms(samples['offset'])}",
        ))

    async def reports(self, db: DatabaseManager, conn: psycopg.AsyncConnection[Any]) -> None:
        """report() against the report in plain SQL: the whole table, and a window."""
        # The table as autovacuum keeps it in service, vacuumed and analyzed: it was loaded
        # seconds ago, so without statistics PostgreSQL 15 takes the whole-table window for
        # 0.5% of the rows (and sorts the distinct tasks on disk), and the BRIN index has
        # summarized none of the new block ranges (each one read whatever the window). The
        # baseline reads the same table. docs/performance.md gives the figures without it.
        await conn.execute("VACUUM ANALYZE task_history")
        rows = one(await (await conn.execute("SELECT count(*) FROM task_history")).fetchone())
        # The window: the steps written before the bulk case (a sixth of the table at full
        # scale; each bulk load is one transaction, so one created_at for all its steps).
        bulk = one(await (await conn.execute(
            "SELECT min(created_at) FROM task_history WHERE user_id = 'bulk0'")).fetchone())
        for label, until in (("whole table", None), ("a window (the steps before the bulk case)",
                                                      bulk)):
            ours: list[float] = []
            base: list[float] = []
            for rnd in range(3):
                for who in ("ours", "base") if rnd % 2 == 0 else ("base", "ours"):
                    t0 = time.perf_counter()
                    if who == "ours":
                        await db.report(until=until)
                    else:  # without the BRIN index on created_at either
                        async with conn.transaction():
                            await conn.execute("SET LOCAL enable_bitmapscan = off")
                            await (await conn.execute(REPORT_PLAIN, {
                                "since": None, "until": until, "top": 10})).fetchall()
                    (ours if who == "ours" else base).append(time.perf_counter() - t0)
            ratio = statistics.median(base) / statistics.median(ours)
            self.report(Result(f"report: {label}, table of {rows:,} steps",
                               fmt_ms(ours), fmt_ms(base) + " plain SQL", ratio,
                               "≥ 2× faster", ratio >= 2.0,
                               "baseline: the report in plain SQL (one CTE, count(DISTINCT) per "
                               "figure), without the BRIN index (bitmap scans off), on the same "
                               "vacuumed and analyzed table; ratio = how many times faster"))

    def import_time(self) -> None:
        """``from aiecs_persistence import DatabaseManager`` in a fresh interpreter, minus the
        interpreter's own start (bytecode compiled first, as an installed package has it)."""
        def once(code: str) -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True,
                           env=os.environ | {"PYTHONDONTWRITEBYTECODE": ""})
            return time.perf_counter() - t0

        statement = "from aiecs_persistence import DatabaseManager"
        once(statement)
        bare: list[float] = []
        full: list[float] = []
        for _ in range(9):
            bare.append(once("pass"))
            full.append(once(statement))
        cost = (statistics.median(full) - statistics.median(bare)) * 1000
        self.report(Result("import: from aiecs_persistence import DatabaseManager",
                           f"{cost:.0f} ms", "—", None, "≤ 150 ms", cost <= 150,
                           "a fresh interpreter, minus one that imports nothing (medians of 9)"))

    async def citus(self, citus_url: Any) -> None:
        """The same saves, one after another, through a manager on a Citus cluster and through
        one on this run's plain PostgreSQL (on the same machine), alternating call by call."""
        count = self.n(3000)
        data = list(records("x", count // 10 + 1, 10, seed=4))[:count]
        user = f"citus-bench-{os.getpid()}"
        ours: list[float] = []
        base: list[float] = []
        async with DatabaseManager(url=citus_url) as cluster, DatabaseManager(
                url=self.url, auto_migrate=False) as plain:
            try:
                for i, (_, task, step, r) in enumerate(data):
                    t0 = time.perf_counter()
                    await cluster.save_task_history(user, task, step, r)
                    t1 = time.perf_counter()
                    await plain.save_task_history(user, task, step, r)
                    t2 = time.perf_counter()
                    if i >= 20:
                        ours.append(t1 - t0)
                        base.append(t2 - t1)
            finally:
                async with await psycopg.AsyncConnection.connect(
                        libpq_conninfo(citus_url), autocommit=True) as conn:
                    await conn.execute("DELETE FROM tasks WHERE user_id = %s", [user])
        self.report(latency_result(
            f"citus: save_task_history ×{count} on a Citus cluster (baseline: plain "
            "PostgreSQL, same machine)", ours, base, 2.5,
            "one call of aiecs_save_steps, run whole on the worker that owns the user; "
            "10 steps per task"))

    async def grown(self, admin: str) -> None:
        """The same measures at two sizes of history (1M and 10M steps, times the scale, in daily
        partitions): what must not grow with it, and ours against upstream's table and class;
        and the smaller history beside a year of daily partitions (history kept longer)."""
        sizes = (self.n(1_000_000, 3_000), self.n(10_000_000, 30_000))
        measured: list[Scaled] = []
        built: list[tuple[Any, list[tuple[str, str]]]] = []
        names = [f"aiecs_scale_{steps}" for steps in sizes]
        year = "aiecs_scale_year"
        try:
            for steps, name in zip(sizes, names, strict=True):
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    conn.execute(f'CREATE DATABASE "{name}"')
                url = self.url.set(database=name)
                migrate.upgrade(url)
                scaled, keys = scale_history(url, steps)
                measured.append(scaled)
                built.append((url, keys))
            built.append((with_a_year_of_partitions(admin, self.url, names[0], year), built[0][1]))
            with psycopg.connect(admin, autocommit=True) as conn:
                checkpoint(conn)
            *latencies, at_a_year = await scale_latencies(built)
            for scaled, latencies_ in zip(measured, latencies, strict=True):
                scaled.latencies = latencies_
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                for name in (*names, year):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        small, big = measured
        for m in measured:
            per_ours, per_theirs = m.ours_bytes / m.steps, m.upstream_bytes / m.steps
            self.report(Result(
                f"scale: bytes per step at {m.steps:,} steps", f"{per_ours:.0f} B",
                f"{per_theirs:.0f} B upstream's table", per_ours / per_theirs, "≤ 1.1×",
                per_ours / per_theirs <= 1.1,
                "steps, tasks and their indexes; the event log holds none of this history "
                "(it was written past the log's retention)"))
            for kind, limit in (("load", 1.0), ("list", 1.0), ("save", 1.05)):
                mine, base = m.latencies[kind]
                self.report(latency_result(
                    f"scale: {SCALE_CALLS[kind]}, {m.steps:,} steps", mine, base, limit,
                    "baseline: upstream's class on its table holding the same rows"))
        for kind, label in SCALE_REPORTS.items():
            at_big, at_small = big.latencies[kind][0], small.latencies[kind][0]
            ratio = statistics.median(at_big) / statistics.median(at_small)
            self.report(Result(
                f"scale: {label}, {big.steps:,} against {small.steps:,} steps",
                fmt_ms(at_big), fmt_ms(at_small), ratio, "≤ 2×", ratio <= 2.0,
                "closed periods from their summaries; ratio = time at the larger size over "
                "the smaller"))
        # Ours at the larger size, then beside a year of partitions, against the smaller.
        for grown_, against, note in (
                (big.latencies, f"{big.steps:,} against {small.steps:,} steps", ""),
                (at_a_year, f"{YEAR_DAYS} daily partitions against {SCALE_DAYS + 1}",
                 f"the {small.steps:,} steps of the smaller history, with empty partitions for "
                 "the days before it up to a year (docs/operations.md, how many partitions to "
                 "keep)")):
            for kind in SCALE_CALLS:
                at_grown, at_small = grown_[kind][0], small.latencies[kind][0]
                ratio = statistics.median(at_grown) / statistics.median(at_small)
                self.report(Result(f"scale: {SCALE_CALLS[kind]}, {against}", fmt_ms(at_grown),
                                   fmt_ms(at_small), ratio, "≤ 1.15×", ratio <= 1.15, note))

    def aged(self) -> None:
        """Retention of history really written weeks ago: 10% of 10M steps (times the scale), on
        a throwaway embedded cluster (libfaketime shifts its clock and the writer's)."""
        steps = self.n(10_000_000, 30_000)
        lib = libfaketime()
        cases = (f"scale: retention of a day's partition ({steps // 10:,} steps written "
                 f"{AGED_DAYS} days ago)",
                 "scale: expiring 10% of history against row by row",
                 "scale: expiring 10% of history against upstream's DELETE",
                 "scale: table files after expiring 10% of history")
        if lib is None:
            for case in cases:
                self.report(Result(case, "not run", "—", None, "libfaketime", None,
                                   "needs libfaketime (Debian: apt-get install faketime)"))
            return
        base = Path(tempfile.mkdtemp(prefix="aiecs-aged-", dir="/tmp"))
        try:
            m = expire_aged(base, lib, steps)
        finally:
            embedded.stop(base)
            shutil.rmtree(base, ignore_errors=True)
        mib = 1024 * 1024
        self.report(Result(cases[0], fmt_s(m.longest_s), "—", None, "≤ 100 ms",
                           m.longest_s <= 0.1,
                           f"the longest period of the {m.dropped // 2} cleanup_old_tasks(30) "
                           f"dropped ({m.dropped} partitions, steps and events): its tasks' "
                           "rows deleted from tasks, its partitions detached and dropped"))
        self.report(Result(cases[1], fmt_s(m.ours_s), fmt_s(m.rows_s), m.ours_s / m.rows_s,
                           "≤ 0.02× (50× faster)", m.ours_s / m.rows_s <= 0.02,
                           f"{m.old:,} of {m.steps:,} steps; baseline: cleanup_old_tasks(30) "
                           "on a copy of the database as a role that may not detach "
                           "partitions (row by row, in batches)"))
        self.report(Result(cases[2], fmt_s(m.ours_s), fmt_s(m.delete_s),
                           m.ours_s / m.delete_s, "≤ 1.0×", m.ours_s <= m.delete_s,
                           "baseline: one DELETE of the rows older than 30 days on upstream's "
                           "table holding the same rows"))
        (ours_before, ours_after), (theirs_before, theirs_after) = m.ours_bytes, m.upstream_bytes
        freed = (ours_before - ours_after) / ours_before / (m.old / m.steps)
        self.report(Result(
            cases[3], f"{ours_before / mib:,.0f} → {ours_after / mib:,.0f} MiB",
            f"{theirs_before / mib:,.0f} → {theirs_after / mib:,.0f} MiB", freed,
            "ours freed ≥ 0.8× the expired share", freed >= 0.8,
            "ours: steps, events and tasks with indexes, at once; upstream's: its table and "
            "indexes after the DELETE and a VACUUM; ratio: the share of our files freed over "
            "the share of steps expired"))

    def retention(self, tasks: int) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            before = one(conn.execute("SELECT count(*) FROM task_history").fetchone())
            conn.execute(
                "UPDATE tasks SET updated_at = now() - interval '40 days' "
                "WHERE user_id = 'mem' AND split_part(task_id, '-', 2)::int % 2 = 0"
            )
        batches: list[float] = []
        last = time.perf_counter()

        def on_batch(_: int) -> None:
            nonlocal last
            now = time.perf_counter()
            batches.append(now - last)
            last = now

        with SyncDatabaseManager(url=self.url, auto_migrate=False) as db:
            t0 = last = time.perf_counter()
            deleted_tasks = db.cleanup_old_tasks(30, on_batch=on_batch)
            elapsed = time.perf_counter() - t0
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            after = one(conn.execute("SELECT count(*) FROM task_history").fetchone())
        gone = before - after
        longest = max(batches)
        self.report(Result(
            f"retention: cleanup_old_tasks, {gone:,} of {before:,} steps",
            f"{gone / elapsed:,.0f} steps/s", "—", None, "no batch > 1 s", longest < 1.0,
            f"{deleted_tasks:,} tasks in {len(batches)} batches of ≤ 1,000; "
            f"longest batch (its locks' lifetime) {longest * 1000:.0f} ms",
        ))


# -- history that grows: the same measures at two sizes ----------------------------------------

#: The history of the scale case: this many daily periods, ten steps a task.
SCALE_DAYS = 30
SCALE_STEPS_PER_TASK = 10
#: The calls the scale case times at each size, ours against upstream's class.
SCALE_CALLS = {"load": "load_task_history", "list": "get_user_tasks",
               "save": "save_task_history (a new task)"}
#: The reports the scale case times at each size (ours alone), and how many rounds of them.
SCALE_REPORTS = {"report_all": "whole-history report()", "report_day": "report() of the last day"}
REPORT_ROUNDS = 15


@dataclass
class Scaled:
    """What the scale case measured at one size."""

    steps: int
    ours_bytes: int
    upstream_bytes: int
    #: Ours and upstream's class, calls alternating: a task's load, a user's task list, a save;
    #: and ours alone: the reports (``SCALE_REPORTS``).
    latencies: dict[str, tuple[list[float], list[float]]]


def scale_history(url: Any, steps: int) -> tuple[Scaled, list[tuple[str, str]]]:
    """A database of ``steps`` steps over ``SCALE_DAYS`` daily periods (COPY, each task in the
    partition of its day, events off as after their retention), and upstream's table holding
    the same rows; its closed periods summarized as ``cleanup_old_tasks`` does."""
    conninfo = libpq_conninfo(url)
    tasks_a_day = max(1, steps // SCALE_STEPS_PER_TASK // SCALE_DAYS)
    rng = random.Random(11)
    every_key: list[tuple[str, str]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT set_config('aiecs.bulk_events', 'on', false)")
        create_upstream_table(conn)
        create_daily_partitions(conn, range(SCALE_DAYS, -1, -1))
        for day in range(SCALE_DAYS, 0, -1):
            bucket = one(conn.execute(
                "SELECT date_bin('1 day', now() - make_interval(days => %s), "
                "'2000-01-01 00:00:00+00')", [day]).fetchone())
            at = bucket + dt.timedelta(hours=1)
            users = [f"user-{u}" for u in range(50)]
            keys = [(users[t % 50], f"d{day}-t{t}") for t in range(tasks_a_day)]
            every_key += keys
            with conn.cursor().copy(
                    "COPY tasks (user_id, task_id, status, created_at, updated_at, started_at, "
                    "bucket) FROM STDIN") as copy:
                for user, task in keys:
                    copy.write_row((user, task, "running", at, at, at, bucket))
            rows = [(user, task, s, step_result(rng, s)) for user, task in keys
                    for s in range(SCALE_STEPS_PER_TASK)]
            with conn.cursor().copy(
                    "COPY task_history (user_id, task_id, step, step_name, result, completed, "
                    "message, status, error_code, error_message, created_at, updated_at, "
                    "bucket) FROM STDIN") as copy:
                for user, task, s, r in rows:
                    copy.write_row((*raw_row(user, task, s, r), at, at, bucket))
            with conn.cursor().copy(
                    "COPY aiecs_upstream.task_history (user_id, task_id, step, result, "
                    "timestamp, status) FROM STDIN") as copy:
                for user, task, s, r in rows:
                    copy.write_row((user, task, s, json.dumps(r.dict()), at.replace(tzinfo=None),
                                    r.status))
        conn.execute("VACUUM ANALYZE")
        with SyncDatabaseManager(url=url, auto_migrate=False) as db:
            # Older than the history: deletes nothing, summarizes the closed periods.
            assert db.cleanup_old_tasks(2 * SCALE_DAYS) == 0
            ours, theirs = table_bytes(conn, ("task_history",))
            stored = one(conn.execute("SELECT count(*) FROM task_history").fetchone())
    return Scaled(stored, ours, theirs, {}), every_key


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """Write what the database was just filled with before timing anything on it, so that no
    checkpoint of it runs under the timings (a role that may not: nothing)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


#: The days of partitions the scale case's history of a year has (most of them empty).
YEAR_DAYS = 365


def with_a_year_of_partitions(admin: str, server: Any, source: str, name: str) -> Any:
    """A copy of the database ``source`` with partitions for every day of the year before its
    history (empty: what matters is how many a statement faces); its URL."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    url = server.set(database=name)
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        create_daily_partitions(conn, range(SCALE_DAYS + 1, YEAR_DAYS))
        conn.execute("ANALYZE")
    return url


def create_daily_partitions(conn: psycopg.Connection[Any], days_ago: Iterable[int]) -> None:
    """The partitions of the days that many days ago (``conn`` in autocommit: a transaction
    each, holding a few locks)."""
    for day in days_ago:
        conn.execute("SELECT aiecs_create_partitions(now() - make_interval(days => %s))", [day])


def create_upstream_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET search_path = {upstream.SCHEMA}")
    for ddl in upstream.DDL:
        conn.execute(ddl)
    conn.execute("RESET search_path")


async def scale_latencies(sizes: list[tuple[Any, list[tuple[str, str]]]]
                          ) -> list[dict[str, tuple[list[float], list[float]]]]:
    """Ours against upstream's class on the same rows (all pools of 8), at every size at once:
    each round calls ours and upstream's at each size, in a rotating order, so a slow spell of
    the machine hits every size and both classes alike. The first 20 rounds of each kind are a
    warm-up. Kinds: a task's load, a user's list of 100 tasks, the save of a new task; then
    ours alone, the same way: the reports of the whole history and of the last day."""
    rng = random.Random(5)
    calls = 200
    saved = [step_result(rng, 0) for _ in range(calls + 20)]
    timed: list[dict[str, tuple[list[float], list[float]]]] = [
        {kind: ([], []) for kind in (*SCALE_CALLS, *SCALE_REPORTS)} for _ in sizes]
    async with contextlib.AsyncExitStack() as stack:
        turns: list[tuple[int, bool, Any]] = []  # (size, ours?, manager)
        for n, (url, _) in enumerate(sizes):
            turns.append((n, True, await stack.enter_async_context(DatabaseManager(
                url=url, auto_migrate=False, pool_size=8, max_overflow=0))))
            turns.append((n, False, await stack.enter_async_context(UpstreamManager(url, 8, 8))))
        picks = [[rng.choice(keys) for _ in range(calls + 20)] for _, keys in sizes]
        tasks_of = [collections.Counter(user for user, _ in keys) for _, keys in sizes]
        for kind in SCALE_CALLS:
            for i in range(calls + 20):
                for n, ours, manager in turns[i % len(turns):] + turns[:i % len(turns)]:
                    user, task = picks[n][i]
                    t0 = time.perf_counter()
                    if kind == "load":
                        got = await manager.load_task_history(user, task)
                        assert len(got) == SCALE_STEPS_PER_TASK, len(got)
                    elif kind == "list":
                        listed = await manager.get_user_tasks(user, 100)
                        assert len(listed) == min(100, tasks_of[n][user]), len(listed)
                    else:
                        await manager.save_task_history(user, f"new-{i}", 0, saved[i])
                    if i >= 20:
                        timed[n][kind][0 if ours else 1].append(time.perf_counter() - t0)
        # The reports, ours alone, in the same rotation (the first two rounds: a warm-up).
        ours_only = [(n, manager) for n, ours, manager in turns if ours]
        for i in range(REPORT_ROUNDS + 2):
            for n, manager in ours_only[i % len(ours_only):] + ours_only[:i % len(ours_only)]:
                t0 = time.perf_counter()
                await manager.report()
                t1 = time.perf_counter()
                await manager.report(since=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
                t2 = time.perf_counter()
                if i >= 2:
                    timed[n]["report_all"][0].append(t1 - t0)
                    timed[n]["report_day"][0].append(t2 - t1)
    return timed


# -- history written weeks ago, expired --------------------------------------------------------

#: How long ago the aged case's old history was written (its server's and writer's clocks).
AGED_DAYS = 40
AGED_DATABASE = "aiecs_aged"


def libfaketime() -> Path | None:
    """libfaketime's preload library (Debian's package ``faketime``), if installed."""
    for pattern in ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                    "/usr/local/lib/faketime/libfaketime.so.1"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    return None


def write_history(url: Any, prefix: str, steps: int) -> None:
    """``steps`` steps of new tasks (ten steps a task, 50 users) written by the library's bulk
    path, and the same rows into upstream's table by COPY with the writer's clock, as upstream's
    class stamps its rows."""
    rng = random.Random(prefix)
    rows = [(f"user-{t % 50}", f"{prefix}-{t}", s, step_result(rng, s))
            for t in range(steps // SCALE_STEPS_PER_TASK) for s in range(SCALE_STEPS_PER_TASK)]
    with SyncDatabaseManager(url=url, auto_migrate=False) as db:
        db.save_task_history_many(rows)
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        create_upstream_table(conn)
        now = dt.datetime.now()
        with conn.cursor().copy(
                "COPY aiecs_upstream.task_history (user_id, task_id, step, result, timestamp, "
                "status) FROM STDIN") as copy:
            for user, task, step, r in rows:
                copy.write_row((user, task, step, json.dumps(r.dict()), now, r.status))


def aged_child(base: Path, steps: int) -> None:
    """Run under libfaketime: a new embedded cluster in ``base`` started at this process's
    (shifted) clock, a database migrated, ``steps`` steps written, the cluster stopped."""
    server = normalize_url(embedded.start(base))
    with psycopg.connect(libpq_conninfo(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{AGED_DATABASE}"')
    url = server.set(database=AGED_DATABASE)
    migrate.upgrade(url)
    write_history(url, "old", steps)
    embedded.stop(base)


def table_bytes(conn: psycopg.Connection[Any],
                parents: tuple[str, ...] = ("task_history", "task_events")) -> tuple[int, int]:
    """The files of our history (the partitions of ``parents`` and tasks, with indexes) and of
    upstream's table."""
    ours = one(conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(partition::regclass)), 0) "
        "+ pg_total_relation_size('tasks') FROM aiecs_partition_bounds() "
        "WHERE parent = ANY(%s)", [list(parents)]).fetchone())
    theirs = one(conn.execute(
        "SELECT pg_total_relation_size('aiecs_upstream.task_history')").fetchone())
    return int(ours), int(theirs)


@dataclass
class Aged:
    """What the aged case measured: history of ``steps`` steps, ``old`` of them written
    ``AGED_DAYS`` days ago, expired by ``cleanup_old_tasks(30)`` three ways."""

    steps: int
    old: int
    dropped: int
    longest_s: float
    ours_s: float
    rows_s: float
    delete_s: float
    ours_bytes: tuple[int, int]
    upstream_bytes: tuple[int, int]


def expire_aged(base: Path, lib: Path, steps: int) -> Aged:
    """The history's old tenth written by a process whose clock, and its server's, ran
    ``AGED_DAYS`` days behind (libfaketime), the rest at the real time after a restart; then
    retention: ours, ours row by row (a copy of the database, cleaned by a role that may not
    detach partitions), and upstream's table by a plain ``DELETE``."""
    old = steps // 10
    shifted = {**os.environ, "LD_PRELOAD": str(lib), "FAKETIME": f"-{AGED_DAYS}d"}
    subprocess.run([sys.executable, __file__, "--aged-child", str(base), str(old)],
                   env=shifted, check=True, timeout=3600)
    server = normalize_url(embedded.start(base))
    url = server.set(database=AGED_DATABASE)
    write_history(url, "new", steps - old)
    admin = libpq_conninfo(server)
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        ours_before, theirs_before = table_bytes(conn)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE rows_copy TEMPLATE "{AGED_DATABASE}"')
    marks: list[float] = []  # on_batch: after each period dropped, then each batch
    with SyncDatabaseManager(url=url, auto_migrate=False) as db:
        t0 = time.perf_counter()
        gone = db.cleanup_old_tasks(30, on_batch=lambda _: marks.append(time.perf_counter()))
        ours_s = time.perf_counter() - t0
        dropped = db.last_cleanup.partitions_dropped
    periods = [t0, *marks[:dropped // 2]]
    longest = max(b - a for a, b in itertools.pairwise(periods))
    assert gone == old // SCALE_STEPS_PER_TASK, (gone, old)
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("DELETE FROM aiecs_upstream.task_history "
                     "WHERE timestamp < now() - interval '30 days'")
        delete_s = time.perf_counter() - t0
        conn.execute("VACUUM")
        ours_after, theirs_after = table_bytes(conn)
    copy = server.set(database="rows_copy")
    with psycopg.connect(libpq_conninfo(copy), autocommit=True) as conn:
        roles.grant(conn, roles.Roles())
        conn.execute("CREATE ROLE aiecs_bench_rows LOGIN IN ROLE aiecs_writer")
    with SyncDatabaseManager(url=copy.set(username="aiecs_bench_rows"),
                             auto_migrate=False) as db:
        t0 = time.perf_counter()
        assert db.cleanup_old_tasks(30) == gone
        rows_s = time.perf_counter() - t0
        assert db.last_cleanup.partitions_dropped == 0
    return Aged(steps, old, dropped, longest, ours_s, rows_s, delete_s, (ours_before, ours_after),
                (theirs_before, theirs_after))


def peak_rss_kb() -> int:
    """This process's peak resident memory (kB). Linux's VmHWM, which starts afresh at exec;
    ``ru_maxrss`` does not (a child would inherit its parent's peak), so it is the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(steps: int) -> None:
    url = os.environ["AIECS_BENCH_URL"]
    tasks = steps // 20

    async def main() -> dict[str, Any]:
        async with DatabaseManager(url=url, auto_migrate=False) as db:
            await db.save_task_history_many(records("warm", 1, 20, seed=0))
            start_kb = peak_rss_kb()
            t0 = time.perf_counter()
            saved = await db.save_task_history_many(records("mem", tasks, 20, seed=11))
            elapsed = time.perf_counter() - t0
            peak_kb = peak_rss_kb()
        with psycopg.connect(libpq_conninfo(url)) as conn:
            rows = conn.execute("SELECT count(*) FROM task_history").fetchone()
        return {"grown_mb": (peak_kb - start_kb) / 1024, "rows_per_s": saved / elapsed,
                "peak_mb": peak_kb / 1024, "start_mb": start_kb / 1024,
                "table_rows": rows[0] if rows else 0, "tasks": tasks}

    print(json.dumps(asyncio.run(main())))


# -- driver -------------------------------------------------------------------------------------


def server_info(conninfo: str) -> str:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    version = row[0] if row else "?"
    return (f"PostgreSQL {version}; Python {platform.python_version()}; psycopg "
            f"{psycopg.__version__}; {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs")


CASES = ("import", "upstream", "single", "blocking", "concurrent", "telemetry", "rls", "watchers",
         "bulk", "memory", "read", "listing", "report", "retention", "scale", "aged", "citus")


async def run_all(bench: Bench, only: set[str], citus_url: Any = None) -> None:
    tasks = 0
    if "citus" in only:
        if citus_url is None:
            console.print("  citus: not run (give --citus-url, a Citus coordinator's URL)")
        else:
            await bench.citus(citus_url)
        only = only - {"citus"}
    if not only:
        return
    async with DatabaseManager(url=bench.url, auto_migrate=False) as db:
        conn = await psycopg.AsyncConnection.connect(bench.conninfo, autocommit=True)
        try:
            if "import" in only:
                bench.import_time()
            if "upstream" in only:
                await bench.upstream()
            if "single" in only:
                await bench.single(db, conn)
            if "blocking" in only:
                bench.blocking()
            if "concurrent" in only:
                await bench.concurrent(conn)
            if "telemetry" in only:
                await bench.telemetry()
            if "rls" in only:
                await bench.row_security()
            if "watchers" in only:
                await bench.watchers()
            if "bulk" in only:
                await bench.bulk(db, conn)
            if only & {"memory", "read", "retention"}:
                tasks = bench.memory()
            if "read" in only:
                await bench.read(db, conn, tasks)
            if "listing" in only:
                await bench.listing(db, conn)
            if "report" in only:
                await bench.reports(db, conn)
        finally:
            await conn.close()
    if "retention" in only:
        bench.retention(tasks)
    if "scale" in only:
        await bench.grown(bench.conninfo)
    if only & {"scale", "aged"}:
        bench.aged()


def dump_tasks(*_: object) -> None:
    """``kill -USR1 <pid>``: print where every asyncio task of the run is waiting (stderr)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for task in asyncio.all_tasks(loop):
        where: list[str] = []
        step: Any = task.get_coro()
        while step is not None:
            frame = getattr(step, "cr_frame", None) or getattr(step, "ag_frame", None)
            if frame is not None:
                where.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            step = getattr(step, "cr_await", None) or getattr(step, "ag_await", None)
            if step is not None and not hasattr(step, "cr_frame") and not hasattr(
                    step, "ag_frame"):
                where.append(type(step).__name__)
                break
        print(f"task {task.get_name()}: {' <- '.join(where)}", file=sys.stderr, flush=True)


def main() -> int:
    signal.signal(signal.SIGUSR1, dump_tasks)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="server (default: AIECS_DATABASE_URL, else embedded)")
    parser.add_argument("--database", default="aiecs_bench")
    parser.add_argument("--scale", type=float, default=1.0, help="data sizes × this")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES),
                        help="run these cases only (memory also runs for read, retention; scale "
                        "includes aged, the retention of history written weeks ago)")
    parser.add_argument("--citus-url", help="a Citus coordinator, for the citus case")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--aged-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.aged_child:
        aged_child(Path(args.aged_child[0]), int(args.aged_child[1]))
        return 0

    server = normalize_url(resolve_url(url=args.url))
    admin = libpq_conninfo(server)
    with psycopg.connect(admin, autocommit=True) as conn:
        on_citus = bool(one(conn.execute(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").fetchone()))
        if on_citus and one(conn.execute(
                "SELECT to_regclass('tasks') IS NOT NULL AND EXISTS (SELECT 1 FROM tasks)"
        ).fetchone()):
            parser.error("--url: a Citus coordinator's database is used as it is, and this "
                         "one holds tasks: give an empty one")
        if not on_citus:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{args.database}"')
    url = server if on_citus else server.set(database=args.database)
    citus_url = normalize_url(args.citus_url) if args.citus_url else None
    results: list[Result] = []
    started = time.perf_counter()
    try:
        migrate.upgrade(url)
        console.print(f"[bold]aiecs-persistence benchmark[/] (scale {args.scale}) — "
                      f"{server_info(libpq_conninfo(url))}")

        def report(result: Result) -> None:
            results.append(result)
            mark = "—" if result.ok is None else ("pass" if result.ok else "SHORT")
            ratio = "" if result.ratio is None else f" ratio {result.ratio:.2f}"
            console.print(f"  {result.case}: {result.ours} vs {result.baseline}{ratio} {mark}",
                          highlight=False)

        asyncio.run(run_all(Bench(url, args.scale, report), set(args.only), citus_url))
    finally:
        if on_citus and not args.keep:  # it was empty: empty again
            with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
                conn.execute("TRUNCATE tasks, task_history, task_events CASCADE")
        elif not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    table = Table("case", "ours", "raw psycopg", "ratio", "target", "mark",
                  title=f"results ({time.perf_counter() - started:.0f} s)")
    for r in results:
        table.add_row(r.case, r.ours, r.baseline, "—" if r.ratio is None else f"{r.ratio:.2f}×",
                      r.target, "—" if r.ok is None else ("pass" if r.ok else "SHORT"))
    console.print(table)
    for r in results:
        if r.note:
            console.print(f"  {r.case}: {r.note}", highlight=False)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
