"""Operations run beside live writers without failing them: ``aiecs-db import-legacy`` of
300,000 upstream lines and ``aiecs-db grant`` (which changes owners on its first run) while
16 coroutines keep saving steps. No writer may get an error."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aiecs_persistence import DatabaseManager, TaskStepResult
from aiecs_persistence.cli import app

runner = CliRunner()
WRITERS = 16


@contextmanager
def live_writers(url: Any) -> Iterator[Callable[[], tuple[int, list[BaseException]]]]:
    """16 coroutines saving steps (new steps and re-saves) until the block ends; yields a
    function giving (saves done, errors)."""
    stop = threading.Event()
    saves = [0]
    errors: list[BaseException] = []
    started = threading.Event()

    async def main() -> None:
        async with DatabaseManager(url=url, pool_size=8, auto_migrate=False) as db:
            async def writer(w: int) -> None:
                step = 0
                while not stop.is_set():
                    task = f"live-{w}-{step // 20}"
                    try:
                        await db.save_task_history("live", task, step % 20, TaskStepResult(
                            "op", None, False, "", "running"))
                        await db.save_task_history("live", task, step % 20, TaskStepResult(
                            "op", {"w": w}, True, "ok", "completed"))
                        saves[0] += 2
                    except Exception as exc:
                        errors.append(exc)
                    step += 1
                    started.set()

            await asyncio.gather(*(writer(w) for w in range(WRITERS)))

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield lambda: (saves[0], errors)
    finally:
        stop.set()
        thread.join(60)


def legacy_lines(path: Path, lines: int) -> None:
    with path.open("w") as f:
        for i in range(lines):
            task, step = divmod(i, 10)
            result = {"step": f"tool.op{step}", "result": {"i": i}, "completed": True,
                      "message": "", "status": "completed", "error_code": None,
                      "error_message": None}
            f.write(json.dumps({"user_id": f"legacy-{task % 97}", "task_id": f"task-{task}",
                                "step": step, "result": result,
                                "timestamp": "2026-01-01T12:00:00", "status": "completed"})
                    + "\n")


@pytest.mark.slow
def test_import_legacy_of_300k_lines_beside_16_writers(db_url, tmp_path):
    export = tmp_path / "upstream.jsonl"
    legacy_lines(export, 300_000)
    url = db_url.render_as_string(hide_password=False)
    with live_writers(db_url) as progress:
        before = progress()[0]
        done = runner.invoke(app, ["import-legacy", "--from-jsonl", str(export), "--url", url,
                                   "--json"])
        during = progress()[0] - before
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["adopted"] == 300_000 and summary["set_aside"] == 0
    errors = progress()[1]
    assert errors == [], errors[:3]
    assert during > 100, "the writers were not writing during the import"


@pytest.mark.slow
def test_grant_beside_16_writers(db_url):
    url = db_url.render_as_string(hide_password=False)
    with live_writers(db_url) as progress:
        for _ in range(3):  # the first run changes owners; the others change none
            done = runner.invoke(app, ["grant", "--url", url])
            assert done.exit_code == 0, done.output
    saves, errors = progress()
    assert errors == [], errors[:3]
    assert saves > 100
