"""``aiecs-db``: the command line (also ``python -m aiecs_persistence``).

Exit codes: 0 success; 1 a check failed (``check``: not at head or enum drift); 2 bad usage
(typer's own); 3 database unreachable or failing; 4 invalid input. Errors are one line on
stderr (``--verbose`` adds the traceback); passwords are never printed.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

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
