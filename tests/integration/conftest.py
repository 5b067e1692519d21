"""One behavioural test module for both managers: async calls run on a private event loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from aiecs_persistence import DatabaseManager, SyncDatabaseManager


class Driven:
    """Calls a manager's methods the same way whichever it is (async ones are awaited)."""

    def __init__(self, manager: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.manager = manager
        self.loop = loop
        self.kind = "async" if loop else "sync"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.manager, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                assert self.loop is not None
                return self.loop.run_until_complete(result)
            return result

        return call


def make_manager(kind: str, **kwargs: Any) -> Driven:
    if kind == "async":
        return Driven(DatabaseManager(**kwargs), asyncio.new_event_loop())
    return Driven(SyncDatabaseManager(**kwargs), None)


def close(driven: Driven) -> None:
    driven.close()
    if driven.loop is not None:
        driven.loop.close()


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(kind: str, db_url: Any) -> Iterator[Driven]:
    driven = make_manager(kind, url=db_url)
    driven.connect()
    try:
        yield driven
    finally:
        close(driven)


@pytest.fixture
def counts(psql: Any) -> Any:
    """Row counts of both tables, to show that a failed call wrote nothing."""

    def read() -> tuple[int, int]:
        return (psql.execute("SELECT count(*) FROM tasks").fetchone()[0],
                psql.execute("SELECT count(*) FROM task_history").fetchone()[0])

    return read
