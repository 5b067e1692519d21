"""Importing upstream AIECS history from elsewhere (``aiecs-db import-legacy``).

Revision ``0002_adopt_upstream`` adopts an upstream ``task_history`` table found *in the same
database*. This module brings rows from another database, or from a JSON lines export, into
``legacy_task_history`` and then runs the adoption rules (``adoption.py``; revision 0002 keeps
a frozen copy of the same rules): every row is adopted or set aside in
``legacy_task_history_rejects`` with its reason, and nothing is deleted.

Re-running is harmless: a source row already present in ``legacy_task_history`` (same user,
task, step, result, time and status, counted with multiplicity) is not copied again, and the
adoption itself skips what it already wrote. The whole import is one transaction under the
migrations' advisory lock: it either lands entirely or not at all. It takes no table lock:
concurrent writers go on, except that one saving to a task being adopted waits for the
import to commit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .adoption import adoption_sql
from .errors import ValidationError
from .migrate import ADVISORY_LOCK_KEY

__all__ = ["ImportSummary", "import_rows", "read_database", "read_jsonl"]

#: ``legacy_task_history`` as 0001 leaves a renamed upstream table (created if missing).
LEGACY_TABLE: Final = """
CREATE TABLE IF NOT EXISTS legacy_task_history (
    id SERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    result JSONB NOT NULL,
    "timestamp" TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    status TEXT NOT NULL DEFAULT 'pending'
)
"""
_STAGING: Final = """
CREATE TEMP TABLE aiecs_import (
    user_id text, task_id text, step integer, result jsonb, "timestamp" timestamp, status text
) ON COMMIT DROP
"""
_COPY: Final = 'COPY aiecs_import (user_id, task_id, step, result, "timestamp", status) FROM STDIN'
_COLUMNS: Final = 'user_id, task_id, step, result, "timestamp", status'
# New rows only: the n-th copy of a row is new when the table holds fewer than n copies.
_INSERT_NEW: Final = f"""
WITH incoming AS (
  SELECT i.*, row_number() OVER (PARTITION BY {_COLUMNS}) AS n FROM aiecs_import i
), present AS (
  SELECT {_COLUMNS}, row_number() OVER (PARTITION BY {_COLUMNS}) AS n
  FROM legacy_task_history l
  WHERE (l.user_id, l.task_id) IN (SELECT user_id, task_id FROM aiecs_import)
)
INSERT INTO legacy_task_history ({_COLUMNS})
SELECT {_COLUMNS} FROM incoming i
WHERE NOT EXISTS (
  SELECT FROM present p
  WHERE (p.user_id, p.task_id, p.step, p.result, p."timestamp", p.status, p.n)
        = (i.user_id, i.task_id, i.step, i.result, i."timestamp", i.status, i.n))
RETURNING id
"""
_SET_ASIDE: Final = """
SELECT reason, count(*) FROM legacy_task_history_rejects
WHERE legacy_id = ANY(%s) GROUP BY reason ORDER BY count(*) DESC, reason
"""
_FIELDS: Final = ("user_id", "task_id", "step", "result", "timestamp", "status")

Row = tuple[str, str, int, str, dt.datetime, str]


@dataclass
class ImportSummary:
    """What one import did. ``adopted + set_aside == new``; ``new + already_present == read``."""

    read: int = 0
    new: int = 0
    adopted: int = 0
    set_aside: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def already_present(self) -> int:
        return self.read - self.new

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "new": self.new, "already_present": self.already_present,
                "adopted": self.adopted, "set_aside": self.set_aside,
                "reasons": dict(self.reasons)}


def import_rows(
    connection: Any, rows: Iterable[Row], *, timezone: str | None = None,
    on_rows: Callable[[int], object] | None = None,
    on_adopt: Callable[[int], object] | None = None,
) -> ImportSummary:
    """Copy upstream rows into ``legacy_task_history`` and adopt them, in one transaction on
    the psycopg ``connection`` (a migrated database; its role must own ``tasks``).
    ``on_rows(n)`` is called as rows are copied, ``on_adopt(new)`` when the adoption of the
    new rows begins (the long, silent part)."""
    adopt = adoption_sql(timezone)
    summary = ImportSummary()
    with connection.transaction(), connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
        if cur.execute("SELECT to_regclass('tasks')").fetchone()[0] is None:
            raise ValidationError(
                "import-legacy: the database has no aiecs schema yet; run `aiecs-db upgrade`",
                field="database",
            )
        cur.execute(LEGACY_TABLE)
        cur.execute(_STAGING)
        with cur.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)
                summary.read += 1
                if on_rows is not None and summary.read % 1000 == 0:
                    on_rows(1000)
        if on_rows is not None:
            on_rows(summary.read % 1000)
        ids = [r[0] for r in cur.execute(_INSERT_NEW).fetchall()]
        summary.new = len(ids)
        if ids:
            if on_adopt is not None:
                on_adopt(len(ids))
            cur.execute(adopt)
            summary.reasons = dict(cur.execute(_SET_ASIDE, [ids]).fetchall())
        summary.set_aside = sum(summary.reasons.values())
        summary.adopted = summary.new - summary.set_aside
    return summary


def read_database(connection: Any, table: str = "task_history") -> tuple[int, Iterator[Row]]:
    """(row count, rows) of an upstream table on another psycopg ``connection``, streamed
    with a server-side cursor in id order."""
    from psycopg import sql

    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValidationError(f"table: {table!r} is not a [schema.]table name", field="table")
    name = sql.Identifier(*parts)
    total = connection.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()[0]

    def rows() -> Iterator[Row]:
        with connection.transaction(), connection.cursor(name="aiecs_legacy_source") as cur:
            cur.itersize = 5000
            cur.execute(
                sql.SQL('SELECT user_id, task_id, step, result::text, "timestamp", status '
                        "FROM {} ORDER BY id").format(name)
            )
            yield from cur

    return int(total), rows()


def read_jsonl(path: Path) -> tuple[int, Iterator[Row]]:
    """(line count, rows) of a JSON lines export: one object per line with ``user_id``,
    ``task_id``, ``step``, ``result``, ``timestamp`` (naive ISO 8601, as upstream stored it)
    and ``status`` (other keys,
    such as ``id``, are ignored). A bad line raises ``ValidationError`` naming it."""
    try:
        with path.open("rb") as f:
            total = sum(1 for line in f if line.strip())
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read ({exc.strerror})", field="file") from None

    def rows() -> Iterator[Row]:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield _jsonl_row(line, f"{path.name} line {number}")

    return total, rows()


def _jsonl_row(line: str, where: str) -> Row:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ValidationError(f"{where}: not JSON ({exc})", field="file") from None
    if not isinstance(data, dict):
        raise ValidationError(f"{where}: expected a JSON object", field="file")
    missing = [f for f in _FIELDS if f not in data]
    if missing:
        raise ValidationError(f"{where}: missing {', '.join(missing)}", field=missing[0])
    for name in ("user_id", "task_id", "status"):
        if not isinstance(data[name], str):
            raise ValidationError(f"{where}: {name} must be a string", field=name)
    step = data["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValidationError(f"{where}: step must be an integer", field="step")
    try:
        when = dt.datetime.fromisoformat(data["timestamp"])
    except (TypeError, ValueError):
        raise ValidationError(f"{where}: timestamp must be an ISO 8601 time",
                              field="timestamp") from None
    if when.tzinfo is not None:
        raise ValidationError(
            f"{where}: timestamp must be naive, as upstream stored it (give its zone with "
            "--timezone)", field="timestamp")
    return (data["user_id"], data["task_id"], step, json.dumps(data["result"]), when,
            data["status"])
