"""``aiecs-db``: the command line (also ``python -m aiecs_persistence``).

Exit codes: 0 success; 1 a check failed (``check``: not at head or enum drift); 2 bad usage
(typer's own); 3 database unreachable or failing; 4 invalid input. Errors are one line on
stderr (``--verbose`` adds the traceback); passwords are never printed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shlex
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from . import embedded as embedded_server
from . import migrate
from .config import connect, normalize_url, resolve_url, safe_url
from .domain import ErrorCode, TaskStepResult
from .errors import PersistenceError, SchemaMismatchError, ValidationError, mask_password
from .sqlstates import classify, translate

#: click's usage error, as typer bundles it (BadParameter's base).
_UsageError: Any = typer.BadParameter.__bases__[0]


class _Commands(TyperGroup):
    r"""The command group, and the one place where failures become one line and an exit code:
    ``PersistenceError``\ s and driver errors print ``error [E00x]: …`` (the traceback too with
    ``--verbose``) and exit 4 for invalid input, else 3. Anything else is a bug: it is raised."""

    def invoke(self, ctx: Any) -> Any:  # ctx: the Context of the click that typer bundles
        wants_json = "--json" in ctx.args  # the subcommand's arguments, before it runs
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err.print("interrupted", markup=False, highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except _UsageError as exc:
            # One line, as every other failure: what is wrong and where to read more.
            name = exc.ctx.command_path if exc.ctx is not None else "aiecs-db"
            err.print(f"error: {exc.format_message()} (see `{name} --help`)", markup=False,
                      highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        except BrokenPipeError:
            # Whoever read our output stopped (`aiecs-db tasks u | head`): that is no failure.
            # Later writes (and the interpreter's final flush) go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if isinstance(exc, PersistenceError):
                error = exc
            elif classify(exc) is not None:
                error = translate(exc)
            else:
                raise
            if isinstance(ctx.obj, Options) and ctx.obj.verbose:
                err.print(mask_password(traceback.format_exc()), markup=False, highlight=False)
            # Bad input, or a database not migrated yet (the user's to fix): 4; else 3.
            code = (EXIT_INPUT if isinstance(error, ValidationError | SchemaMismatchError)
                    else EXIT_DATABASE)
            if wants_json:  # machine-readable, on stdout, as the data would have been
                out.print_json(json.dumps({"error": {
                    "code": error.code.value, "category": error.code.category,
                    "type": type(error).__name__, "message": error.message,
                    "field": error.field, "exit": code}}))
            err.print(f"error [{error.code.value}]: {error}", markup=False, highlight=False)
            raise typer.Exit(code) from None


@dataclass
class Options:
    """The options of the group, kept in the click context (``ctx.obj``)."""

    verbose: bool = False
    quiet: bool = False


app = typer.Typer(
    cls=_Commands,
    help="aiecs-persistence: task execution history in PostgreSQL.\n\n"
    "Environment: AIECS_DATABASE_URL (the database; else the embedded PostgreSQL), "
    "AIECS_EMBEDDED_DIR (where the embedded server keeps its data), "
    "AIECS_TEST_DATABASE_URL (the test suite's server).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
    rich_markup_mode=None,  # plain help: flags shown as flags, usage errors as plain text
    pretty_exceptions_enable=False,  # never print locals (they may hold a URL's password)
)
embedded_app = typer.Typer(help="The embedded PostgreSQL used when AIECS_DATABASE_URL is unset.",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(embedded_app, name="embedded")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_DATABASE, EXIT_INPUT, EXIT_INTERRUPTED = 1, 2, 3, 4, 130

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="AIECS_DATABASE_URL", show_envvar=True,
                 help="Database URL (default: the embedded PostgreSQL)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
YesOption = Annotated[bool, typer.Option(
    "--yes", "-y", help="Do not ask before destroying data (needed without a terminal).")]


def _confirm(what: str, yes: bool) -> None:
    """Ask before destroying data. ``--yes`` answers for the user; with no terminal to ask
    and no ``--yes``, refuse (exit 4) and change nothing."""
    if yes:
        return
    if not sys.stdin.isatty():
        err.print(f"error: refusing to {what} without --yes (no terminal to ask)",
                  markup=False, highlight=False)
        raise typer.Exit(EXIT_INPUT)
    if not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        err.print("nothing changed", markup=False, highlight=False)
        raise typer.Exit(EXIT_INPUT)


def _row_counts(target: Any) -> str:
    """Rows in our tables, e.g. ``tasks 3, task_history 12``."""
    with connect(target) as conn:
        found = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p') AND c.relnamespace = "
            "current_schema()::regnamespace AND c.relname = ANY(%s) ORDER BY 1",
            [["tasks", "task_history", "task_events", "legacy_task_history"]]).fetchall()]
        counts = [(t, conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()) for t in found]
    return ", ".join(f"{t} {row[0] if row else 0}" for t, row in counts) or "no tables"


def _emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(human, markup=False, highlight=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The library's log on stderr, for --verbose / --log-level (one at a time): whatever
    ``sys.stderr`` is when a record comes."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr(level: str | None) -> None:
    """The library's log on stderr from ``level``; None: not at all (the default)."""
    logger = logging.getLogger("aiecs_persistence")
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    logger.setLevel(level or logging.NOTSET)
    if level:
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"aiecs-db (aiecs-persistence) {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show details.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only the results: no progress bars, no remarks.")] = False,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", metavar="LEVEL", help="Show the library's log on stderr from LEVEL "
        "(DEBUG, INFO, WARNING, ERROR).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = Options(verbose=verbose, quiet=quiet)
    # The library logs failures itself (at DEBUG); with --verbose they show.
    level = "DEBUG" if verbose else (log_level or "").upper()
    if level and level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"{log_level!r}: expected DEBUG, INFO, WARNING or ERROR",
                                 param_hint="--log-level")
    _log_to_stderr(level or None)


