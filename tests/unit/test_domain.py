"""The domain model (contract §2, §3): enums, state machine, TaskStepResult, consistency."""

from __future__ import annotations

import pickle
from enum import Enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiecs_persistence import ErrorCode, TaskStatus, TaskStepResult, ValidationError
from aiecs_persistence.domain import STEP_FIELDS, check_step_fields, is_blank, migrate_record

S = TaskStatus
LEGAL = {
    (S.PENDING, S.RUNNING), (S.PENDING, S.CANCELLED),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.CANCELLED),
} | {(s, s) for s in S}
ALL_PAIRS = [(a, b) for a in S for b in S]


def test_enums_have_the_seeds_members_in_order():
    assert [(m.name, m.value) for m in TaskStatus] == [
        ("PENDING", "pending"), ("RUNNING", "running"), ("COMPLETED", "completed"),
        ("CANCELLED", "cancelled"), ("TIMED_OUT", "timed_out"), ("FAILED", "failed"),
    ]
    assert [(m.name, m.value) for m in ErrorCode] == [
        ("VALIDATION_ERROR", "E001"), ("TIMEOUT_ERROR", "E002"), ("EXECUTION_ERROR", "E003"),
        ("CANCELLED_ERROR", "E004"), ("RETRY_EXHAUSTED", "E005"), ("DATABASE_ERROR", "E006"),
        ("DSL_EVALUATION_ERROR", "E007"),
    ]


def test_error_categories():
    assert {c.value: c.category for c in ErrorCode} == {
        "E001": "client", "E002": "timeout", "E003": "execution", "E004": "system",
        "E005": "system", "E006": "system", "E007": "system",
    }


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_state_machine_edge_by_edge(source, target):
    assert source.can_transition_to(target) is ((source, target) in LEGAL)


def test_terminal_states():
    assert {s for s in S if s.is_terminal} == {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED}
    for s in S:
        if s.is_terminal:
            assert [t for t in S if s.can_transition_to(t)] == [s]


def test_can_transition_to_rejects_strings():
    with pytest.raises(TypeError):
        S.PENDING.can_transition_to("running")  # type: ignore[arg-type]


# -- TaskStepResult -------------------------------------------------------------------------


def test_positional_constructor_and_defaults():
    r = TaskStepResult("tool.op", {"a": 1}, True, "m", "completed", None, None)
    assert r.dict() == {"step": "tool.op", "result": {"a": 1}, "completed": True,
                        "message": "m", "status": "completed", "error_code": None,
                        "error_message": None}
    d = TaskStepResult("tool.op", None)
    assert (d.completed, d.message, d.status, d.error_code, d.error_message) == (
        False, "", "pending", None, None)
    assert list(d.dict()) == list(STEP_FIELDS)


def test_enum_members_are_stored_as_values():
    r = TaskStepResult("s", None, status=TaskStatus.FAILED,
                       error_code=ErrorCode.EXECUTION_ERROR, error_message="x")
    assert r.status == "failed" and type(r.status) is str
    assert r.error_code == "E003" and type(r.error_code) is str
    assert r.task_status is TaskStatus.FAILED and r.error is ErrorCode.EXECUTION_ERROR
    assert r == TaskStepResult("s", None, status="failed", error_code="E003", error_message="x")


def test_repr_is_the_seeds():
    assert repr(TaskStepResult("a.b", 1, True, status="completed")) == (
        "TaskStepResult(step='a.b', status='completed', completed=True)")


def test_immutable_and_value_equality():
    r = TaskStepResult("s", [1, 2])
    with pytest.raises(AttributeError):
        r.status = "running"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del r.step
    assert r == TaskStepResult("s", [1, 2])
    assert r != TaskStepResult("s", [1, 3])
    assert r != "s"
    assert hash(TaskStepResult("s", 1)) == hash(TaskStepResult("s", 1))
    assert pickle.loads(pickle.dumps(r)) == r
    changed = r.replace(status="running")
    assert changed.status == "running" and r.status == "pending"


def test_from_dict_and_errors():
    r = TaskStepResult("s", {"k": [1]}, True, "ok", "completed")
    assert TaskStepResult.from_dict(r.dict()) == r
    with pytest.raises(ValidationError) as info:
        TaskStepResult.from_dict({"result": 1})
    assert info.value.field == "step"
    with pytest.raises(ValidationError) as info:
        TaskStepResult.from_dict({"step": "s", "result": 1, "stauts": "failed"})
    assert info.value.field == "stauts" and info.value.code is ErrorCode.VALIDATION_ERROR
    with pytest.raises(ValidationError):
        TaskStepResult.from_dict(["not", "a", "mapping"])  # type: ignore[arg-type]


class UpstreamTaskStepResult:
    """Shaped like upstream AIECS's class: plain attributes, not ours."""

    def __init__(self, step, result, completed=False, message="", status="pending",
                 error_code=None, error_message=None):
        self.step, self.result, self.completed, self.message = step, result, completed, message
        self.status, self.error_code, self.error_message = status, error_code, error_message


