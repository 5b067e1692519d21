"""The saves' lean path (prepared.py): a save is our own prepared statement on the writer's
connection, prepared again when it went missing, and off behind a transaction-mode pooler."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.rows import tuple_row

from aiecs_persistence import DatabaseManager, TaskStepResult, prepared
from aiecs_persistence.statements import Statement, columns, saves

from ..conftest import conninfo
from ..database import Server
from ..managers import Driven

STEP = TaskStepResult("op", {"n": 1}, True, "done", "completed")
NAMES = "SELECT name FROM pg_prepared_statements WHERE name LIKE 'aiecs\\_%' ORDER BY 1"


@pytest.fixture(autouse=True)
def _plain(pg: Server) -> None:
    if pg.citus:
        pytest.skip("on Citus a save is the cluster's function call, not this statement")


def on_writer(db: Driven, query: str) -> list[Any]:
    """``query`` on the connection the manager keeps for its saves."""
    conn = db.manager._held[-1]
    if db.loop is None:
        cur = conn.cursor(row_factory=tuple_row)
        cur.execute(query)
        return cur.fetchall() if cur.description else []

    async def run() -> list[Any]:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(query)
        return await cur.fetchall() if cur.description else []

    return db.loop.run_until_complete(run())


def name_of(text: str) -> str:
    return prepared.prepared(text).name.decode()


def test_a_save_is_our_prepared_statement(db, psql):
    db.save_task_history("u", "t", 0, STEP)  # a new task: the full save
    db.save_task_history("u", "t", 1, STEP)  # its task fresh: the step alone
    assert [row[0] for row in on_writer(db, NAMES)] == sorted(
        [name_of(saves.SAVE_STEP), name_of(saves.SAVE_STEP_ONLY)])
    assert psql.execute("SELECT count(*) FROM task_history").fetchone()[0] == 2


def test_a_deallocated_statement_is_prepared_again(db, psql):
    db.save_task_history("u", "a", 0, STEP)
    on_writer(db, "DEALLOCATE ALL")
    db.save_task_history("u", "b", 0, STEP)  # the same statement, gone from the server
    assert [row[0] for row in on_writer(db, NAMES)] == [name_of(saves.SAVE_STEP)]
    rows = psql.execute("SELECT task_id, status::text FROM tasks ORDER BY 1").fetchall()
    assert rows == [("a", "running"), ("b", "running")]


def test_a_statement_already_prepared_under_our_name_is_used(db_url, psql):
    """A server connection handed over with our statement on it (a session-mode pooler with
    no reset query): the name is the text's digest, so it is the same statement."""
    statement = saves.save_step("u", "t", 0, STEP, max_result_bytes=1 << 20)
    query = prepared.prepared(statement.sql)

    async def main() -> None:
        manager = DatabaseManager(url=db_url, auto_migrate=False)
        async with await psycopg.AsyncConnection.connect(conninfo(db_url),
                                                         autocommit=True) as conn:
            conn.pgconn.prepare(query.name, query.query)
            await manager._send(conn, statement)
            assert prepared.is_prepared(conn, query)

    asyncio.run(main())
    assert psql.execute("SELECT count(*) FROM task_history").fetchone()[0] == 1


def test_an_error_comes_back_as_psycopg_would_raise_it(db_url):
    """The server's error, built from its result as psycopg builds it: the same exception
    class and diagnostics (sqlstates.translate reads them)."""
    statement = saves.save_step("u", "t", 0, STEP, max_result_bytes=1 << 20)
    broken = Statement(statement.name, statement.sql, {**statement.params, "step": -1},
                           lean=True)

    async def main() -> BaseException:
        manager = DatabaseManager(url=db_url, auto_migrate=False)
        async with await psycopg.AsyncConnection.connect(conninfo(db_url),
                                                         autocommit=True) as conn:
            try:
                await manager._send(conn, broken)
            except psycopg.Error as exc:
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                return exc
        raise AssertionError("a negative step was accepted")

    error = asyncio.run(main())
    assert isinstance(error, psycopg.errors.CheckViolation)
    assert error.diag.constraint_name == "ck_task_history_step_index"


@pytest.mark.parametrize("settings", [{"transaction_pooling": True},
                                      {"prepare_threshold": None}])
def test_no_lean_path_behind_a_pooler_or_without_prepared_statements(db_url, psql, settings):
    async def main() -> None:
        async with DatabaseManager(url=db_url, auto_migrate=False, **settings) as manager:
            assert not manager._lean
            await manager.save_task_history("u", "t", 0, STEP)

    asyncio.run(main())
    assert psql.execute("SELECT count(*) FROM task_history").fetchone()[0] == 1