RevisionArgument = Annotated[str, typer.Argument(
    help="A revision: its id (or a unique prefix), head, base, or relative as -1 / +1.")]
SqlOption = Annotated[bool, typer.Option(
    "--sql", help="Print the SQL instead of running it (offline: no database needed).")]
XOption = Annotated[list[str] | None, typer.Option(
    "-x", metavar="KEY=VALUE", help="Passed to the migration environment, as alembic's -x: "
    "lock_timeout=10s, migration_lock_timeout=60s, legacy_timezone=Europe/Paris "
    "(repeatable).")]


def _x_options(values: list[str] | None) -> dict[str, str]:
    options = {}
    for value in values or ():
        key, sep, setting = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="-x")
        options[key] = setting
    return options


@app.command()
def upgrade(revision: RevisionArgument = "head", url: UrlOption = None,
            as_json: JsonOption = False, sql: SqlOption = False, x: XOption = None) -> None:
    """Migrate the database up to REVISION (default: head), as `alembic upgrade`."""
    options = _x_options(x)
    if sql:
        sys.stdout.write(migrate.offline_sql(revision, options=options))
        return
    target = resolve_url(url=url)
    before = migrate.current(target)
    migrate.upgrade(target, revision, options=options)
    now = migrate.current(target)
    adoption = _adoption(target) if before is None else None
    text = f"{safe_url(target)}: at revision {now}"
    if adoption is not None:
        reasons = "".join(f"\n  {n:>7}  {r}" for r, n in adoption["reasons"].items())
        text += (f"\nadopted upstream AIECS history: {adoption['adopted']} of "
                 f"{adoption['read']} row(s); {adoption['set_aside']} set aside"
                 + (f" (see legacy_task_history_rejects):{reasons}" if reasons else ""))
    _emit({"revision": now, "url": safe_url(target), "adoption": adoption}, as_json, text)