def test_from_object_accepts_upstream_class_dicts_and_ours():
    up = UpstreamTaskStepResult("s", 1, False, "", TaskStatus.FAILED, ErrorCode.TIMEOUT_ERROR,
                                "slow")
    ours = TaskStepResult.from_object(up)
    assert ours.status == "failed" and ours.error_code == "E002"
    assert TaskStepResult.from_object(ours) is ours
    assert TaskStepResult.from_object({"step": "s", "result": 1}) == TaskStepResult("s", 1)
    with pytest.raises(ValidationError, match="step_result"):
        TaskStepResult.from_object(object())


def test_from_legacy():
    ok = TaskStepResult.from_legacy(
        {"operation": "op", "output": {"n": 1}, "success": True, "message": "done"})
    assert ok == TaskStepResult("op", {"n": 1}, True, "done", "completed")
    bad = TaskStepResult.from_legacy(
        {"operation": "op", "output": None, "success": False, "message": "disk full"})
    assert (bad.status, bad.error_code, bad.error_message) == ("failed", "E003", "disk full")
    assert bad.is_consistent()
    with pytest.raises(ValidationError, match="success"):
        TaskStepResult.from_legacy({"operation": "op", "output": 1})


def test_record_migration():
    assert migrate_record({"status": "success"}) == {"status": "completed", "version": "1.1"}
    assert migrate_record({"status": "error", "version": "1.0"}) == {
        "status": "failed", "version": "1.1"}
    assert migrate_record({"status": "error", "version": "1.1"}) == {
        "status": "error", "version": "1.1"}


# -- consistency rules, one by one ------------------------------------------------------------

GOOD = {"step": "s", "result": None, "completed": False, "message": "", "status": "running",
        "error_code": None, "error_message": None}


def problems_with(**changes):
    return check_step_fields({**GOOD, **changes})


def test_good_rows_have_no_problems():
    assert problems_with() == []
    assert problems_with(status="completed", completed=True) == []
    for s in ("failed", "timed_out", "cancelled"):
        assert problems_with(status=s, error_code="E003", error_message="why") == []


@pytest.mark.parametrize("name", ["", "   ", "\t\n", " \r\f\v "])
def test_rule_step_name(name):
    assert problems_with(step=name)[0].startswith("step: ")
    assert is_blank(name)


def test_rule_step_name_counts_only_sql_whitespace_as_blank():
    # Python's str.strip() would strip these too; the SQL rule (btrim) does not.
    assert not is_blank("\u00a0") and not is_blank("\x1c")


def test_rule_completed_flag():
    assert problems_with(completed=True)[0].startswith("completed: ")
    assert problems_with(status="completed", completed=False)[0].startswith("completed: ")


def test_rule_error_pair():
    p = problems_with(status="failed", error_code="E003")
    assert p[0].startswith("error_message: ")
    p = problems_with(status="failed", error_message="boom")
    assert p[0].startswith("error_code: ")
    p = problems_with(status="failed", error_code="E003", error_message="")
    assert p[0].startswith("error_message: ")


def test_rule_error_iff_unsuccessful():
    for s in ("failed", "timed_out", "cancelled"):
        assert any("needs an error code" in p for p in problems_with(status=s))
    p = problems_with(status="running", error_code="E003", error_message="x")
    assert p == [p[0]] and "must not carry an error code" in p[0]


def test_types_and_unknown_values():
    assert problems_with(step=3)[0].startswith("step: ")
    assert problems_with(completed="yes")[0].startswith("completed: ")
    assert problems_with(message=None)[0].startswith("message: ")
    assert problems_with(status="success")[0].startswith("status: ")
    assert problems_with(error_code="E999", status="failed",
                         error_message="x")[0].startswith("error_code: ")
    assert problems_with(error_message=5)[0].startswith("error_message: ")


def test_validate_raises_with_the_field():
    with pytest.raises(ValidationError) as info:
        TaskStepResult("s", 1, True).validate()
    assert info.value.field == "completed"
    assert "completed must be true exactly when status is 'completed'" in str(info.value)


# -- property: from_dict(r.dict()) == r ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def valid_results(draw):
    status = draw(st.sampled_from(list(TaskStatus)))
    unsuccessful = status in (S.FAILED, S.TIMED_OUT, S.CANCELLED)
    as_member = draw(st.booleans())
    code = draw(st.sampled_from(list(ErrorCode))) if unsuccessful else None
    return TaskStepResult(
        step=draw(st.text(min_size=1).filter(lambda t: not is_blank(t))),
        result=draw(json_values),
        completed=status is S.COMPLETED,
        message=draw(st.text()),
        status=status if as_member else status.value,
        error_code=(code if as_member else code.value) if code else None,
        error_message=draw(st.text(min_size=1)) if code else None,
    )


@given(valid_results())
def test_round_trip_through_dict(r):
    assert r.is_consistent(), r.problems()
    assert TaskStepResult.from_dict(r.dict()) == r


@given(st.sampled_from(list(TaskStatus)), st.sampled_from(list(TaskStatus)))
def test_enum_values_are_plain_strings(a, b):
    assert not isinstance(TaskStepResult("s", None, status=a).status, Enum)
    assert a.can_transition_to(b) == ((a, b) in LEGAL)
