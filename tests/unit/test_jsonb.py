"""How results become JSON (jsonb.py): accepted values, rejected ones with their JSON path."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from enum import Enum

import pytest

from aiecs_persistence import ErrorCode, TaskStatus, ValidationError
from aiecs_persistence.jsonb import encode_result, to_jsonable


class Color(Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    when: dt.date


class FakePydantic:
    def model_dump(self, mode: str = "python"):
        assert mode == "json"
        return {"model": True}


def test_none_is_sql_null():
    assert encode_result(None) is None
    assert encode_result({"a": None}) == '{"a":null}'


@pytest.mark.parametrize(("value", "expected"), [
    (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
    (dt.date(2026, 1, 2), "2026-01-02"),
    (dt.time(3, 4), "03:04:00"),
    (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    (decimal.Decimal("12.50"), "12.50"),
    (TaskStatus.FAILED, "failed"),
    (ErrorCode.EXECUTION_ERROR, "E003"),
    (Color.RED, "red"),
    ((1, 2), [1, 2]),
    ({3, 1, 2}, [1, 2, 3]),
    (frozenset({"b", "a"}), ["a", "b"]),
    (Point(1, dt.date(2026, 1, 1)), {"x": 1, "when": "2026-01-01"}),
    (FakePydantic(), {"model": True}),
])
def test_conversions(value, expected):
    assert to_jsonable(value) == expected
    assert json.loads(encode_result({"v": value})) == {"v": expected}


@pytest.mark.parametrize("text", ["it's", 'say "hi"', "back\\slash", "emoji 🎉",
                                  "'; DROP TABLE x;--", "tab\tnew\nline", "\u2028", "ünïcödé"])
def test_strings_are_exact(text):
    assert json.loads(encode_result({"s": text})) == {"s": text}


@pytest.mark.parametrize(("value", "path"), [
    ({"a": float("nan")}, "result.a"),
    ({"a": [1, float("inf")]}, "result.a[1]"),
    ([{"x": -float("inf")}], "result[0].x"),
    ({"a": "nul\x00"}, "result.a"),
    ({"nul\x00key": 1}, 'result["nul\\u0000key"]'),
    ({"s": "\ud800"}, "result.s"),
    ({"b": b"bytes"}, "result.b"),
    ({"o": object()}, "result.o"),
    ({1: "int key"}, "result"),
    ({"d": decimal.Decimal("NaN")}, "result.d"),
    ({"with space": {"x": float("nan")}}, 'result["with space"].x'),
])
def test_rejections_name_the_path(value, path):
    with pytest.raises(ValidationError) as info:
        encode_result(value)
    assert info.value.field == path
    assert str(info.value).startswith(path + ":")
    assert info.value.code is ErrorCode.VALIDATION_ERROR


def test_depth_and_size_limits():
    deep: list = []
    node = deep
    for _ in range(50):
        node.append([])
        node = node[0]
    assert encode_result(deep, max_depth=60)
    with pytest.raises(ValidationError, match="nested deeper than 10"):
        encode_result(deep, max_depth=10)
    with pytest.raises(ValidationError, match="over the limit of 100 bytes"):
        encode_result("x" * 200, max_bytes=100)
    assert encode_result("é" * 40, max_bytes=100)  # 80 bytes + quotes
    with pytest.raises(ValidationError):
        encode_result("é" * 60, max_bytes=100)  # 120 bytes


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, "x", None, True, {"b": (3, 4)}]},
    {"text": "a literal backslash-u0000: \\u0000 stays as typed"},
    ["é", "日本", "emoji 🎉", {"k": -0.0}],
    {"n": 10**30, "deep": [[[[["x"]]]]]},
])
def test_fast_path_gives_the_exact_paths_text(value):
    """Plain values skip the conversion walk; the text must be what the walk would give."""
    walked = json.dumps(to_jsonable(value), ensure_ascii=False, allow_nan=False,
                        separators=(",", ":"))
    assert encode_result(value) == walked
    assert json.loads(encode_result(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(("value", "path"), [
    ({"ok": "fine", "bad": "nul\x00here"}, "result.bad"),
    ({"list": ["ok", "lone \ud800 surrogate"]}, "result.list[1]"),
    ({"key\x00": 1}, 'result["key\\u0000"]'),
    ({"f": float("nan")}, "result.f"),
    ({1: "int key"}, "result"),
])
def test_fast_path_still_names_the_path(value, path):
    with pytest.raises(ValidationError) as caught:
        encode_result(value)
    assert caught.value.field == path