def _adoption(target: Any) -> dict[str, Any] | None:
    """What the upgrade adopted of an upstream table it found (None: there was none)."""
    with connect(target) as conn:
        if conn.execute("SELECT to_regclass('legacy_task_history')").fetchone() == (None,):
            return None
        read = conn.execute("SELECT count(*) FROM legacy_task_history").fetchone()
        reasons = dict(conn.execute(
            "SELECT reason, count(*) FROM legacy_task_history_rejects GROUP BY reason "
            "ORDER BY count(*) DESC, reason").fetchall())
    total = int(read[0]) if read else 0
    aside = sum(reasons.values())
    return {"read": total, "adopted": total - aside, "set_aside": aside, "reasons": reasons}


@app.command(context_settings={"ignore_unknown_options": True})  # `downgrade -1`
def downgrade(revision: RevisionArgument, url: UrlOption = None, as_json: JsonOption = False,
              yes: YesOption = False, sql: SqlOption = False, x: XOption = None) -> None:
    """Migrate the database down to REVISION (`base` removes everything, `-1` one revision
    down), as `alembic downgrade`. Asks first."""
    options = _x_options(x)
    if sql:
        sys.stdout.write(migrate.offline_sql(revision, down=True, options=options))
        return
    target = resolve_url(url=url)
    _confirm(f"downgrade {safe_url(target)} from {migrate.current(target) or 'base'} to "
             f"{revision}, dropping what the reverted revisions created (rows now: "
             f"{_row_counts(target)})", yes)
    migrate.downgrade(target, revision, options=options)
    now = migrate.current(target)
    _emit({"revision": now}, as_json, f"{safe_url(target)}: at revision {now or 'base'}")


@app.command()
def stamp(revision: RevisionArgument, url: UrlOption = None) -> None:
    """Record REVISION as the database's without running anything (as `alembic stamp`)."""
    target = resolve_url(url=url)
    migrate.stamp(target, revision)
    out.print(f"{safe_url(target)}: stamped {migrate.current(target) or 'base'}",
              markup=False, highlight=False)


@app.command()
def heads(as_json: JsonOption = False) -> None:
    """The head revision of the shipped migrations (as `alembic heads`)."""
    _emit({"head": migrate.head()}, as_json, migrate.head())


