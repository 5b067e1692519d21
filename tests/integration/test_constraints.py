"""The database protects history from every writer (contract §3, §4): raw SQL, as in psql."""

from __future__ import annotations

import psycopg
import pytest

from aiecs_persistence import TaskStatus
from aiecs_persistence.sqlstates import constraint_name  # the fields, else (Citus) the message

GOOD_STEP = {"step": 0, "step_name": "tool.op", "completed": False, "message": "",
             "status": "running", "error_code": None, "error_message": None}

# rule -> (column changes that break it, constraint name)
STEP_RULES = {
    "step index": ({"step": -1}, "ck_task_history_step_index"),
    "step name": ({"step_name": " \t "}, "ck_task_history_step_name"),
    "step name empty": ({"step_name": ""}, "ck_task_history_step_name"),
    "completed flag": ({"completed": True}, "ck_task_history_completed_flag"),
    "completed flag (status)": ({"status": "completed"}, "ck_task_history_completed_flag"),
    "error pair": ({"status": "failed", "error_code": "E003", "error_message": ""},
                   "ck_task_history_error_pair"),
    "error pair (message only)": ({"error_message": "boom"}, "ck_task_history_error_pair"),
    "error iff unsuccessful": ({"error_code": "E003", "error_message": "x"},
                               "ck_task_history_error_iff_unsuccessful"),
    "error iff unsuccessful (failed)": ({"status": "failed"},
                                        "ck_task_history_error_iff_unsuccessful"),
}


def insert_task(psql, user="u", task="t", status="running"):
    psql.execute("INSERT INTO tasks (user_id, task_id) VALUES (%s, %s)", (user, task))
    if status != "pending":
        psql.execute("UPDATE tasks SET status = %s WHERE user_id = %s AND task_id = %s",
                     (status, user, task))


def insert_step(psql, **changes):
    row = {**GOOD_STEP, **changes}
    cols = ", ".join(row)
    marks = ", ".join(f"%({c})s" for c in row)
    psql.execute(f"INSERT INTO task_history (user_id, task_id, {cols}) VALUES ('u', 't', {marks})",
                 row)


def test_a_row_that_satisfies_every_rule_is_accepted(psql):
    insert_task(psql)
    insert_step(psql)
    insert_step(psql, step=1, status="completed", completed=True)
    insert_step(psql, step=2, status="failed", error_code="E003", error_message="boom")
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (3,)


@pytest.mark.parametrize("rule", list(STEP_RULES))
def test_insert_breaking_a_rule_names_the_constraint(psql, rule):
    changes, constraint = STEP_RULES[rule]
    insert_task(psql)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        insert_step(psql, **changes)
    assert constraint_name(info.value) == constraint
    assert constraint in str(info.value)


@pytest.mark.parametrize("rule", [r for r in STEP_RULES if "step" not in STEP_RULES[r][0]])
def test_update_breaking_a_rule_names_the_constraint(psql, rule):
    # (An UPDATE of the step index is refused before any CHECK: a step keeps its key, below.)
    changes, constraint = STEP_RULES[rule]
    insert_task(psql)
    insert_step(psql)
    sets = ", ".join(f"{c} = %({c})s" for c in changes)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        psql.execute(f"UPDATE task_history SET {sets}", changes)
    assert constraint_name(info.value) == constraint
    assert psql.execute("SELECT status::text, step FROM task_history").fetchall() == [
        ("running", 0)]


@pytest.mark.parametrize(("sql", "constraint"), [
    ("INSERT INTO tasks (user_id, task_id) VALUES ('', 't')", "ck_tasks_user_id_length"),
    ("INSERT INTO tasks (user_id, task_id) VALUES ('u', repeat('x', 256))",
     "ck_tasks_task_id_length"),
    ("INSERT INTO tasks (user_id, task_id, status) VALUES ('u', 't', 'cancelled')",
     "ck_tasks_error_iff_unsuccessful"),
    ("INSERT INTO tasks (user_id, task_id, error_code, error_message) "
     "VALUES ('u', 't', 'E001', 'x')", "ck_tasks_error_iff_unsuccessful"),
    ("INSERT INTO tasks (user_id, task_id, status, error_code, error_message) "
     "VALUES ('u', 't', 'cancelled', 'E004', '')", "ck_tasks_error_pair"),
])
def test_task_rules(psql, sql, constraint):
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        psql.execute(sql)
    assert constraint_name(info.value) == constraint


