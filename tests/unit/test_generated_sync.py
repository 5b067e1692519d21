"""The blocking modules are generated from their async sources (tools/async_to_sync.py): they
must be fresh, the check must catch a stale copy, a malformed async branch is refused, and the
two managers must offer the same API."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from aiecs_persistence import DatabaseManager, SyncDatabaseManager
from aiecs_persistence.core import ManagerBase

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "async_to_sync.py"
SYNC = ROOT / "aiecs_persistence" / "sync.py"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def test_sync_module_is_generated_and_fresh():
    assert SYNC.read_text().startswith("# WARNING: generated from manager.py")
    for twin in ("listen_sync.py", "queued_sync.py"):
        assert (ROOT / "aiecs_persistence" / twin).read_text().startswith(
            "# WARNING: generated from "), twin
    done = run_tool("--check")
    assert done.returncode == 0, done.stderr


def test_check_fails_when_manager_changed(tmp_path):
    source = (ROOT / "aiecs_persistence" / "manager.py").read_text()
    edited = source.replace('"""Cancel the task (E004).', '"""Cancel the task now (E004).')
    assert edited != source
    scratch = tmp_path / "manager.py"
    scratch.write_text(edited)
    done = run_tool("--check", "--source", str(scratch), "--target", str(SYNC))
    assert done.returncode == 1
    assert "Cancel the task now" in done.stderr and "is stale" in done.stderr
    # Writing to a scratch target produces the edit, and the check then passes.
    target = tmp_path / "sync.py"
    assert run_tool("--source", str(scratch), "--target", str(target)).returncode == 0
    assert "Cancel the task now (E004)" in target.read_text()
    assert run_tool("--check", "--source", str(scratch), "--target", str(target)
                    ).returncode == 0


@pytest.mark.parametrize("branch", [
    "if False:  # ASYNC\n    import asyncio\n",
    "if True:\n    import asyncio\n",
    "if True:  # ASYNC\n    import asyncio\nelif False:\n    import threading\n",
], ids=["not True", "unmarked", "elif"])
def test_malformed_async_branches_are_refused(tmp_path, branch):
    scratch = tmp_path / "manager.py"
    scratch.write_text('"""doc"""\n' + branch)
    done = run_tool("--check", "--source", str(scratch), "--target", str(tmp_path / "s.py"))
    assert done.returncode == 2 and "async branch" in done.stderr, done.stderr


def test_an_async_branch_becomes_its_else_body(tmp_path):
    scratch = tmp_path / "manager.py"
    scratch.write_text('"""doc"""\n\n\ndef f() -> int:\n    if True:  # ASYNC\n'
                       '        return 1\n    else:\n        # blocking\n        return 2\n')
    target = tmp_path / "s.py"
    assert run_tool("--source", str(scratch), "--target", str(target)).returncode == 0
    body = target.read_text()
    assert "    # blocking\n    return 2\n" in body and "return 1" not in body
    assert "if True" not in body


def public_methods(cls: type) -> dict[str, object]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    names |= {"__init__", "__repr__"}
    return {n: getattr(cls, n) for n in names}


def test_both_managers_have_the_same_public_api():
    async_api, sync_api = public_methods(DatabaseManager), public_methods(SyncDatabaseManager)
    assert sorted(async_api) == sorted(sync_api)
    assert hasattr(DatabaseManager, "__aenter__") and hasattr(SyncDatabaseManager, "__enter__")
    for name, member in async_api.items():
        twin = sync_api[name]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        assert callable(member) and callable(twin), name
        is_async = (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
                    or "AsyncIterator" in str(inspect.signature(member).return_annotation))
        assert not inspect.iscoroutinefunction(twin), name
        assert not inspect.isasyncgenfunction(twin), name
        shared = name in ("__init__", "__repr__") or name in vars(ManagerBase)
        assert is_async != shared, f"{name}: async on DatabaseManager unless shared"
        a, s = inspect.signature(member), inspect.signature(twin)
        assert [(p.name, p.kind, p.default) for p in a.parameters.values()] == [
            (p.name, p.kind, p.default) for p in s.parameters.values()], name
        assert (member.__doc__ or "") == (twin.__doc__ or ""), name


@pytest.mark.parametrize("name", sorted(
    n for n in public_methods(SyncDatabaseManager) if not n.startswith("_")))
def test_every_public_method_is_documented(name):
    assert (getattr(SyncDatabaseManager, name).__doc__ or "").strip(), name