@app.command()
def revisions(url: Annotated[str | None, typer.Option(
        "--url", envvar="AIECS_DATABASE_URL", help="Also mark the database's revision.")]
        = None, as_json: JsonOption = False) -> None:
    """The migration history, newest first (as `alembic history`; `history` shows a task's
    steps)."""
    at = migrate.current(resolve_url(url=url)) if url else None
    rows = [{"revision": r, "revises": d, "title": t, "current": r == at}
            for r, d, t in migrate.revisions()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for row in rows:
        mark = " (current)" if row["current"] else ""
        out.print(f"{row['revises'] or '<base>'} -> {row['revision']}{mark}: {row['title']}",
                  markup=False, highlight=False)


@app.command()
def current(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Print the revision the database is at."""
    target = resolve_url(url=url)
    status = migrate.inspect(target)
    _emit({"current": status.current, "head": status.head, "at_head": status.at_head},
          as_json, f"{status.current or 'base (empty)'} (head: {status.head})")


@app.command()
def check(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Exit non-zero unless the database is at head, its enums match the code, nothing earlier
    on the search_path shadows our tables, the partitions of the current and coming periods
    exist and, on a Citus coordinator, every table is distributed as it should be."""
    target = resolve_url(url=url)
    status = migrate.inspect(target)
    missing, security = _partitions_and_security(target) if status.ok else (0, [])
    human = status.describe() + (
        f"; {missing} partition(s) of the current and coming periods are missing "
        "(run `aiecs-db maintain`)" if missing else "") + "".join(f"; {p}" for p in security)
    _emit({"ok": status.ok and not missing and not security, "current": status.current,
           "head": status.head, "enum_problems": list(status.enum_problems),
           "citus": status.on_citus,
           "distribution_problems": list(status.distribution_problems),
           "schema": status.schema, "shadowing": list(status.shadowing),
           "missing_partitions": missing, "row_security_problems": security},
          as_json, human)
    if not status.ok or missing or security:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _partitions_and_security(target: Any) -> tuple[int, list[str]]:
    """How many partitions of the current period and those to be kept ready ahead do not
    exist, and the drift of row-level security (``scopes.problems``)."""
    from . import scopes
    from .statements import partitions as statements

    with connect(target) as conn:
        row = conn.execute(statements.MISSING).fetchone()
        security = scopes.problems(conn)
    return (int(row[0]) if row else 0), security


@app.command()
def sql(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    start: Annotated[str | None, typer.Option(help="Start revision (default: empty).")] = None,
    x: XOption = None,
) -> None:
    """Print the SQL of an upgrade, for a DBA to review and apply (offline; the same as
    `upgrade --sql`)."""
    sys.stdout.write(migrate.offline_sql(revision, start=start, options=_x_options(x)))


@contextmanager
def _manager(url: str | None) -> Iterator[Any]:
    """A connected blocking manager; it never migrates (that is `upgrade`'s job)."""
    from .sync import SyncDatabaseManager

    db = SyncDatabaseManager(url=resolve_url(url=url), auto_migrate=False)
    db.connect()
    try:
        yield db
    finally:
        db.disconnect()


@app.command()
def tasks(
    user_id: str,
    status: Annotated[list[str] | None, typer.Option(
        "--status", help="Filter (repeatable): pending, running, completed, cancelled, "
        "timed_out, failed.")]
    = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a user's tasks, newest activity first."""
    with _manager(url) as db:
        page = db.list_tasks(user_id, status=status or None, limit=limit)
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
def history(
    user_id: str, task_id: str, url: UrlOption = None, as_json: JsonOption = False,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Print steps as they are committed (every change of the "
        "task so far first), until the task ends; Ctrl-C stops. With --json: one JSON object "
        "a line.")] = False,
) -> None:
    """The steps of one task: index, name, status, error and its meaning, message, time."""
    if follow:
        _follow(user_id, task_id, url, as_json)
        return
    with _manager(url) as db:
        steps = db.load_task_history(user_id, task_id)
    if as_json:
        out.print_json(json.dumps(steps, default=str))
        return
    out.print(_history_table(f"{user_id}/{task_id}", steps))


def _follow(user_id: str, task_id: str, url: str | None, as_json: bool) -> None:
    try:
        with _manager(url) as db:
            for entry in db.watch_task_history(user_id, task_id):
                if as_json:
                    sys.stdout.write(json.dumps(entry, default=str) + "\n")
                    sys.stdout.flush()
                    continue
                step, result, when = _step_of(entry)
                code = result.error_code
                error = f" {code} {_meaning(code)}" if code else ""
                out.print(f"{when:%H:%M:%S} #{step} {result.step} {result.status}{error} "
                          f"{result.error_message or result.message}".rstrip(),
                          markup=False, highlight=False)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _step_of(entry: dict[str, Any]) -> tuple[int, TaskStepResult, dt.datetime]:
    """A ``load_task_history`` entry as the library's value object: (index, result, time)."""
    return (entry["step"], TaskStepResult(**entry["result"]),
            dt.datetime.fromisoformat(entry["timestamp"]))


def _meaning(code: str) -> str:
    return ErrorCode(code).description


def _history_table(title: str, steps: list[dict[str, Any]]) -> Table:
    table = Table("#", "step", "status", "error", "meaning", "message", "time", title=title)
    for entry in steps:
        step, result, when = _step_of(entry)
        code = result.error_code
        table.add_row(str(step), result.step, result.status, code or "",
                      _meaning(code) if code else "",
                      result.error_message or result.message, f"{when:%Y-%m-%d %H:%M:%S}")
    return table


def _days(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhw]?)", text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r}: expected e.g. 30d, 12h or 2w")
    number, unit = float(match.group(1)), match.group(2) or "d"
    return number * {"d": 1, "h": 1 / 24, "w": 7}[unit]


