"""Where the database is: URLs, the upstream ``db_config`` form, and password masking.

Resolution order (contract §5, §7): an explicit ``url``; else the upstream ``db_config``; else
``AIECS_DATABASE_URL``; else the embedded PostgreSQL (``embedded.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .errors import ValidationError

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import URL

# SQLAlchemy is imported by the functions that need it, not here: importing the managers must
# stay fast (docs/performance.md, import time), and a URL is first parsed on connect.

__all__ = [
    "DATABASE_URL_ENV",
    "DEFAULT_CONNECT_TIMEOUT",
    "TEST_DATABASE_URL_ENV",
    "connect",
    "libpq_conninfo",
    "normalize_url",
    "resolve_url",
    "safe_url",
    "with_connect_timeout",
]

DATABASE_URL_ENV: Final = "AIECS_DATABASE_URL"
TEST_DATABASE_URL_ENV: Final = "AIECS_TEST_DATABASE_URL"

_DRIVER: Final = "postgresql+psycopg"
_ACCEPTED: Final = frozenset(
    {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg3"}
)


def normalize_url(url: str | URL) -> URL:
    """Accept ``postgresql://…`` or ``postgresql+psycopg://…`` and return a SQLAlchemy URL
    for psycopg 3. Anything else raises ``ValidationError`` (the message hides the password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValidationError(
            f"url: {safe_text(str(url))!r} is not a database URL; expected "
            "postgresql://user:password@host:port/database",
            field="url",
        ) from None
    if parsed.drivername not in _ACCEPTED:
        raise ValidationError(
            f"url: unsupported scheme {parsed.drivername!r}; use postgresql:// or "
            "postgresql+psycopg://",
            field="url",
        )
    return parsed.set(drivername=_DRIVER)


def url_from_db_config(db_config: Mapping[str, Any]) -> URL:
    """The upstream (asyncpg-style) ``db_config``: ``{"dsn": …}`` or host/port/user/password/
    database keyword arguments."""
    from sqlalchemy.engine import URL

    if db_config.get("dsn"):
        return normalize_url(str(db_config["dsn"]))
    known = {"host", "port", "user", "password", "database"}
    unknown = sorted(set(db_config) - known - {"dsn"})
    if unknown:
        raise ValidationError(
            f"db_config: unknown key {unknown[0]!r}; expected dsn or "
            "host/port/user/password/database",
            field=f"db_config.{unknown[0]}",
        )
    port = db_config.get("port")
    try:
        port_number = int(port) if port is not None else None
    except (TypeError, ValueError):
        raise ValidationError(
            f"db_config.port: {port!r} is not a port number", field="db_config.port"
        ) from None
    return URL.create(
        _DRIVER,
        username=db_config.get("user"),
        password=db_config.get("password"),
        host=db_config.get("host") or "localhost",
        port=port_number,
        database=db_config.get("database"),
    )


def resolve_url(
    db_config: Mapping[str, Any] | None = None, url: str | URL | None = None
) -> URL:
    """The database to use, by the contract's order; starts the embedded server if needed."""
    if url is not None:
        return normalize_url(url)
    if db_config:
        return url_from_db_config(db_config)
    env = os.environ.get(DATABASE_URL_ENV)
    if env:
        return normalize_url(env)
    from .embedded import ensure_running

    return normalize_url(ensure_running())


def safe_url(url: URL) -> str:
    """The URL as text with its password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def safe_text(text: str) -> str:
    from .errors import mask_password

    return mask_password(text)


#: Seconds to wait for a connection when the URL does not say (``?connect_timeout=N``).
DEFAULT_CONNECT_TIMEOUT: Final = 10


def with_connect_timeout(url: str | URL, seconds: float | None = None) -> URL:
    """``url`` with a ``connect_timeout``: ``seconds`` when given, else the URL's own, else
    ``DEFAULT_CONNECT_TIMEOUT`` (libpq would wait for ever for a server that never answers)."""
    parsed = normalize_url(url)
    if seconds is None and "connect_timeout" in parsed.query:
        return parsed
    timeout = DEFAULT_CONNECT_TIMEOUT if seconds is None else seconds
    return parsed.update_query_dict({"connect_timeout": str(max(1, round(timeout)))})


def libpq_conninfo(url: str | URL) -> str:
    """The URL in the form psycopg's ``connect`` takes, with a connect timeout (see
    ``with_connect_timeout``). The password is included: never log it."""
    return (
        with_connect_timeout(url).set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def connect(url: str | URL, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A plain psycopg connection to ``url`` (for the command line's one-off work), opened
    within its connect timeout; failing to connect is one clear error
    (``sqlstates.connect_error``)."""
    import psycopg

    from .sqlstates import connect_error

    target = with_connect_timeout(url)
    try:
        return psycopg.connect(libpq_conninfo(target), autocommit=autocommit)
    except psycopg.Error as exc:
        raise connect_error(exc, safe_url(target)) from None
