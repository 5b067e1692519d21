"""``aiecs-db demo``: a small simulated AI workload recorded through the async manager.

Each run starts from a fresh ``aiecs_demo`` database on the chosen server (the embedded one by
default), migrates it, and runs a handful of multi-step tasks: one that succeeds, one failing
with each error code, a real timeout (``asyncio.wait_for``), a cancellation, and an illegal
transition that the database itself refuses.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import URL

from .config import connect, normalize_url
from .domain import ErrorCode, TaskStatus, TaskStepResult
from .errors import InvalidTransitionError

__all__ = ["DEMO_DATABASE", "DEMO_USER", "demo_exists", "follow", "fresh_database",
           "run_workload"]

DEMO_DATABASE: Final = "aiecs_demo"
DEMO_USER: Final = "demo-user"


def demo_exists(server_url: str | URL) -> bool:
    """Whether the server already has an ``aiecs_demo`` database."""
    with connect(normalize_url(server_url)) as conn:
        row = conn.execute("SELECT EXISTS (SELECT FROM pg_database WHERE datname = %s)",
                           [DEMO_DATABASE]).fetchone()
    return bool(row and row[0])


def fresh_database(server_url: str | URL) -> URL:
    """Drop and re-create ``aiecs_demo`` on the server; return its URL."""
    url = normalize_url(server_url)
    with connect(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    return url.set(database=DEMO_DATABASE)


@dataclass(frozen=True)
class Outcome:
    task_id: str
    status: TaskStatus
    note: str


class _Tool:
    """A pretend tool call: returns a result, or fails the way the scenario says."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - simulated figures, not secrets

    async def call(self, name: str, delay: float = 0.0) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return {"tool": name, "tokens": self.rng.randint(50, 900),
                "score": round(self.rng.random(), 3)}


def _ok(name: str, result: Any) -> TaskStepResult:
    return TaskStepResult(name, result, True, f"{name} done", TaskStatus.COMPLETED.value)


def _failed(name: str, status: TaskStatus, code: ErrorCode, message: str) -> TaskStepResult:
    return TaskStepResult(name, None, False, f"{name} {status.value}", status.value,
                          code.value, message)


async def run_workload(db: Any, user: str = DEMO_USER, seed: int = 42) -> list[Outcome]:
    """Run the scenarios on an async ``DatabaseManager``; return one outcome per task."""
    tool = _Tool(seed)
    outcomes: list[Outcome] = []

    async def task(task_id: str, body: Callable[[str], Awaitable[str]]) -> None:
        await db.start_task(user, task_id)
        note = await body(task_id)
        record = await db.get_task(user, task_id)
        outcomes.append(Outcome(task_id, record.status, note))

    async def steps_then(task_id: str, names: list[str]) -> None:
        for i, name in enumerate(names):
            await db.save_task_history(user, task_id, i, _ok(name, await tool.call(name)))

    async def succeeds(task_id: str) -> str:
        await steps_then(task_id, ["search.web", "fetch.page", "llm.summarise", "report.write"])
        await db.finish_task(user, task_id, TaskStatus.COMPLETED)
        return "four steps, completed"

    def fails_with(code: ErrorCode, step: str, message: str,
                   status: TaskStatus = TaskStatus.FAILED) -> Callable[[str], Awaitable[str]]:
        async def body(task_id: str) -> str:
            await steps_then(task_id, ["plan"])
            await db.save_task_history(user, task_id, 1, _failed(step, status, code, message))
            await db.finish_task(user, task_id, status, code, message)
            return f"{step} failed with {code.value} ({code.category})"
        return body

    async def times_out(task_id: str) -> str:
        await steps_then(task_id, ["plan"])
        try:
            await asyncio.wait_for(tool.call("llm.generate", delay=1.0), timeout=0.05)
        except TimeoutError:
            message = "llm.generate did not answer within 50 ms"
            await db.save_task_history(user, task_id, 1, _failed(
                "llm.generate", TaskStatus.TIMED_OUT, ErrorCode.TIMEOUT_ERROR, message))
            await db.finish_task(user, task_id, TaskStatus.TIMED_OUT, ErrorCode.TIMEOUT_ERROR,
                                 message)
        return "a real asyncio timeout, recorded as E002"

    async def is_cancelled(task_id: str) -> str:
        await steps_then(task_id, ["plan", "search.web"])
        await db.mark_task_as_cancelled(user, task_id)
        try:
            await db.finish_task(user, task_id, TaskStatus.COMPLETED)
        except InvalidTransitionError as exc:
            return f"cancelled by the user; then the database refused: {exc.message}"
        return "cancelled"  # pragma: no cover - the trigger refuses the line above

    await task("research-report", succeeds)
    await task("bad-input", fails_with(ErrorCode.VALIDATION_ERROR, "validate.input",
                                       "field 'query' is empty"))
    await task("slow-model", times_out)
    await task("crashing-parser", fails_with(ErrorCode.EXECUTION_ERROR, "parse.pdf",
                                             "PDF stream is truncated"))
    await task("user-cancelled", is_cancelled)
    await task("flaky-api", fails_with(ErrorCode.RETRY_EXHAUSTED, "fetch.api",
                                       "HTTP 503 three times in a row"))
    await task("lost-database", fails_with(ErrorCode.DATABASE_ERROR, "store.vector",
                                           "vector store connection refused"))
    await task("bad-routing-rule", fails_with(ErrorCode.DSL_EVALUATION_ERROR, "route.plan",
                                              "unknown variable 'tier' in rule"))
    await task("deadline", fails_with(ErrorCode.CANCELLED_ERROR, "llm.generate",
                                      "stopped by the scheduler", TaskStatus.CANCELLED))
    return outcomes


async def follow(db: Any, task_id: str, user: str = DEMO_USER) -> list[str]:
    """What a watcher in another process would see of ``task_id`` while it runs: one line per
    committed change, with the time since the watch began (watch_task_history)."""
    started = time.monotonic()
    lines = []
    async for entry in db.watch_task_history(user, task_id):
        elapsed = (time.monotonic() - started) * 1000
        lines.append(f"+{elapsed:6.0f} ms  step {entry['step']} {entry['result']['step']}: "
                     f"{entry['status']}")
    return lines