def _when(text: str | None, name: str) -> dt.datetime | None:
    """An ISO date or time (UTC when no zone is given), or a duration ago such as ``7d``."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return dt.datetime.now(dt.UTC) - dt.timedelta(days=_days(text))
        except typer.BadParameter:
            raise typer.BadParameter(
                f"{text!r}: expected an ISO date or time (2026-11-01, 2026-11-01T12:00+01:00) "
                "or a duration ago (7d, 12h, 2w)", param_hint=name) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@app.command()
def report(
    since: Annotated[str | None, typer.Option(help="From (ISO date/time, or e.g. 7d ago).")]
    = None,
    until: Annotated[str | None, typer.Option(help="Until, exclusive (same forms).")] = None,
    top: Annotated[int, typer.Option(help="How many busiest steps to show.")] = 10,
    plot: Annotated[Path | None, typer.Option(help="Also write a bar chart to this PNG.")]
    = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Failures by error code and category, busiest steps, per-day counts."""
    from . import report as presentation

    start, end = _when(since, "--since"), _when(until, "--until")
    with _manager(url) as db:
        data = db.report(start, end, top)
    if plot is not None:
        period = f"{since or 'the beginning'} to {until or 'now'}"
        where = safe_url(resolve_url(url=url))
        presentation.plot(data, plot, title=f"aiecs-persistence report: {where}, {period}")
    if as_json:
        out.print_json(json.dumps(data))
        return
    for table in presentation.tables(data):
        out.print(table)
    if plot is not None:
        out.print(f"chart written to {plot}", markup=False, highlight=False)


@app.command()
def cleanup(
    ctx: typer.Context,
    older_than: Annotated[str, typer.Option("--older-than", help="e.g. 30d, 12h, 2w")] = "30d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
    yes: YesOption = False,
) -> None:
    """Delete tasks (and their steps) with no activity for the given time, in batches. Counts
    first, then asks."""
    days = _days(older_than)
    with _manager(url) as db:
        due = db.cleanup_old_tasks(days, dry_run=True)
        count = due
        if not dry_run and due:
            _confirm(f"delete {due} task(s), and their steps, with no activity for "
                     f"{older_than}", yes)
            with _progress(_quiet(ctx, as_json)) as progress:
                bar = progress.add_task("deleting tasks", total=due)
                count = db.cleanup_old_tasks(
                    days, on_batch=lambda n: progress.advance(bar, n))
        summary = db.last_cleanup
    verb = "would delete" if dry_run else "deleted"
    dropped = "" if dry_run or not summary.partitions_dropped else (
        f" ({summary.tasks_in_partitions} with {summary.partitions_dropped} whole "
        f"partition(s), {_size(summary.bytes_freed)} freed)")
    _emit({"tasks": count, "dry_run": dry_run, "older_than_days": days,
           "partitions_dropped": 0 if dry_run else summary.partitions_dropped,
           "bytes_freed": 0 if dry_run else summary.bytes_freed}, as_json,
          f"{verb} {count} task(s) with no activity for {older_than}{dropped}")


def _size(n: int) -> str:
    """Bytes for people: ``8.0 kB``, ``1.2 GB``."""
    size, unit = float(n), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


