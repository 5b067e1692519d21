"""The saves' lean path (prepared.py) without a database: the statement in libpq's form, and
its parameters in text."""

from __future__ import annotations

import pytest

from aiecs_persistence import prepared
from aiecs_persistence.domain import TaskStepResult
from aiecs_persistence.statements import saves


def test_placeholders_become_numbered_parameters_in_first_use_order():
    query = prepared.prepared("SELECT %(b)s, %(a)s, %(b)s || '%%', 7 %% 2")
    assert query.query == b"SELECT $1, $2, $1 || '%', 7 % 2"
    assert query.order == ("b", "a")


def test_one_text_one_name_on_every_connection():
    one = prepared.prepared("SELECT %(x)s")
    assert one.name.startswith(b"aiecs_")
    assert prepared.prepared("SELECT %(x)s").name == one.name  # a digest, not a counter
    assert prepared.prepared("SELECT %(x)s + 1").name != one.name


def test_binary_parameters_are_not_for_the_lean_path():
    with pytest.raises(ValueError, match="binary parameter"):
        prepared.prepared("SELECT %(xs)b::int[]")


def test_values_in_text():
    query = prepared.prepared("SELECT %(s)s, %(n)s, %(t)s, %(f)s, %(z)s")
    values = query.values({"s": "é", "n": 42, "t": True, "f": False, "z": None})
    assert values == ["é".encode(), b"42", b"t", b"f", None]
    with pytest.raises(TypeError, match="float"):
        query.values({"s": 1.5, "n": 0, "t": True, "f": False, "z": None})


def test_the_saves_go_the_lean_way_with_every_parameter():
    result = TaskStepResult("op", {"n": 1}, True, "done", "completed")
    full = saves.save_step("u", "t", 3, result, max_result_bytes=1 << 20)
    assert full.lean
    for text in (saves.SAVE_STEP, saves.SAVE_STEP_ONLY):
        query = prepared.prepared(text)
        assert set(query.order) <= set(full.params)
        assert b"%(" not in query.query
    assert set(prepared.prepared(saves.SAVE_STEP).order) == set(full.params)
    batch = saves.save_steps([full, saves.save_step("u", "t", 4, result, max_result_bytes=1 << 20)])
    assert batch.lean  # its arrays are text literals (statements.columns.text_array)
    assert set(prepared.prepared(batch.sql).order) == set(batch.params)
    query = prepared.prepared(batch.sql)
    values = dict(zip(query.order, query.values(batch.params), strict=True))
    assert (values["users"], values["tasks"], values["step"]) == (b'{"u"}', b'{"t"}', b"{3,4}")
    assert not saves.save_steps_call([full]).lean  # Citus: binary arrays, psycopg's execute


def test_the_libpq_constants_are_psycopgs():
    from psycopg.pq import DiagnosticField, ExecStatus

    assert prepared.FATAL_ERROR == ExecStatus.FATAL_ERROR
    assert prepared._SQLSTATE == DiagnosticField.SQLSTATE
