"""``python -m usesearch`` and the ``usesearch`` script: the CLI (``usesearch.cli.app``),
with a Ctrl-C while its libraries load (seconds: torch, SQLAlchemy), or while it reads
the command line and Typer builds its commands, before any command's own handling,
said in one line and exit 130, not a traceback through their code."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from usesearch.cli.app import main as run
    except KeyboardInterrupt:
        _interrupted()
    try:
        run()
    except KeyboardInterrupt:  # the commands say theirs; this is one before any began
        _interrupted()


def _interrupted() -> None:
    print("interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
    main()
