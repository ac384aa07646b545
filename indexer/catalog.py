"""How a store reaches its catalog database: the driver a URL means, SQLite's
settings (WAL, so queries read while the indexer writes) and its immutable read-only
open, and the retry of a write while a database server is unreachable."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sqlite3
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from usesearch.errors import CatalogBusyError, CatalogRefusedError, CatalogUnavailableError, UsesearchError, first_line

RETRY_SECONDS = 60.0  # how long a write waits for an unreachable database server
SAID_EVERY = 20.0  # seconds between its lines while it waits
log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")


def server_url(url: str) -> str:
    """``postgresql://`` (or ``postgres://``, as Heroku and others write it) means the
    psycopg (3) driver, the one usesearch installs; another database is refused."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a port that is no number is refused here, not as int()'s words later
    except (ArgumentError, ValueError):
        raise UsesearchError("--db-url: not a database URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DB)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if not parsed.drivername.startswith("postgresql"):
        raise UsesearchError(
            f"--db-url {shown_url(url)}: the catalog goes in PostgreSQL (postgresql://USER@HOST/DB), "
            "or in the index folder without --db-url (SQLite)"
        )
    if parsed.drivername != "postgresql+psycopg":  # psycopg2, asyncpg: not installed, nor tested
        raise UsesearchError(
            f"--db-url {shown_url(url)}: usesearch reaches PostgreSQL with psycopg (3), which it installs; "
            "write postgresql://USER@HOST/DB"
        )
    return parsed.render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """The URL as messages show it: without its password, whether written before the
    host or as a ``?password=`` parameter (psycopg takes both)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "(the URL given)"
    return _as_written(parsed.difference_update_query(["password"]), hide_password=True)


def _as_written(parsed, hide_password: bool) -> str:
    """One spelling, as users write it, whether the URL is the store's or theirs: the
    store's driver (``postgresql+psycopg``, ``server_url``'s) left out, another said as
    given, and a socket folder (``?host=/tmp/sock``) not percent-encoded; the rest as
    SQLAlchemy renders it (an encoded ``@`` in a user name must stay encoded)."""
    if parsed.drivername == "postgresql+psycopg":
        parsed = parsed.set(drivername="postgresql")
    rendered = parsed.render_as_string(hide_password=hide_password)
    host = parsed.query.get("host")
    if isinstance(host, str) and host.startswith("/") and "&" not in host and "#" not in host:
        rendered = rendered.replace("host=" + quote(host, safe=""), "host=" + host, 1)
    return rendered


def index_flags(db_dir: str | os.PathLike, db_url: str | None) -> str:
    """``--db DIR`` (and ``--db-url URL``, without its password) for a command a message
    suggests, quoted as a shell reads it: without the URL, a PostgreSQL index's
    suggested command was refused; a folder with a space was two arguments."""
    flags = ["--db", os.fspath(db_dir)]
    if db_url is not None and not db_url.startswith("sqlite"):
        flags += ["--db-url", url_without_password(db_url)]
    return shlex.join(flags)


def scope_args(under: list | None) -> str:
    """The photos or folders a command was given, as a suggested command repeats them
    (each quoted, a space before each; empty for none)."""
    return "".join(f" {shlex.quote(os.fspath(p))}" for p in under or [])


def url_without_password(url: str) -> str:
    """The URL for a command a message suggests: its password left out, not masked (a
    ``***`` would be sent as the password; without one, libpq takes ``PGPASSWORD`` or
    ``~/.pgpass``)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "URL"
    # (``URL.set(password=None)`` keeps the password: None there means "unchanged".)
    return _as_written(parsed.difference_update_query(["password"])._replace(password=None), hide_password=False)


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets queries read committed data while the indexer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sqlite_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def immutable_url(url: str) -> str:
    """SQLite URL that opens the file read-only and immutable: no -wal/-shm side
    files, which a read-only folder or medium cannot hold."""
    database = make_url(url).database
    return f"sqlite:///file:{database}?mode=ro&immutable=1&uri=true"


# SQLSTATE of PostgreSQL (appendix A of its manual): a try later may succeed.
# Serialization, deadlock, resources, memory, connections, lock, cancel (a full disk, 53100, is no load).
BUSY_SQLSTATES = ("40001", "40P01", "53000", "53200", "53300", "55P03", "57014")
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")  # connection; shutdown, crash, starting up


