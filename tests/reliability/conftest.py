"""Routes to the database for the reliability tests: straight to PostgreSQL, or through a
PgBouncer in transaction-pooling mode that the tests start in front of it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


@dataclass
class Route:
    """How a manager reaches the database: its URL and the settings that route needs."""

    name: str
    url: URL
    settings: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bouncer:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def route(self, url: URL) -> Route:
        behind = url.set(host="127.0.0.1", port=self.port, query={})
        return Route("pgbouncer", behind, {"transaction_pooling": True})


@pytest.fixture(scope="session")
def pgbouncer(pg: Any) -> Iterator[Bouncer]:
    """PgBouncer (pool_mode = transaction) in front of the test server, for the session."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    server: URL = pg.admin_url
    directory = Path(tempfile.mkdtemp(prefix="aiecs-pgbouncer-", dir="/tmp"))
    directory.chmod(0o777)
    host = server.query.get("host") or server.host or "127.0.0.1"
    if isinstance(host, tuple):
        host = host[0]
    target = f"host={host} port={server.port or 5432} user={server.username}"
    if server.password:
        target += f" password={server.password}"
    port = _free_port()
    (directory / "userlist.txt").write_text(f'"{server.username}" ""\n')
    (directory / "pgbouncer.ini").write_text(f"""
[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 12
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
""")
    for path in directory.iterdir():
        path.chmod(0o666)
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # PgBouncer refuses to run as root. Behind a Unix socket (the embedded server), run it
        # as the socket directory's owner, the only user that may enter that directory.
        user = "nobody"
        if str(host).startswith("/"):
            import pwd

            user = pwd.getpwuid(Path(str(host)).stat().st_uid).pw_name
        command[1:1] = ["-u", user]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    probe = server.set(drivername="postgresql", host="127.0.0.1", port=port, query={})
    while True:
        try:
            psycopg.connect(probe.render_as_string(hide_password=False), connect_timeout=2,
                            prepare_threshold=None).close()
            break
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (directory / "pgbouncer.log").read_text() if (
                    directory / "pgbouncer.log").exists() else ""
                process.kill()
                raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
            time.sleep(0.1)
    try:
        yield Bouncer(port, process, directory)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, db_url: URL) -> Route:
    """The test's database, reached directly or through PgBouncer (transaction mode)."""
    if request.param == "direct":
        return Route("direct", db_url)
    bouncer: Bouncer = request.getfixturevalue("pgbouncer")
    return bouncer.route(db_url)
