"""How a step's ``result`` becomes JSONB, without surprises.

The rules (also in ``docs/architecture.md``):

=============================  ===========================================================
Python value                   JSON
=============================  ===========================================================
``None``                       the whole result ``None`` is SQL ``NULL``; nested: ``null``
``bool``, ``int``, ``str``     as is (strings round-trip byte-exact)
``float``                      a number; ``NaN`` and ``±Infinity`` are rejected
``dict`` with ``str`` keys     an object (other key types are rejected, never coerced)
``list``, ``tuple``            an array
``set``, ``frozenset``         an array, sorted when the items are sortable
``datetime``, ``date``,        ISO-8601 strings (``isoformat()``)
``time``
``uuid.UUID``                  its canonical string
``decimal.Decimal``            its exact string (``"12.50"``): JSON numbers would be read back
                               as floats and lose digits; ``NaN``/``Infinity`` are rejected
``Enum`` member                its value, encoded by these same rules
dataclass instance             an object of its fields
pydantic model                 ``model_dump(mode="json")``
anything else                  rejected
=============================  ===========================================================

Rejected too: strings containing NUL (``\\x00``, which PostgreSQL cannot store in text or
JSONB) or lone surrogates (not valid UTF-8), nesting deeper than ``max_depth``, and an encoded
result larger than ``max_bytes``. Every rejection is a
:class:`~aiecs_persistence.errors.ValidationError` whose ``field`` is the JSON path at fault
(``result.rows[3].name``), raised before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import math
import sys
import uuid
from enum import Enum
from typing import Any, Final

from .errors import ValidationError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "check_text",
    "encode_result",
    "to_jsonable",
]

#: Default size limit of one encoded result (UTF-8 bytes of its JSON text).
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
#: Default limit of nesting (objects and arrays inside each other).
DEFAULT_MAX_DEPTH: Final = 200

_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if key.isidentifier():
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key, ensure_ascii=True)}]"


def check_text(value: str, path: str) -> None:
    """Reject what PostgreSQL cannot store in text or JSONB: NUL and lone surrogates."""
    if "\x00" in value:
        raise ValidationError(
            f"{path}: contains a NUL character (\\x00), which PostgreSQL cannot store",
            field=path,
        )
    if value.isascii():  # the common case: no surrogate, nothing to encode
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{path}: contains a lone surrogate and is not valid UTF-8", field=path
        ) from None


def _check_int(value: int, path: str) -> int:
    """``value``, unless Python refuses to write it in decimal (over
    ``sys.get_int_max_str_digits()`` digits, 4,300 by default)."""
    if value.bit_length() > 14_000:  # about 4,200 digits: only then can it be refused
        try:
            str(value)
        except ValueError:
            raise ValidationError(
                f"{path}: an integer of more than {sys.get_int_max_str_digits()} digits "
                "cannot be written as JSON (store it as a string)", field=path,
            ) from None
    return value


def to_jsonable(value: Any, path: str = "result", *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Convert ``value`` to plain JSON types by the module's rules, or raise
    ``ValidationError`` naming the JSON path of the first value that cannot be stored."""
    return _convert(value, path, 0, max_depth)


def _convert(value: Any, path: str, depth: int, max_depth: int) -> Any:
    # Exact types first: they are by far the most common.
    kind = type(value)
    if kind is str:
        check_text(value, path)
        return value
    if kind is bool or value is None:
        return value
    if kind is int:
        return _check_int(value, path)
    if kind is float:
        if not math.isfinite(value):
            raise ValidationError(
                f"{path}: {value!r} is not a JSON number (NaN and Infinity cannot be stored)",
                field=path,
            )
        return value
    if depth >= max_depth:
        raise ValidationError(
            f"{path}: nested deeper than {max_depth} levels", field=path
        )
    if kind is dict or isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"{path}: object key {key!r} is a {type(key).__name__}; JSON keys must be "
                    "strings (convert them yourself: they would not round-trip)",
                    field=path,
                )
            child = _path(path, key)
            check_text(key, child)
            out[key] = _convert(item, child, depth + 1, max_depth)
        return out
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        return [_convert(v, _path(path, i), depth + 1, max_depth) for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = list(value)
        with contextlib.suppress(TypeError):  # unsortable items keep the set's order
            items.sort()
        return [_convert(v, _path(path, i), depth + 1, max_depth) for i, v in enumerate(items)]
    if isinstance(value, Enum):
        return _convert(value.value, path, depth, max_depth)
    if isinstance(value, str):  # str subclasses
        return _convert(str(value), path, depth, max_depth)
    if isinstance(value, int):  # int subclasses (IntFlag handled above as Enum)
        return int(value)
    if isinstance(value, float):
        return _convert(float(value), path, depth, max_depth)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValidationError(
                f"{path}: Decimal {value} is not a finite number and cannot be stored",
                field=path,
            )
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _convert(fields, path, depth, max_depth)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return _convert(dump(mode="json"), path, depth, max_depth)
    raise ValidationError(
        f"{path}: a {type(value).__module__}.{type(value).__qualname__} cannot be stored as "
        "JSON; convert it to dict/list/str/number first",
        field=path,
    )


def _plain(value: Any, depth_left: int) -> bool:
    """Whether ``value`` is made only of exact JSON types (dicts with ``str`` keys, lists,
    tuples, str, int, bool, None, finite floats) within the depth limit: the common case,
    which the C encoder can take as it is. Strings are checked on the encoded text."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth_left <= 0:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth_left - 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_plain(item, depth_left - 1) for item in value)
    return False


def encode_result(
    value: Any,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    path: str = "result",
) -> str | None:
    """The JSON text to store for ``value`` (``None`` stays ``None``: SQL ``NULL``)."""
    if value is None:
        return None
    text: str | None = None
    if _plain(value, max_depth):
        # Fast path. NUL is escaped as \u0000 by the encoder, and a lone surrogate makes the
        # UTF-8 encoding fail: either sends the value down the exact path below, which names
        # the JSON path at fault (a literal backslash-u0000 in a string only costs that).
        try:
            candidate = _ENCODER.encode(value)
        except ValueError:  # an integer too long to write: the exact path names it
            candidate = "\\u0000"
        if "\\u0000" not in candidate:
            try:
                size = len(candidate) if candidate.isascii() else len(
                    candidate.encode("utf-8"))
            except UnicodeEncodeError:
                pass
            else:
                text = candidate
    if text is None:
        text = _ENCODER.encode(_convert(value, path, 0, max_depth))
        size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ValidationError(
            f"{path}: encoded result is {size} bytes, over the limit of "
            f"{max_bytes} bytes (raise max_result_bytes to store it)",
            field=path,
        )
    return text
