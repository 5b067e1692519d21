"""Python and PostgreSQL agree on every consistency rule: the same arbitrary values go to
``domain.broken_rules`` (and ``statements.checks.check_id``) and to the schema's own CHECK
expressions, read from the catalog, and both must give the same verdict for each rule."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiecs_persistence import ErrorCode, TaskStatus, ValidationError
from aiecs_persistence.domain import STEP_RULES, broken_rules
from aiecs_persistence.statements.checks import check_id

# Whitespace of every kind (ASCII, Unicode, vertical tab), the letter v, and anything else.
TRICKY = " \t\n\r\f\v\x1c\x1d\x1e\x1f\x85\xa0\u2003\u3000vV"
texts = st.text(
    alphabet=st.one_of(st.sampled_from(TRICKY),
                       st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    max_size=8,
)
ids = st.one_of(texts, st.text(alphabet="ab", min_size=250, max_size=260))


def check_expressions(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT conname, pg_get_expr(conbin, conrelid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'c'", [table]).fetchall()
    return {name.removeprefix(f"ck_{table}_"): expr for name, expr in rows}


@pytest.fixture
def verdicts(psql: psycopg.Connection) -> Any:
    """``verdicts(values)``: the set of rules whose CHECK expression is false for ``values``."""
    exprs = check_expressions(psql, "task_history")
    assert set(STEP_RULES) <= set(exprs)
    exprs = {rule: exprs[rule] for rule in (*STEP_RULES, "step_index")}
    exprs |= {c: e for c, e in check_expressions(psql, "tasks").items()
              if c in ("user_id_length", "task_id_length")}
    select = ", ".join(f"({e}) IS FALSE" for e in exprs.values())
    query = (
        f"SELECT {select} FROM (SELECT %(step_name)s::text AS step_name, "
        "%(completed)s::boolean AS completed, %(status)s::task_status AS status, "
        "%(error_code)s::error_code AS error_code, %(error_message)s::text AS error_message, "
        "%(step)s::integer AS step, %(user_id)s::text AS user_id, "
        "%(task_id)s::text AS task_id) AS task_history")

    def broken(values: dict[str, Any]) -> set[str]:
        row = psql.execute(query, values).fetchone()
        assert row is not None
        return {rule for rule, bad in zip(exprs, row, strict=True) if bad}

    return broken


def python_verdict(values: dict[str, Any]) -> set[str]:
    broken = broken_rules(values["step_name"], values["completed"], values["status"],
                          values["error_code"], values["error_message"])
    if values["step"] < 0:
        broken.add("step_index")
    for name in ("user_id", "task_id"):
        try:
            check_id(values[name], name)
        except ValidationError:
            broken.add(f"{name}_length")
    return broken


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({
    "step_name": texts,
    "completed": st.booleans(),
    "status": st.sampled_from([s.value for s in TaskStatus]),
    "error_code": st.one_of(st.none(), st.sampled_from([c.value for c in ErrorCode])),
    "error_message": st.one_of(st.none(), texts),
    "step": st.integers(-3, 3),
    "user_id": ids,
    "task_id": ids,
}))
def test_python_and_postgresql_agree_on_every_rule(verdicts, values):
    assert python_verdict(values) == verdicts(values), values


def test_the_comparison_can_tell_rules_apart(verdicts):
    values = {"step_name": "vv", "completed": True, "status": "failed", "error_code": None,
              "error_message": "x", "step": -1, "user_id": "", "task_id": "t"}
    expected = {"completed_flag", "error_pair", "error_iff_unsuccessful", "step_index",
                "user_id_length"}
    assert verdicts(values) == python_verdict(values) == expected
