"""Upstream AIECS's ``DatabaseManager``, reproduced for the benchmark only (the package never
imports this, nor asyncpg): the class our users replace, measured beside ours on the same server.

Written from the facts in the project's reference notes on the upstream class, not from its
code: an asyncpg pool (``asyncpg.create_pool`` with its default behaviour, including the reset
of a connection on release); its one table ``task_history`` (serial id, text keys, jsonb
result, a naive ``timestamp``, text status) with single-column indexes on user_id, task_id,
status and timestamp; a save is ``pool.acquire()`` around one plain ``INSERT`` of
``json.dumps(step_result.dict())`` and ``datetime.now()``; a load is one ``SELECT`` ordered by
step, then ``json.loads`` per row; a user's task list groups the user's rows by task. It
lives in its own schema (``aiecs_upstream``) of the benchmark's database, so its table does not
meet ours.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg

SCHEMA = "aiecs_upstream"

DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    """CREATE TABLE IF NOT EXISTS task_history (
        id SERIAL PRIMARY KEY,
        user_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        result JSONB NOT NULL,
        timestamp TIMESTAMP NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
    )""",
    "CREATE INDEX IF NOT EXISTS idx_task_history_user_id ON task_history (user_id)",
    "CREATE INDEX IF NOT EXISTS idx_task_history_task_id ON task_history (task_id)",
    "CREATE INDEX IF NOT EXISTS idx_task_history_status ON task_history (status)",
    "CREATE INDEX IF NOT EXISTS idx_task_history_timestamp ON task_history (timestamp)",
)

_INSERT = ("INSERT INTO task_history (user_id, task_id, step, result, timestamp, status) "
           "VALUES ($1, $2, $3, $4, $5, $6)")
_LOAD = ("SELECT step, result, timestamp, status FROM task_history "
         "WHERE user_id = $1 AND task_id = $2 ORDER BY step ASC")
# Our notes do not give its listing's SQL: this is the plain query its one table allows (a
# user's rows grouped by task, the status of the highest step, newest first).
_USER_TASKS = ("SELECT task_id, max(timestamp) AS last_updated, "
               "(array_agg(status ORDER BY step DESC))[1] AS status FROM task_history "
               "WHERE user_id = $1 GROUP BY task_id ORDER BY last_updated DESC LIMIT $2")


def connect_kwargs(url: Any) -> dict[str, Any]:
    """asyncpg's arguments for a SQLAlchemy URL (a Unix-socket directory may be in ``?host=``)."""
    host = url.host or url.query.get("host")
    return {"host": host, "port": url.port, "user": url.username, "password": url.password,
            "database": url.database,
            "server_settings": {"search_path": SCHEMA}}


class UpstreamManager:
    """The upstream class's save and load, as it runs them."""

    def __init__(self, url: Any, min_size: int, max_size: int) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.pool: Any = None

    async def connect(self) -> None:
        kwargs = connect_kwargs(self.url)
        setup = await asyncpg.connect(**{**kwargs, "server_settings": {}})
        try:
            await setup.execute(DDL[0])
            await setup.execute(f"SET search_path = {SCHEMA}")
            for statement in DDL[1:]:
                await setup.execute(statement)
        finally:
            await setup.close()
        self.pool = await asyncpg.create_pool(min_size=self.min_size, max_size=self.max_size,
                                              **kwargs)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def __aenter__(self) -> UpstreamManager:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def save_task_history(self, user_id: str, task_id: str, step: int,
                                step_result: Any) -> bool:
        async with self.pool.acquire() as conn:
            await conn.execute(_INSERT, user_id, task_id, step, json.dumps(step_result.dict()),
                               dt.datetime.now(), step_result.status)
        return True

    async def load_task_history(self, user_id: str, task_id: str) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LOAD, user_id, task_id)
        return [{"step": r["step"], "result": json.loads(r["result"]),
                 "timestamp": r["timestamp"].isoformat(), "status": r["status"]} for r in rows]

    async def get_user_tasks(self, user_id: str, limit: int = 100) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_USER_TASKS, user_id, limit)
        return [{"task_id": r["task_id"], "last_updated": r["last_updated"].isoformat(),
                 "status": r["status"]} for r in rows]
