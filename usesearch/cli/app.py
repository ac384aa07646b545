"""The ``usesearch`` command: every command module's commands under one Typer app,
and the entry point (``main``).

The one module that imports the command modules; they import only ``options`` and
the library, so the CLI has no circle of imports."""

from __future__ import annotations

import logging
import sys

import typer

from usesearch import interrupts
from usesearch.cli import audit, curate, eval, index, models, search, train, upkeep
from usesearch.cli.spellings import meaning

app = typer.Typer(help="Open-vocabulary segment search (USE: Universal Segment Embeddings).", no_args_is_help=True)
audit.AuditCommand.old = (eval.old_audit,)  # `audit --coco FILE --images DIR`, the old spelling of `eval audit`
for commands in (models.app, index.app, upkeep.app, search.app, eval.app, audit.app, train.app):
    app.add_typer(commands)  # no name: their commands sit at the top level
app.add_typer(models.models_app, name="models")
app.add_typer(eval.eval_app, name="eval")
app.add_typer(curate.curate_app, name="curate")


def with_ray_address(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional address: a bare ``--ray`` (nothing after it that
    looks like an address: ``auto``, ``local``, or something with a ``:``) means
    ``--ray local``. Click's options with an optional value take whatever word
    follows that does not start with a dash, so ``index --ray photos/`` would make
    the folder the address: the address is told by its look here instead."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--ray" and not (following and (following in ("auto", "local") or ":" in following)):
            out.append("local")
    return out


def given_twice(argv: list[str]) -> str | None:
    """Where ``argv`` gives an option that takes one value twice, what to say: click
    keeps the last, unsaid (``index --coco train.json --coco val.json`` indexed val)."""
    command = typer.main.get_command(app)
    args = list(argv)
    while hasattr(command, "commands"):  # a group: down to the command named
        at = next((i for i, arg in enumerate(args) if not arg.startswith("-")), None)
        if at is None or args[at] not in command.commands:
            return None  # click says what is wrong
        command, args = command.commands[args[at]], args[at + 1 :]
    command = getattr(command, "for_args", lambda _: command)(args)  # `audit --coco`: the old spelling's
    single = {
        flag: param
        for param in command.params
        if param.param_type_name == "option"
        and not (param.multiple or getattr(param, "is_flag", False) or getattr(param, "count", False))
        for flag in param.opts
    }
    seen: dict[str, str] = {}
    for arg in args:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag in single:
            name = meaning(single[flag].name or flag)  # `--coco-json a --masks b`: both --coco
            if name in seen:
                return f"{seen[name]} is given twice, and it takes one value: run the command once for each"
            seen[name] = flag
    return None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush meets no closed pipe."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


MODEL_FLAGS = ("--preset", "--embedder", "--head")  # a model chosen: taken by the commands that build one
# Commands a user may look for that another command does (click offers only close spellings).
DONE_ELSEWHERE = {
    "export": "a search's hits are exported by `usesearch query TEXT --db DB --export-coco FILE.json`",
    "search": "a text search is `usesearch query TEXT --db DB`",
}


def main() -> None:
    """The ``usesearch`` entry point. A command line click cannot parse (an unknown
    flag, a missing argument, a value of the wrong kind) is one line on stderr, as
    every other failure is, where click would draw a box under a usage line."""
    if sys.stdout is None:  # started with it closed (`>&-`): Python gives no stream to write or flush
        print("error: standard output is closed: send it to a file, or to /dev/null", file=sys.stderr)
        sys.exit(2)
    # Warnings are one plain line each, as Python's last resort prints them: else the
    # first library to log through the root logger (open_clip's `logging.info` as it
    # builds CLIP) configures it, and every later warning reads "WARNING:module:...".
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    args = with_ray_address(sys.argv[1:])
    if twice := given_twice(args):
        print(f"error: {twice}", file=sys.stderr)
        sys.exit(2)
    try:
        code = app(args, prog_name="usesearch", standalone_mode=False)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:  # `usesearch query ... | head`: the reader had enough (exit 1, as click does)
        _quiet_stdout()
        sys.exit(1)
    except Exception as exc:  # click's (Typer vendors click: its classes have no public name to catch)
        if type(exc).__name__ == "Abort":  # Ctrl-C at a prompt
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        format_message = getattr(exc, "format_message", None)
        if not callable(format_message):
            raise
        if not format_message():  # a group called bare: click printed its help, and there is nothing to add
            sys.exit(getattr(exc, "exit_code", 2))
        ctx = getattr(exc, "ctx", None)  # a usage error's command
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        option = getattr(exc, "option_name", None)  # NoSuchOption's: `query -5`, `similar -3`
        if ctx is not None and isinstance(option, str) and option[1:2].isdigit():
            arguments = [  # a text (a query's): a number would be refused anyway
                p
                for p in ctx.command.params
                if getattr(p, "param_type_name", "") == "argument"
                and getattr(getattr(p, "type_descriptor", None), "annotation", None) is str
            ]
            if arguments:  # (`--` ends the options: even --db after it would be read as text)
                name = str(getattr(arguments[0], "name", "") or "argument").upper()
                hint = f" (a {name} starting with '-' goes last, after `--`: `{ctx.command_path} --db DB -- {name}`)"
        if (
            ctx is not None
            and option in MODEL_FLAGS
            and ctx.command.name != "index"
            and any(getattr(p, "name", "") == "db" for p in ctx.command.params)  # it reads an index
        ):
            hint = f" (`{ctx.command_path}` answers with the model the index was built with: `usesearch info --db DB`)"
        unknown = args[0] if args and format_message().startswith("No such command") else None
        if unknown in DONE_ELSEWHERE:
            hint = f" ({DONE_ELSEWHERE[unknown]})"
        print(f"error: {format_message()}{hint}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    code = code if isinstance(code, int) else 0
    code = 143 if code == 130 and interrupts.terminated() else code  # (stopped by SIGTERM: its own code)
    _end_quietly_on_a_signal(code)
    sys.exit(code)


def _end_quietly_on_a_signal(code: int) -> None:
    """The command has said its last line: a Ctrl-C (or SIGTERM) while Python shuts down
    (torch's and Ray's exit callbacks) ends the process at once with the command's code
    (its outcome stands), where it printed "Exception ignored in atexit callback" and a
    traceback."""
    import os
    import signal

    for stream in (sys.stdout, sys.stderr):  # (None where the process started with it closed: `2>&-`)
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or file: Python's own exit says nothing of it either
            pass

    def now(signum, frame) -> None:
        os._exit(code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, now)