@app.command()
def partitions(
    older_than: Annotated[str, typer.Option(
        "--older-than", help="The retention to judge them by, e.g. 30d")] = "30d",
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The history's partitions: each one's period, estimated rows, size with its indexes,
    and whether `cleanup --older-than` that age may drop it now (its period ended before,
    and none of its tasks was active since)."""
    from psycopg.rows import namedtuple_row

    from . import citus
    from .dialect import dialect_for
    from .statements.cleanup import cutoff

    days = _days(older_than)
    with connect(resolve_url(url=url)) as conn:
        conn.row_factory = namedtuple_row
        now = conn.execute("SELECT now() AS now").fetchone()
        assert now is not None
        on_citus = conn.execute(citus.PRESENT_SQL).fetchone()
        drops = dialect_for(bool(on_citus and on_citus[0])).drops
        found = conn.execute(drops.listing_sql, {"cutoff": cutoff(now.now, days)}).fetchall()
    rows = [{"table": r.parent, "partition": r.partition, "from": r.lower, "to": r.upper,
             "rows": int(r.rows), "bytes": int(r.bytes), "droppable": bool(r.droppable)}
            for r in found]
    if as_json:
        _emit({"partitions": rows, "older_than_days": days}, True, "")
        return
    table = Table(title=f"partitions (droppable: by cleanup --older-than {older_than})")
    for column in ("table", "partition", "from", "to", "rows (est.)", "size", "droppable"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["table"], row["partition"], str(row["from"] or "-"),
                      str(row["to"] or "-"), str(row["rows"]), _size(row["bytes"]),
                      "yes" if row["droppable"] else "no")
    out.print(table)


@app.command()
def maintain(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Create the partitions due: the current period's and those kept ready ahead. The
    managers do it as they connect, and a save creates the one it lacks; run this from cron
    (daily) so that none has to. Then summarize the closed periods due a summary, which the
    reports add up instead of reading their partitions."""
    from .statements import partitions as statements
    from .statements import summaries

    summarized = 0
    with connect(resolve_url(url=url)) as conn:
        row = conn.execute(statements.CREATE_DUE).fetchone()
        for (partition,) in conn.execute(summaries.DUE).fetchall():
            for _ in range(2):  # the trigger first, then the figures
                step = conn.execute(summaries.SUMMARIZE, {"partition": partition}).fetchone()
                if step and step[0]:
                    summarized += 1
                    break
    created = int(row[0]) if row else 0
    _emit({"created": created, "summarized": summarized}, as_json,
          f"created {created} partition(s), summarized {summarized} period(s)")


def _quiet(ctx: typer.Context, as_json: bool = False) -> bool:
    """Whether to print only results: ``--quiet`` given, or ``--json`` output."""
    root = ctx.find_root().obj
    return as_json or (isinstance(root, Options) and root.quiet)


def _sayer(ctx: typer.Context, as_json: bool) -> Any:
    """A function printing a remark (not a result), unless quiet."""
    def say(text: str) -> None:
        if not _quiet(ctx, as_json):
            out.print(text, markup=False, highlight=False)
    return say


def _progress(quiet: bool) -> Progress:
    """A progress bar on stderr (stdout stays clean for --json); hidden when ``quiet``."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, disable=quiet, transient=False,
    )


@app.command()
def grant(
    owner: Annotated[str, typer.Option(help="Migration owner role.")] = "aiecs_owner",
    writer: Annotated[str, typer.Option(help="Runtime writer role.")] = "aiecs_writer",
    reader: Annotated[str, typer.Option(help="Read-only reporting role.")] = "aiecs_reader",
    print_only: Annotated[bool, typer.Option("--print", help="Print the SQL, run nothing.")]
    = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create the least-privilege roles and grant them exactly what they need (idempotent;
    re-run after each upgrade). See docs/operations.md."""

    from . import roles

    wanted = roles.Roles(owner, writer, reader)
    target = resolve_url(url=url)
    with connect(target) as conn:
        if print_only:
            statements = roles.grant_statements(conn, wanted)
        else:
            statements = roles.grant(conn, wanted)
    if print_only:
        sys.stdout.write("".join(f"{s};\n" for s in statements))
        return
    _emit({"statements": len(statements), "url": safe_url(target), "owner": owner,
           "writer": writer, "reader": reader}, as_json,
          f"{len(statements)} statements run on {safe_url(target)}: owner {owner}, "
          f"writer {writer}, reader {reader}. Give them to login roles, e.g. "
          f"GRANT {writer} TO my_service;")


@app.command()
def scope(
    role: Annotated[str, typer.Argument(
        help="An existing role: the one its sessions run as (a login, or one they SET ROLE "
             "to).")],
    users: Annotated[list[str] | None, typer.Option(
        "--users", help="A LIKE pattern of the user ids it may see (repeatable): 'acme-%'.")]
    = None,
    write: Annotated[bool, typer.Option("--write", help="Let it write those users' rows too.")]
    = False,
    drop: Annotated[bool, typer.Option("--drop", help="Remove the role's scope.")] = False,
    print_only: Annotated[bool, typer.Option("--print", help="Print the SQL, run nothing.")]
    = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Confine a role to the rows of some users, enforced by PostgreSQL's row-level security
    (idempotent; re-run after each upgrade). See docs/operations.md, Tenants."""

    from . import scopes

    if drop and (users or write):
        raise typer.BadParameter("--drop takes no --users or --write")
    target = resolve_url(url=url)
    with connect(target) as conn:
        statements = (scopes.drop_statements(conn, role) if drop
                      else scopes.scope_statements(conn, role, users or [], writes=write))
        if not print_only:
            scopes.run(conn, statements)
    if print_only:
        sys.stdout.write("".join(f"{s};\n" for s in statements))
        return
    what = ("no scope" if drop else
            f"{'reads and writes' if write else 'reads'} the users like "
            + ", ".join(users or []))
    _emit({"role": role, "dropped": drop, "users": [] if drop else list(users or []),
           "writes": write and not drop, "statements": len(statements)}, as_json,
          f"{role}: {what} ({len(statements)} statements run on {safe_url(target)})")


@app.command("scopes")
def list_scopes(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List the scoped roles and the users each may see."""

    from . import scopes

    with connect(resolve_url(url=url)) as conn:
        found = scopes.list_scopes(conn)
    if as_json:
        sys.stdout.write(json.dumps([s.as_dict() for s in found]) + "\n")
        return
    table = Table("role", "users", "writes")
    for s in found:
        table.add_row(s.role, ", ".join(s.patterns), "yes" if s.writes else "no")
    out.print(table)


@app.command("import-legacy")
def import_legacy(
    ctx: typer.Context,
    from_url: Annotated[str | None, typer.Option(
        "--from-url", help="The upstream AIECS database to read from.")] = None,
    table: Annotated[str, typer.Option(help="Its history table.")] = "task_history",
    from_jsonl: Annotated[Path | None, typer.Option(
        "--from-jsonl", help="Or a JSON lines export of that table.")] = None,
    timezone: Annotated[str | None, typer.Option(
        help="Zone of the upstream naive timestamps (default: the server's TimeZone).")]
    = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adopt upstream AIECS history from another database or a JSON lines export (every row
    adopted or set aside with its reason; re-running adds nothing)."""

    from . import legacy

    if (from_url is None) == (from_jsonl is None):
        raise typer.BadParameter("give exactly one of --from-url and --from-jsonl")
    target = resolve_url(url=url)
    with connect(target) as conn:
        if from_jsonl is not None:
            total, rows = legacy.read_jsonl(from_jsonl)
            summary = _import(conn, total, rows, timezone, _quiet(ctx, as_json))
        else:
            with connect(from_url or "", autocommit=False) as source:
                total, rows = legacy.read_database(source, table)
                summary = _import(conn, total, rows, timezone, _quiet(ctx, as_json))
    data = summary.as_dict()
    reasons = "".join(f"\n  {n:>7}  {r}" for r, n in summary.reasons.items())
    _emit(data, as_json,
          f"read {summary.read} row(s): {summary.already_present} already imported, "
          f"{summary.new} new: {summary.adopted} adopted, {summary.set_aside} set aside"
          + (f" (see legacy_task_history_rejects):{reasons}" if reasons else ""))


def _import(conn: Any, total: int, rows: Any, timezone: str | None, quiet: bool) -> Any:
    from . import legacy

    with _progress(quiet) as progress:
        bar = progress.add_task("copying upstream rows", total=total)

        def adopting(count: int) -> None:
            progress.add_task(f"adopting {count} new row(s) (one statement)", total=None)

        return legacy.import_rows(
            conn, rows, timezone=timezone, on_rows=lambda n: progress.advance(bar, n),
            on_adopt=adopting)


@app.command()
def demo(ctx: typer.Context, url: Annotated[str | None, typer.Option(
        "--url", help="Server to use (default: the embedded PostgreSQL; AIECS_DATABASE_URL "
        "is deliberately ignored).")] = None, yes: YesOption = False,
         as_json: JsonOption = False) -> None:
    """Try it: a fresh `aiecs_demo` database, migrated, a simulated multi-step AI workload
    (success, each error code, a timeout, a cancellation), then its history and report."""
    import asyncio

    from . import demo as scenario
    from . import report as presentation
    from .manager import DatabaseManager

    say = _sayer(ctx, as_json)
    server = url or embedded_server.ensure_running()
    if url is None:
        say(f"embedded PostgreSQL, data in {embedded_server.data_dir()}")
    elif scenario.demo_exists(server):  # on someone's server: ask before dropping it
        _confirm(f"drop the existing database {scenario.DEMO_DATABASE} on "
                 f"{safe_url(normalize_url(server))} and create it again", yes)
    target = scenario.fresh_database(server)
    migrate.upgrade(target)
    say(f"database {safe_url(target)}: migrated to {migrate.head()}")

    async def workload() -> tuple[list[Any], list[Any], dict[str, Any], list[str]]:
        async with DatabaseManager(url=target) as db:
            # A watcher follows the first task while it runs, as a WebSocket server would.
            follower = asyncio.ensure_future(scenario.follow(db, "research-report"))
            outcomes = await scenario.run_workload(db)
            followed = await asyncio.wait_for(follower, 30)
            histories = [await db.load_task_history(scenario.DEMO_USER, o.task_id)
                         for o in outcomes]
            return outcomes, histories, await db.report(), followed

    outcomes, histories, data, followed = asyncio.run(workload())
    explore = _explore_commands(target, scenario.DEMO_USER)
    if as_json:
        out.print_json(json.dumps({
            "database": safe_url(target), "revision": migrate.head(),
            "tasks": [{"task_id": o.task_id, "status": o.status.value, "note": o.note}
                      for o in outcomes],
            "followed": followed, "report": data, "explore": explore,
        }, default=str))
        return
    out.print("a watcher followed research-report as it ran (watch_task_history; "
              "`aiecs-db history USER TASK --follow` does the same):", markup=False,
              highlight=False)
    for line in followed:
        out.print(f"  {line}", markup=False, highlight=False)
    summary = Table("task", "status", "what happened", title=f"tasks of {scenario.DEMO_USER}")
    for o in outcomes:
        summary.add_row(o.task_id, o.status.value, o.note)
    out.print(summary)
    for o, steps in zip(outcomes, histories, strict=True):
        if o.task_id in ("research-report", "slow-model", "user-cancelled"):
            out.print(_history_table(f"history of {o.task_id}", steps))
    for table in presentation.tables(data):
        out.print(table)
    out.print("explore what the demo wrote:", markup=False, highlight=False)
    for line in explore:
        out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _explore_commands(target: Any, user: str) -> list[str]:
    """Commands that show what the demo wrote, to be copied as they are (the demo database's
    URL in each; a password, if the server has one, is masked and must be put back)."""
    url = shlex.quote(safe_url(target).replace("+psycopg", "", 1))
    return [f"aiecs-db tasks {user} --url {url}",
            f"aiecs-db history {user} research-report --url {url}",
            f"aiecs-db report --url {url}"]


@embedded_app.command("status")
def embedded_status(as_json: JsonOption = False) -> None:
    """Where the embedded server keeps its data and whether it runs."""
    s = embedded_server.status()
    _emit({"data_dir": str(s.data_dir), "initialised": s.initialised, "running": s.running,
           "pid": s.pid, "url": s.url}, as_json,
          f"data: {s.data_dir}\ninitialised: {s.initialised}\nrunning: {s.running}"
          + (f" (pid {s.pid})\nurl: {s.url}" if s.running else ""))


@embedded_app.command("url")
def embedded_url(as_json: JsonOption = False) -> None:
    """Start the embedded server if needed and print its URL."""
    url = embedded_server.ensure_running()
    _emit({"url": url}, as_json, url)


@embedded_app.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server."""
    stopped = embedded_server.stop()
    out.print("stopped" if stopped else "not running")


def main() -> None:
    from .telemetry import command_span

    with command_span(sys.argv[1:]):
        app()
