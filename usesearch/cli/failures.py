"""How a command ends: its lines on the consoles, and every failure in one line on
stderr with an exit code (``user_errors``): 2 for what the user can fix, 1 for an
unexpected error (with the way to see its traceback), 3 for a run in which every
photo failed, 130 for Ctrl-C."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from usesearch import interrupts
from usesearch.errors import DEBUG_ENV as DEBUG_ENV
from usesearch.errors import UsesearchError, first_few, first_line, is_disk_full
from usesearch.io.files import one_line

# No markup: what is printed is data (file names like `x[/]y.png`, query texts), never
# instructions to rich; the few styled words say so with ``Text(..., style=...)``.
console = Console(markup=False, emoji=False, soft_wrap=True)  # a message is one line, piped or not: grep finds it whole
err_console = Console(stderr=True, markup=False, emoji=False, soft_wrap=True)  # the same, on stderr


def stdout_closed() -> bool:
    """Whether the reader of stdout has gone (a pipe whose other end closed)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test runner's stream)
        return False


def shown(value) -> str:
    """A value as a person reads it (``info``, ``curate stats``): none as "-", a mapping
    as "key value, ...", a list joined; never Python's repr of a dict."""
    if value is None or value == {} or value == []:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} {shown(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


ALL_FAILED_EXIT = 3


def say_failures(failures: list[tuple[str, str]], most: int = 10) -> None:
    """A run's first ``most`` failures, one line each: a path or a message holding a
    newline stays on its line, so each failure is one line a grep finds. The path is
    said once: a reason naming it again ("cannot read image PATH: ...") leaves it out."""
    for path, reason in failures[:most]:
        console.print(f"  failed: {one_line(path)}: {one_line(reason_beside(path, reason))}")


def reason_beside(path: str, reason: str) -> str:
    """A failure's reason said beside its path: the path it names again ("cannot read
    image PATH: ...") left out."""
    return reason.replace(f" {path}: ", ": ") if path else reason


def say_pairs(pairs: list[tuple[str, str]], what: str | tuple[str, str], sign: str = "=") -> None:
    """``  N <what> (A = B and N-1 more)``: a run's path pairs (copies, moves) in one
    line, the first named. ``what``: one wording, or (one's, several's)."""
    if pairs:
        first, second = pairs[0]
        said = what if isinstance(what, str) else what[len(pairs) > 1]
        console.print(f"  {len(pairs)} {said} ({one_line(first)} {sign} {first_and_more(pairs, one_line(second))})")


def first_and_more(items: list, first: str) -> str:
    """``first``, the first of ``items`` as said, ``and N more`` after it where there are more."""
    return first_few([first, *items[1:]], shown=1)


def exit_if_all_failed(done: int, skipped: int, failed: int, what: str, outcome: str = "nothing is indexed") -> None:
    """A run in which every photo failed (none done, none already done before) exits 3,
    after its summary: a script must not read "nothing is indexed" as success. Failures
    beside photos done, now or before, exit 0, each one recorded: a re-run of a whole
    index with one bad file is no failed run."""
    if failed and not done and not skipped:
        print(f"error: every {what} failed ({failed}); {outcome}", file=sys.stderr)
        raise typer.Exit(ALL_FAILED_EXIT)


def interrupted(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among what led to ``exc``, if one is."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def interrupted_exit(exc: BaseException | None = None) -> NoReturn:
    """ "interrupted", with what the interrupted work noted on its way out (PEP 678's
    ``add_note``: a rebuild done but not calibrated), exit 130."""
    print("; ".join(["interrupted", *getattr(exc, "__notes__", [])]), file=sys.stderr)
    raise typer.Exit(130) from None


DAMAGED_DATABASE = ("file is not a database", "malformed")  # SQLite's words for a damaged file


def _catalog_named(db: object) -> str:
    """The catalog a command given ``--db`` ``db`` reads: that folder's database file."""
    from usesearch.indexer.folder import DB_FILE

    return str(Path(str(db)) / DB_FILE) if isinstance(db, (str, Path)) else "the catalog"


def user_errors(fn):
    """Every failure ends in one line on stderr and a non-zero exit, never a wall of
    frames: 2 for what the user can fix (bad input, missing file, full disk, busy
    database), 1 for an unexpected error, which names how to see its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # With --json, stdout carries the JSON alone: every status line goes to stderr.
        # (rich's ``stderr`` flag, not its ``file``: a file saved and restored would pin
        # one stream, which a test runner closes after each invocation.)
        to_stderr = console.stderr
        console.stderr = to_stderr or kwargs.get("as_json") is True
        try:
            with interrupts.counting():  # a Ctrl-C that a finalizer swallowed still stops a long loop
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as exc:  # before the command's own handling began (it says what it kept)
            interrupted_exit(exc)
        except BrokenPipeError as exc:
            if stdout_closed():  # `... | head`: ended quietly by ``app.main``; another pipe is an error
                raise
            print(f"error: {first_line(exc)}", file=sys.stderr)
            raise typer.Exit(2) from None
        except Exception as exc:
            # A Ctrl-C a clean-up's error replaced (psycopg's, mid-statement); not an error of
            # its own that the interruption's handling met (a full disk writing what was kept).
            if (cut := interrupted(exc)) and not isinstance(exc, (UsesearchError, OSError)):
                interrupted_exit(cut)  # (with what it noted)
            if os.environ.get(DEBUG_ENV):
                raise
            code, message = 2, first_line(exc)
            if is_disk_full(exc) and type(exc).__module__.startswith("sqlalchemy"):  # (its text: "(sqlite3.…) …")
                named = "the catalog's server" if kwargs.get("db_url") else _catalog_named(kwargs.get("db"))
                message = f"disk full: cannot write {named}; free space and run it again"
            elif is_disk_full(exc):
                message = f"disk full: {getattr(exc, 'filename', None) or message}"
            elif isinstance(exc, (UsesearchError, ValueError)) and not isinstance(exc, UnicodeError):
                pass  # (a text a library could not encode is no refusal: unexpected, its traceback offered)
            elif isinstance(exc, OSError):
                where = exc.filename if exc.filename is not None else ""
                message = f"{where}: {exc.strerror or message}" if where else message
            elif type(exc).__module__.startswith("sqlalchemy"):
                message = f"database: {first_line(getattr(exc, 'orig', None) or exc)}"  # locked, corrupt or unreachable
                if any(word in message for word in DAMAGED_DATABASE):
                    named = _catalog_named(kwargs.get("db"))
                    message += f" ({named}: damaged; restore it from a backup, or index into a new --db)"
            else:
                code = 1
                message = f"unexpected {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 to see the traceback)"
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(code) from None
        finally:
            console.stderr = to_stderr

    return wrapper


# -- what a message says of the index it is about ----------------------------------------
def index_flags(db: str | os.PathLike, db_url: str | None) -> str:
    """``indexer.folder.index_flags``, imported when a message needs it (not at start-up)."""
    from usesearch.indexer.folder import index_flags as flags

    return flags(db, db_url)


def gone_or_changed(db: str | os.PathLike, db_url: str | None) -> str:
    """What to do about photos that could not be read or changed since indexing, naming
    the index (``query --show``'s sheet and ``audit``'s draw them grey)."""
    flags = index_flags(db, db_url)
    return (
        f"(gone since indexing: `usesearch prune {flags}` removes them; changed: `usesearch index PATHS {flags}` again)"
    )


def drawn_grey(unreadable: dict[str, str], drawn: str, db: str | os.PathLike, db_url: str | None) -> str:
    """The line under a contact sheet: its photos ``drawn`` grey, each with why."""
    from usesearch.errors import first_few
    from usesearch.io.files import one_line
    from usesearch.reports import counted

    names = [f"{one_line(name)} ({why})" for name, why in unreadable.items()]
    # ("could not be read or changed" read as photos that could not be changed)
    said = (
        f"{counted(len(names), 'photo')} gone, unreadable or changed since indexing, {drawn} grey: {first_few(names)} "
    )
    return said + gone_or_changed(db, db_url)