def test_a_step_needs_its_task(psql):
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as info:
        insert_step(psql)
    assert constraint_name(info.value) == "fk_task_history_tasks"


def test_unknown_enum_label_is_rejected(psql):
    insert_task(psql)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        insert_step(psql, status="success")


def test_deleting_a_task_deletes_its_steps(psql):
    insert_task(psql)
    insert_step(psql)
    psql.execute("DELETE FROM tasks")
    assert psql.execute("SELECT count(*) FROM task_history").fetchone() == (0,)


# -- transitions, edge by edge, for both tables -----------------------------------------------

PAIRS = [(a, b) for a in TaskStatus for b in TaskStatus]
UNSUCCESSFUL = {"failed", "timed_out", "cancelled"}


def error_fields(status: str) -> dict:
    if status in UNSUCCESSFUL:
        return {"error_code": "E003", "error_message": f"{status} for a reason"}
    return {"error_code": None, "error_message": None}


def step_fields(status: str) -> dict:
    return {"status": status, "completed": status == "completed", **error_fields(status)}


def put_task_in(psql, status: str) -> None:
    psql.execute("INSERT INTO tasks (user_id, task_id) VALUES ('u', 't')")
    path = {"pending": [], "running": ["running"], "cancelled": ["cancelled"]}.get(
        status, ["running", status])
    for s in path:
        psql.execute("UPDATE tasks SET status = %(status)s, error_code = %(error_code)s, "
                     "error_message = %(error_message)s", {"status": s, **error_fields(s)})


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=lambda s: s.value)
def test_tasks_transition_edge(psql, source, target):
    put_task_in(psql, source.value)
    update = ("UPDATE tasks SET status = %(status)s, error_code = %(error_code)s, "
              "error_message = %(error_message)s")
    params = {"status": target.value, **error_fields(target.value)}
    if source.can_transition_to(target):
        psql.execute(update, params)
        assert psql.execute("SELECT status::text FROM tasks").fetchone() == (target.value,)
    else:
        with pytest.raises(psycopg.DatabaseError) as info:
            psql.execute(update, params)
        assert info.value.sqlstate == "AE001"
        assert f"{source.value} -> {target.value}" in str(info.value)
        assert psql.execute("SELECT status::text FROM tasks").fetchone() == (source.value,)


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=lambda s: s.value)
def test_task_history_transition_edge(psql, source, target):
    insert_task(psql)
    insert_step(psql, **step_fields(source.value))
    sets = ", ".join(f"{c} = %({c})s" for c in step_fields(target.value))
    if source.can_transition_to(target):
        psql.execute(f"UPDATE task_history SET {sets}", step_fields(target.value))
        assert psql.execute("SELECT status::text FROM task_history").fetchone() == (
            target.value,)
    else:
        with pytest.raises(psycopg.DatabaseError) as info:
            psql.execute(f"UPDATE task_history SET {sets}", step_fields(target.value))
        assert info.value.sqlstate == "AE001"
        assert f"{source.value} -> {target.value}" in str(info.value)


def test_new_task_rows_start_from_pending(psql):
    with pytest.raises(psycopg.DatabaseError, match="pending -> completed"):
        psql.execute("INSERT INTO tasks (user_id, task_id, status) VALUES ('u', 't', 'completed')")


def test_triggers_keep_timestamps_truthful(psql):
    insert_task(psql, status="pending")
    row = psql.execute("SELECT started_at, finished_at FROM tasks").fetchone()
    assert row == (None, None)
    psql.execute("UPDATE tasks SET status = 'running'")
    psql.execute("UPDATE tasks SET status = 'completed'")
    started, finished, updated = psql.execute(
        "SELECT started_at, finished_at, updated_at FROM tasks").fetchone()
    assert started is not None and finished is not None and started <= finished <= updated


