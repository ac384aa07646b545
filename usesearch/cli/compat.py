"""Old command-line spellings, kept working for one release with a deprecation
message: rewritten to today's before Typer parses the arguments.

One convention per concept (README, "Command overview"): query text is positional,
the result count is ``-k``, class names are ``--classes a,b`` or ``--classes-file``,
COCO input is ``--coco``, ``--json`` prints JSON and ``--out`` names a file written.
"""

from __future__ import annotations

import os
import sys


def modernise(argv: list[str]) -> tuple[list[str], list[str]]:
    """(today's argv, one deprecation message per old spelling used)."""
    args, notes = list(argv), []
    command = [a for a in args[:2] if not a.startswith("-")]
    if command[:1] == ["audit"]:
        args[args.index("audit")] = "eval"
        args.insert(args.index("eval") + 1, "audit")
        command = ["eval", "audit"]
        notes.append("`usesearch audit` is now `usesearch eval audit`")
    moved: list[str] = []  # values that become positional arguments
    out: list[str] = []
    i = 0
    while i < len(args):
        arg, value = args[i], args[i + 1] if i + 1 < len(args) else None
        renamed = _rename(command, arg, value)
        if renamed is not None:
            new, note, consume = renamed
            notes.append(note)
            if new == "<positional>":
                moved.append(value)
            else:
                out += [new, value] if consume else [new]
            i += 2 if consume else 1
            continue
        out.append(arg)
        i += 1
    return out + moved, notes


def optional_values(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional address: a bare ``--ray`` (nothing after it that
    looks like an address: ``auto``, ``local``, or something with a ``:``) means
    ``--ray local``. Click options cannot have optional values, so it is filled in here."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--ray" and not (following and (following in ("auto", "local") or ":" in following)):
            out.append("local")
    return out


def _rename(command: list[str], arg: str, value: str | None):
    """(new spelling or '<positional>', message, whether it takes the value) or None."""
    head = command[0] if command else ""
    if head == "embed" and arg in ("-t", "--text"):
        return "<positional>", "`embed -t TEXT` is now `embed IMAGE TEXT...`", True
    if head == "demo" and arg == "--query":
        return "<positional>", "`demo --query TEXT` is now `demo TEXT`", True
    if arg == "--top" and head in ("embed", "eval"):
        return "-k", "`--top N` is now `-k N`", True
    if head == "reindex" and arg == "--device":
        return (
            "--faiss-device",
            "`reindex --device` is now `--faiss-device` (--device is where models run; reindex runs none)",
            True,
        )
    if arg in ("--coco-json", "--masks"):
        return "--coco", f"`{arg} FILE` is now `--coco FILE`", True
    if command == ["eval", "semseg"] and arg == "--classes" and value and os.path.isfile(value) and "," not in value:
        return "--classes-file", "`eval semseg --classes FILE` is now `--classes-file FILE`", True
    if head == "eval" and arg == "--json" and value and not value.startswith("-"):
        return "--out", "`eval ... --json FILE` is now `--out FILE` (`--json` prints JSON)", True
    return None


def main() -> None:
    """The ``usesearch`` entry point."""
    from usesearch.cli.app import app

    argv, notes = modernise(optional_values(sys.argv[1:]))
    for note in notes:
        print(f"deprecated: {note}; the old spelling goes in the next release", file=sys.stderr)
    app(argv, prog_name="usesearch")