#: Strings an array literal must quote or escape, and values of every other element type.
AWKWARD = ["plain", "", "NULL", "null", " padded ", 'say "hi"', "back\\slash", "\\\"", "{a,b}",
           "comma, and; semicolon", "tab\tnew\nline", "é ☃ 𝄞", "'quote'"]


def generic_plan(psql: psycopg.Connection, statement: Statement) -> str:
    """The plan the server caches for ``statement`` on the lean path (the generic one)."""
    query = prepared.prepared(statement.sql)
    psql.execute("SET plan_cache_mode = force_generic_plan")
    assert psql.pgconn.prepare(query.name, query.query).status == psycopg.pq.ExecStatus.COMMAND_OK
    values = [None if v is None else v.decode() for v in query.values(statement.params)]
    cur = psycopg.ClientCursor(psql)
    cur.execute(f"EXPLAIN EXECUTE {query.name.decode()}({', '.join(['%s'] * len(values))})",
                values)
    return "\n".join(row[0] for row in cur.fetchall())


def test_the_probe_of_a_saves_task_is_a_primary_key_lookup_whatever_the_statistics(psql):
    """A save first asks whether its task was touched in the last second. After an ANALYZE
    of tasks touched long ago, the planner took ``updated_at >= now() - 1 s`` for an empty
    range of ``ix_tasks_updated_at`` and read that index instead of the primary key: every
    task touched in the last second, for each save. Lone and batched saves alike."""
    psql.execute("INSERT INTO tasks (user_id, task_id, status, started_at, created_at, "
                 "updated_at) SELECT 'u' || (i % 50), 't' || i, 'running', "
                 "now() - interval '2 days', now() - interval '2 days', "
                 "now() - interval '1 day' - i * interval '1 second' "
                 "FROM generate_series(1, 20000) i")
    psql.execute("ANALYZE tasks")
    lone = saves.save_step("u1", "t1", 0, STEP, max_result_bytes=2**20)
    batch = saves.save_steps([lone, saves.save_step("u2", "t2", 0, STEP, max_result_bytes=2**20)])
    for statement in (lone, batch):
        plan = generic_plan(psql, statement)
        assert "ix_tasks_updated_at" not in plan, plan
        assert "Index Scan using pk_tasks on tasks f" in plan, plan


def test_text_arrays_reach_the_server_as_given(psql):
    """``statements.columns.text_array``, the batch's arrays: every string back as it was, NULL
    as NULL, integers and booleans as themselves, and JSON as the same JSON."""
    texts = [*AWKWARD, None]
    assert psql.execute("SELECT %s::text[]", [columns.text_array(texts)]).fetchone()[0] == texts
    assert psql.execute("SELECT %s::integer[], %s::boolean[]", [
        columns.text_array([0, -1, 2**31 - 1, None]), columns.text_array([True, False, None]),
    ]).fetchone() == ([0, -1, 2**31 - 1, None], [True, False, None])
    documents = ['{"k": "say \\"hi\\" \\\\ there"}', '[1, "{a,b}", null]', "null", None]
    assert psql.execute("SELECT %s::jsonb[] = %s::jsonb[]", [
        columns.text_array(documents), "{" + ",".join(
            "NULL" if d is None else '"' + d.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for d in documents) + "}"]).fetchone()[0]
    assert [psql.execute("SELECT %s::jsonb", [d]).fetchone()[0] for d in documents[:3]] == \
        psql.execute("SELECT %s::jsonb[]", [columns.text_array(documents)]).fetchone()[0][:3]


def test_a_batch_is_our_prepared_statement_and_stores_every_value_as_given(db_url, psql):
    """Saves that queue behind a busy writer go out as one batch, the lean path's prepared
    statement; awkward step names, messages and results come back exactly."""
    async def main() -> None:
        async with DatabaseManager(url=db_url, auto_migrate=False,
                                   group_commit_writers=1) as manager:
            await asyncio.gather(*(manager.save_task_history(
                "u", f"t{i}", 0, TaskStepResult(text, {"text": text, "i": i}, False, text,
                                                "failed", "E003", text))
                for i, text in enumerate(AWKWARD[:1] + [t for t in AWKWARD if t.strip()])))
            conn = manager._held[-1]
            cur = conn.cursor(row_factory=tuple_row)
            names = [r[0] for r in await (await cur.execute(NAMES)).fetchall()]
            assert name_of(saves.SAVE_STEPS) in names
            assert manager.get_performance_report()["save_task_history (batch)"]["count"] >= 1

    asyncio.run(main())
    saved = [t for t in AWKWARD if t.strip()]
    rows = psql.execute("SELECT step_name, message, error_message, result FROM task_history "
                        "ORDER BY (result->>'i')::int").fetchall()
    assert [r[0] for r in rows] == AWKWARD[:1] + saved
    for (name, message, error, result), i in zip(rows, range(len(rows)), strict=True):
        assert message == error == name and result == {"text": name, "i": i}
