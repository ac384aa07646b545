"""What the command modules share, declared once: the console, the one-line error
rule (``user_errors``), and the options several commands take."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from usesearch.errors import UsesearchError, first_line, is_disk_full

# No markup: what is printed is data (file names like `x[/]y.png`, query texts), never
# instructions to rich; the few styled words say so with ``Text(..., style=...)``.
console = Console(markup=False)

PresetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--preset",
        "-p",
        help="Model preset: b16, l14-336, or tiny (random weights, for trials). Default: the --head's preset, else b16.",
    ),
]
EmbedderOpt = Annotated[str, typer.Option("--embedder", help="'use' (trained head) or 'crop' (training-free).")]
HeadOpt = Annotated[Optional[Path], typer.Option("--head", help="Head checkpoint (.safetensors + .json).")]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device", help="Where every model runs: cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu)."
    ),
]
FaissDeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--faiss-device",
        help="Where FAISS runs: cpu or cuda (default: cuda only where the installed faiss has GPU support).",
    ),
]


DEBUG_ENV = "USESEARCH_DEBUG"


def shared_options(into: str, make, options: dict):
    """Give a command options declared once for several commands: ``options`` maps
    each name to (Annotated type, default); Typer reads the signature made here, and
    the command receives them as one object, ``make(**values)``, in ``into``."""
    import inspect
    import typing

    def decorate(command):
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)  # the Annotated objects, not their strings
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != into
        ]
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, (annotation, default) in options.items()
        ]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name, default) for name, (_, default) in options.items()}
            return command(*args, **{into: make(**values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + shared)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
        return wrapper

    return decorate


def user_errors(fn):
    """Every failure ends in one line on stderr and a non-zero exit, never a wall of
    frames: 2 for what the user can fix (bad input, missing file, full disk, busy
    database), 1 for an unexpected error, which names how to see its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import os

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            code, message = 2, first_line(exc)
            if is_disk_full(exc):
                message = f"disk full: {getattr(exc, 'filename', None) or message}"
            elif isinstance(exc, (UsesearchError, ValueError)):
                pass
            elif isinstance(exc, OSError):
                where = exc.filename if exc.filename is not None else ""
                message = f"{where}: {exc.strerror or message}" if where else message
            elif type(exc).__module__.startswith("sqlalchemy"):
                message = f"database: {first_line(getattr(exc, 'orig', None) or exc)}"  # locked, corrupt or unreachable
            else:
                code = 1
                message = f"unexpected {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 to see the traceback)"
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(code) from None

    return wrapper
