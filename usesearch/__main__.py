"""``python -m usesearch`` and the ``usesearch`` script: the CLI (``usesearch.cli.app``),
with a Ctrl-C while its libraries load (seconds: torch, SQLAlchemy) said in one line and
exit 130, not a traceback through their imports."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from usesearch.cli.app import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
