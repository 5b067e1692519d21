"""``aiecs-db``: the command line (also ``python -m aiecs_persistence``).

Exit codes: 0 success; 1 a check failed (``check``: not at head or enum drift); 2 bad usage
(typer's own); 3 database unreachable or failing; 4 invalid input. Errors are one line on
stderr (``--verbose`` adds the traceback); passwords are never printed.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import embedded as embedded_server
from . import migrate
from .config import resolve_url, safe_url
from .errors import PersistenceError, ValidationError, mask_password

app = typer.Typer(
    help="aiecs-persistence: task execution history in PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)
embedded_app = typer.Typer(help="The embedded PostgreSQL used when AIECS_DATABASE_URL is unset.",
                           no_args_is_help=True)
app.add_typer(embedded_app, name="embedded")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
EXIT_CHECK_FAILED, EXIT_DATABASE, EXIT_INPUT = 1, 3, 4
_state = {"verbose": False}

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="AIECS_DATABASE_URL", show_envvar=True,
                 help="Database URL (default: the embedded PostgreSQL)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except PersistenceError as exc:
        if _state["verbose"]:
            err.print(mask_password(traceback.format_exc()), markup=False, highlight=False)
        err.print(f"error [{exc.code.value}]: {exc}", markup=False, highlight=False)
        code = EXIT_INPUT if isinstance(exc, ValidationError) else EXIT_DATABASE
        raise typer.Exit(code) from None


def _emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(human, markup=False, highlight=False)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show details.")] = False,
) -> None:
    _state["verbose"] = verbose


@app.command()
def upgrade(revision: str = "head", url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Migrate the database to REVISION (default: head)."""
    target = _run(lambda: resolve_url(url=url))
    _run(lambda: migrate.upgrade(target, revision))
    now = _run(lambda: migrate.current(target))
    _emit({"revision": now, "url": safe_url(target)}, as_json,
          f"{safe_url(target)}: at revision {now}")


@app.command()
def downgrade(revision: str, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Migrate the database down to REVISION (`base` removes everything)."""
    target = _run(lambda: resolve_url(url=url))
    _run(lambda: migrate.downgrade(target, revision))
    now = _run(lambda: migrate.current(target))
    _emit({"revision": now}, as_json, f"{safe_url(target)}: at revision {now or 'base'}")


@app.command()
def current(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Print the revision the database is at."""
    target = _run(lambda: resolve_url(url=url))
    status = _run(lambda: migrate.inspect(target))
    _emit({"current": status.current, "head": status.head, "at_head": status.at_head},
          as_json, f"{status.current or 'base (empty)'} (head: {status.head})")


@app.command()
def check(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Exit non-zero unless the database is at head and its enums match the code."""
    target = _run(lambda: resolve_url(url=url))
    status = _run(lambda: migrate.inspect(target))
    _emit({"ok": status.ok, "current": status.current, "head": status.head,
           "enum_problems": list(status.enum_problems)}, as_json, status.describe())
    if not status.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def sql(
    revision: str = "head",
    start: Annotated[str | None, typer.Option(help="Start revision (default: empty).")] = None,
) -> None:
    """Print the SQL of an upgrade, for a DBA to review and apply (offline)."""
    sys.stdout.write(_run(lambda: migrate.offline_sql(revision, start=start)))


def _manager(url: str | None) -> Any:
    from .sync import SyncDatabaseManager

    return SyncDatabaseManager(url=_run(lambda: resolve_url(url=url)), auto_migrate=False)


@app.command()
def tasks(
    user_id: str,
    status: Annotated[list[str] | None, typer.Option("--status", help="Filter (repeatable).")]
    = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a user's tasks, newest activity first."""
    with _manager(url) as db:
        page = _run(lambda: db.list_tasks(user_id, status=status or None, limit=limit))
    rows = [{"task_id": t.task_id, "status": t.status.value,
             "error_code": t.error_code.value if t.error_code else None,
             "updated_at": t.updated_at.isoformat()} for t in page]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("task", "status", "error", "last activity", title=f"tasks of {user_id}")
    for r in rows:
        table.add_row(r["task_id"], r["status"], r["error_code"] or "", r["updated_at"])
    out.print(table)


@app.command()
def history(user_id: str, task_id: str, url: UrlOption = None, as_json: JsonOption = False
            ) -> None:
    """The steps of one task: index, name, status, error and its meaning, message, time."""
    from .domain import ErrorCode

    with _manager(url) as db:
        steps = _run(lambda: db.load_task_history(user_id, task_id))
    if as_json:
        out.print_json(json.dumps(steps, default=str))
        return
    table = Table("#", "step", "status", "error", "meaning", "message", "time",
                  title=f"{user_id}/{task_id}")
    for e in steps:
        r = e["result"]
        code = r["error_code"]
        table.add_row(str(e["step"]), r["step"], e["status"], code or "",
                      ErrorCode(code).description if code else "",
                      r["error_message"] or r["message"], e["timestamp"])
    out.print(table)


def _days(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhw]?)", text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r}: expected e.g. 30d, 12h or 2w")
    number, unit = float(match.group(1)), match.group(2) or "d"
    return number * {"d": 1, "h": 1 / 24, "w": 7}[unit]


@app.command()
def cleanup(
    older_than: Annotated[str, typer.Option("--older-than", help="e.g. 30d, 12h, 2w")] = "30d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete tasks (and their steps) with no activity for the given time, in batches."""
    days = _days(older_than)
    with _manager(url) as db:
        count = _run(lambda: db.cleanup_old_tasks(days, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    _emit({"tasks": count, "dry_run": dry_run, "older_than_days": days}, as_json,
          f"{verb} {count} task(s) with no activity for {older_than}")


@embedded_app.command("status")
def embedded_status(as_json: JsonOption = False) -> None:
    """Where the embedded server keeps its data and whether it runs."""
    s = embedded_server.status()
    _emit({"data_dir": str(s.data_dir), "initialised": s.initialised, "running": s.running,
           "pid": s.pid, "url": s.url}, as_json,
          f"data: {s.data_dir}\ninitialised: {s.initialised}\nrunning: {s.running}"
          + (f" (pid {s.pid})\nurl: {s.url}" if s.running else ""))


@embedded_app.command("url")
def embedded_url() -> None:
    """Start the embedded server if needed and print its URL."""
    out.print(_run(embedded_server.ensure_running), markup=False, highlight=False)


@embedded_app.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server."""
    stopped = _run(embedded_server.stop)
    out.print("stopped" if stopped else "not running")


def main() -> None:
    app()