def test_an_insert_the_trigger_skips_is_one_it_has_nothing_to_do_for(psql):
    """Revision 0007: a task created running with its start time and no finish time skips the
    status trigger (the saves' rows); every other insert is still checked and completed."""
    psql.execute("INSERT INTO tasks (user_id, task_id, status, started_at) "
                 "VALUES ('u', 'given', 'running', '2026-01-01T00:00:00Z')")
    psql.execute("INSERT INTO tasks (user_id, task_id, status) VALUES ('u', 'filled', 'running')")
    psql.execute("INSERT INTO tasks (user_id, task_id, status, started_at, finished_at) "
                 "VALUES ('u', 'cleared', 'running', now(), now())")
    rows = psql.execute(
        "SELECT task_id, started_at = '2026-01-01T00:00:00Z', started_at = updated_at, "
        "finished_at IS NULL FROM tasks ORDER BY 1").fetchall()
    assert rows == [("cleared", False, True, True), ("filled", False, True, True),
                    ("given", True, False, True)]
    for status in ("completed", "failed", "timed_out"):
        with pytest.raises(psycopg.DatabaseError, match=f"pending -> {status}") as info:
            psql.execute("INSERT INTO tasks (user_id, task_id, status, started_at) "
                         f"VALUES ('u', 'x', '{status}', now())")
        assert info.value.sqlstate == "AE001"


# A row keeps its keys and its creation time: (table, SET clause, column named in the error).
KEY_CHANGES = [
    ("task_history", "task_id = 'b', step = 1", "task_id"),
    ("task_history", "step = 5", "step"),
    ("task_history", "user_id = 'other'", "user_id"),
    ("task_history", "created_at = '2099-01-01'", "created_at"),
    ("tasks", "task_id = 'b'", "task_id"),
    ("tasks", "created_at = '2099-01-01'", "created_at"),
    ("task_events", "task_id = 'b'", "task_id"),
    ("task_events", "at = '2099-01-01'", "at"),
    ("task_events", "seq = DEFAULT", "seq"),
]


@pytest.mark.parametrize("table, change, column", KEY_CHANGES,
                         ids=[f"{t}.{c}" for t, _, c in KEY_CHANGES])
def test_keys_and_creation_times_never_change(psql, pg, table, change, column):
    """A hand-written UPDATE cannot move a step into another (running) task nor rewrite when
    a row was created: it fails naming the column, and the row stays as it was."""
    insert_task(psql, "u", "t")
    insert_task(psql, "u", "b")
    insert_step(psql)
    where = "user_id = 'u' AND task_id = 't'"
    before = psql.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY 1, 2").fetchall()
    assert before
    with pytest.raises(psycopg.DatabaseError) as info:
        psql.execute(f"UPDATE {table} SET {change} WHERE {where}")
    if pg.citus and column in ("user_id", "seq"):
        # Citus refuses these first: moving a row between shards, a volatile nextval().
        assert info.value.sqlstate in ("0A000", "XX000"), info.value
    else:
        assert f"{table}.{column} cannot change" in str(info.value)
        if not pg.citus:  # (a worker's error reaches the client as a message only)
            assert info.value.sqlstate == "AE002"
            assert info.value.diag.column_name == column
    assert psql.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY 1, 2").fetchall() == before


def test_other_updates_still_pass_the_key_triggers(psql):
    insert_task(psql)
    insert_step(psql)
    psql.execute("UPDATE task_history SET message = 'edited' WHERE user_id = 'u'")
    psql.execute("UPDATE tasks SET status = 'completed' WHERE user_id = 'u'")
    assert psql.execute("SELECT message FROM task_history WHERE user_id = 'u'").fetchone() == (
        "edited",)


def test_a_key_change_reaches_the_caller_as_a_validation_error(psql):
    from aiecs_persistence import ErrorCode, ValidationError
    from aiecs_persistence.sqlstates import translate

    insert_task(psql)
    with pytest.raises(psycopg.DatabaseError) as info:
        psql.execute("UPDATE tasks SET task_id = 'b' WHERE user_id = 'u'")
    error = translate(info.value, operation="update")
    assert isinstance(error, ValidationError) and error.error_code is ErrorCode.VALIDATION_ERROR
    assert error.field == "task_id" and "tasks.task_id cannot change" in error.message
