"""Fixtures of the behavioural tests (the managers and their fixtures: tests/managers.py,
tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def counts(psql: Any) -> Any:
    """Row counts of both tables, to show that a failed call wrote nothing."""

    def read() -> tuple[int, int]:
        return (psql.execute("SELECT count(*) FROM tasks").fetchone()[0],
                psql.execute("SELECT count(*) FROM task_history").fetchone()[0])

    return read
