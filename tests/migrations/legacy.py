"""A realistic upstream AIECS ``task_history`` data set, built by the tests."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

UPSTREAM_DDL = """
CREATE TABLE task_history (
    id SERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    result JSONB NOT NULL,
    timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    status TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX idx_task_history_user_id ON task_history (user_id);
CREATE INDEX idx_task_history_task_id ON task_history (task_id);
CREATE INDEX idx_task_history_status ON task_history (status);
CREATE INDEX idx_task_history_timestamp ON task_history (timestamp);
"""

BASE_TIME = dt.datetime(2026, 1, 1, 12, 0, 0)


@dataclass
class LegacyData:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    adopted: int = 0
    cancelled_tasks: set[tuple[str, str]] = field(default_factory=set)
    v10_tasks: set[tuple[str, str]] = field(default_factory=set)

    def add(self, user, task, step, result, status, when, reject=None):
        self.rows.append((user, task, step, json.dumps(result), when, status))
        if reject:
            self.rejected[reject] += 1
        else:
            self.adopted += 1


def create_upstream(conn, data: LegacyData) -> None:
    """Upstream's table, holding ``data``, on the psycopg ``conn`` (autocommit)."""
    conn.execute(UPSTREAM_DDL)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO task_history (user_id, task_id, step, result, timestamp, status) "
            "VALUES (%s, %s, %s, %s, %s, %s)", data.rows)


def step_result(name, status, code=None, message=None, result=None):
    return {"step": name, "result": result, "completed": status == "completed",
            "message": f"{name} {status}", "status": status, "error_code": code,
            "error_message": message}


def build(seed: int = 7, tasks: int = 300) -> LegacyData:
    rng = random.Random(seed)
    data = LegacyData()
    for t in range(tasks):
        user, task = f"user-{t % 17}", f"task-{t:04d}"
        when = BASE_TIME + dt.timedelta(minutes=t)
        kind = rng.choice(["ok", "ok", "ok", "fail", "running", "v10", "cancelled"])
        steps = rng.randint(3, 10)
        for s in range(steps):
            when += dt.timedelta(seconds=1)
            last = s == steps - 1
            if kind == "fail" and last:
                r = step_result(f"tool.op{s}", "failed", "E003", "boom", None)
            elif kind == "running" and last:
                r = step_result(f"tool.op{s}", "running")
            elif kind == "v10":
                r = step_result(f"tool.op{s}", "success", result={"n": s})
                r["completed"] = True
                data.v10_tasks.add((user, task))
            else:
                r = step_result(f"tool.op{s}", "completed", result={"n": s, "q": "it's"})
            row_status = "cancelled" if kind == "cancelled" else r["status"]
            if kind == "cancelled":
                data.cancelled_tasks.add((user, task))
            # A retried save: an older duplicate of this very step.
            if rng.random() < 0.15:
                data.add(user, task, s, step_result(f"tool.op{s}", "running"), "running",
                         when - dt.timedelta(milliseconds=500),
                         reject="duplicate: superseded by a later save of the same step")
            data.add(user, task, s, r, row_status, when)
    # Broken rows, each in a task of its own so the good tasks stay whole.
    broken = [
        ({"step": "   ", "result": 1, "completed": True, "status": "completed"}, "completed",
         "step name: missing or blank", 20),
        (step_result("x", "exploded"), "exploded", "status: unknown status 'exploded'", 20),
        ([1, 2, 3], "completed", "result: not a step result object", 10),
        (step_result("x", "failed", "E003", None), "failed",
         "error pair: error code and error message must go together", 10),
        (step_result("x", "failed", "E042", "x"), "failed",
         "error code: unknown error code 'E042'", 5),
        (step_result("x", "completed") | {"completed": False}, "completed",
         "completed flag: completed must be true exactly when status is completed", 5),
    ]
    n = 0
    for result, status, reason, count in broken:
        for _ in range(count):
            n += 1
            data.add("user-broken", f"broken-{n}", 0, result, status, BASE_TIME, reject=reason)
    for i in range(5):
        data.add("user-neg", f"neg-{i}", -1, step_result("x", "completed"), "completed",
                 BASE_TIME, reject="step index: negative step")
    rng.shuffle(data.rows)
    return data