def failure_kind(exc: OperationalError | sqlite3.OperationalError) -> str:
    """What a database's ``OperationalError`` means to a client: ``busy`` (a lock or
    the server's load: try again soon), ``unreachable`` (no connection: try again
    later) or ``failed`` (a damaged file, a missing table, a full disk: trying again
    changes nothing)."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate.startswith(BUSY_SQLSTATES):
            return "busy"
        return "unreachable" if sqlstate.startswith(UNREACHABLE_SQLSTATES) else "failed"
    if type(orig).__module__.startswith("psycopg"):  # no SQLSTATE: a connection that failed
        return _connection_failure(str(orig))
    message = str(orig or exc).lower()
    return "busy" if "database is locked" in message or "database is busy" in message else "failed"


def as_catalog_error(exc: OperationalError | sqlite3.OperationalError, url: str) -> UsesearchError | None:
    """A database's ``OperationalError`` as the error a caller can act on, in one line:
    ``CatalogUnavailableError`` (unreachable: try again later), ``CatalogBusyError``
    (busy: try again soon); None where trying again changes nothing (left as it is,
    an unexpected failure with its traceback)."""
    kind, reason = failure_kind(exc), first_line(getattr(exc, "orig", None) or exc)
    if kind == "unreachable":
        return CatalogUnavailableError(f"the catalog database at {shown_url(url)} cannot be reached ({reason})")
    if kind == "busy":
        return CatalogBusyError(f"the catalog database at {shown_url(url)} is busy ({reason}); try again")
    return None


def catalog_errors(method: Callable[P, T]) -> Callable[P, T]:
    """A search method of an opened index (``SegmentIndex``) whose catalog fails mid-way
    raises ``as_catalog_error``'s error, not SQLAlchemy's three lines: a service catches
    ``UsesearchError`` without importing SQLAlchemy. Not retried: a search answers now."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (OperationalError, sqlite3.OperationalError) as exc:  # (the rows' reads: SQLite's own cursor)
            mapped = as_catalog_error(exc, str(getattr(getattr(args[0], "store", None), "url", "")))
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


# A connection refused by a server that answered (libpq's "FATAL:", with no SQLSTATE)
# is the URL's fault, unless the server said it is starting, stopping or full.
_TRANSIENT_REFUSALS = (
    "starting up",
    "shutting down",
    "in recovery",
    "not yet accepting connections",
    "terminating connection",
    "cannot connect to server",  # (pgbouncer: its server is away)
)
_FULL = ("too many clients", "remaining connection slots", "no more connections allowed")


def _connection_failure(message: str) -> str:
    """A connection's failure: ``unreachable`` (no answer, or a server starting or
    stopping), ``busy`` (full), or ``failed`` (a database or role that does not exist, a
    password refused: "cannot reach" sent the user to look for an outage)."""
    if "FATAL:" not in message or any(words in message for words in _TRANSIENT_REFUSALS):
        return "unreachable"
    return "busy" if any(words in message for words in _FULL) else "failed"


def connection_failed(exc: OperationalError, url: str) -> UsesearchError:
    """Opening a catalog on a server failed: ``CatalogUnavailableError`` where it may
    come back, else the server's refusal (a database or role that does not exist, a
    password refused) as the URL's fault, in the server's words."""
    reason = first_line(exc.orig or exc)
    refused = getattr(exc.orig, "sqlstate", None) is None and failure_kind(exc) == "failed"  # (a FATAL answer)
    if not refused:  # (one with a SQLSTATE, a disk full as its tables are made: said as it was)
        return CatalogUnavailableError(f"cannot reach the catalog database at {shown_url(url)}: {reason}")
    said = " ".join(reason.split("FATAL:", 1)[-1].split())  # (libpq's "connection to server on socket ... failed:")
    return CatalogRefusedError(
        f"the catalog database at {shown_url(url)} refused the connection ({said}): check --db-url"
    )


def while_reachable(attempt: Callable[[], T], url: str) -> T:
    """``attempt`` (a write transaction, or reads, on a database server), tried again
    while the server is unreachable (restarting, failing over): 0.5 s, then twice as
    long each time up to 8 s, until ``RETRY_SECONDS`` have been waited; then a one-line
    ``CatalogUnavailableError``. Each try commits all or nothing, so a retry never
    leaves half an image. SQLite (a file, never unreachable): tried once."""
    if make_url(url).get_backend_name() == "sqlite":
        return attempt()

    def waited_long_enough(state: RetryCallState) -> bool:
        return state.idle_for >= RETRY_SECONDS

    said_at = [-SAID_EVERY]

    def announce(state: RetryCallState) -> None:  # the first retry, then a line every SAID_EVERY s (11 lines a minute)
        if state.idle_for - said_at[0] < SAID_EVERY:
            return
        said_at[0] = state.idle_for
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        waited = f" (waited {state.idle_for:.0f} s of {RETRY_SECONDS:.0f})" if state.idle_for >= 1 else ""
        log.warning("catalog database unreachable, retrying in %.1f s%s", pause, waited)

    def give_up(state: RetryCallState) -> NoReturn:
        failed = state.outcome.exception() if state.outcome is not None else None
        reason = first_line(getattr(failed, "orig", None) or failed) if failed is not None else "no answer"
        raise CatalogUnavailableError(
            f"the catalog database at {shown_url(url)} is unreachable "
            f"({reason}); finished images are kept, run again to resume"
        ) from None

    retrying = Retrying(
        retry=retry_if_exception_type(OperationalError),
        stop=waited_long_enough,
        wait=wait_exponential(multiplier=0.5, max=8.0),
        before_sleep=announce,
        retry_error_callback=give_up,
    )
    return retrying(attempt)
