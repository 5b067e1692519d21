"""Both managers driven the same way: async calls run on a private event loop."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

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
