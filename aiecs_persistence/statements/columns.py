"""Columns, named once, so no statement depends on the tables' physical column order; and the
array literals that carry many rows' values in one text parameter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from ..records import TaskRecord

#: A task as read back: ``TaskRecord``'s fields, in its order.
TASK_COLUMNS: Final = tuple(TaskRecord._fields)
#: A step's key.
STEP_KEY: Final = ("user_id", "task_id", "step")
#: A step result's columns (the seed's fields; its ``step`` name is stored as ``step_name``).
RESULT_COLUMNS: Final = (
    "step_name", "result", "completed", "message", "status", "error_code", "error_message"
)
#: What a save writes to ``task_history``, in this order (parameters and COPY rows alike).
STEP_COLUMNS: Final = STEP_KEY + RESULT_COLUMNS
#: The casts a column's text parameter needs.
_CASTS: Final = {"result": "::jsonb", "status": "::task_status", "error_code": "::error_code"}
#: Each column's array type in a statement over arrays (text otherwise).
ARRAY_TYPES: Final = {"step": "integer", "completed": "boolean", "result": "jsonb",
                      "status": "task_status", "error_code": "error_code"}


def listed(columns: Sequence[str], alias: str = "") -> str:
    """``columns`` as a SQL list, each prefixed by ``alias`` (``"h."``)."""
    return ", ".join(f"{alias}{c}" for c in columns)


def casted(columns: Sequence[str], template: str = "%({})s") -> str:
    """Each column as ``template`` (a parameter by default) with its cast."""
    return ", ".join(template.format(c) + _CASTS.get(c, "") for c in columns)


def array_type(column: str) -> str:
    """The array type of ``column``'s values (``integer[]``, ``text[]``...)."""
    return f"{ARRAY_TYPES.get(column, 'text')}[]"


def text_array(values: Iterable[Any]) -> str:
    """``values`` (strings, integers, booleans, None) as one PostgreSQL array literal, for a
    ``%(name)s::type[]`` parameter: every string quoted, with its backslashes and double quotes
    escaped, None as NULL. Built here because psycopg's own text arrays look up a dumper per
    element (0.7 ms of client time for 64 saves), and binary arrays cannot go through the lean
    path (prepared.py); this is about 1.7 µs a save."""
    return "{" + ",".join(map(_array_element, values)) + "}"


def task_arrays(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``users``/``tasks`` parameters of an upsert of many tasks: the distinct
    (user_id, task_id) pairs in key order (so concurrent writers lock tasks in one order), as
    ``text_array`` literals."""
    keys = sorted(set(pairs))
    return {"users": text_array([k[0] for k in keys]), "tasks": text_array([k[1] for k in keys])}


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, int):
        return str(value)
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'

