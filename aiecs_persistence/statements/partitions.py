"""Partitions of the history (``ddl.py``, partitions): creating those due, and the one a save
found missing; listing them for operators."""

from __future__ import annotations

from typing import Final

from .. import names
from .statement import Statement

#: The partitions due: the current period's and those kept ready ahead.
CREATE_DUE: Final = f"SELECT {names.PARTITIONS_FUNCTION}() AS created"
#: The partition of one bucket, as PostgreSQL printed it in a failed save's error.
CREATE_FOR: Final = f"SELECT {names.PARTITIONS_FUNCTION}(%(at)s::timestamptz) AS created"


def create_due() -> Statement:
    return Statement("create_partitions", CREATE_DUE)


def create_for(at: str) -> Statement:
    """The partition of the bucket ``at`` (a save found none: ``sqlstates.missing_partition``)."""
    return Statement("create_partitions", CREATE_FOR, {"at": at})
