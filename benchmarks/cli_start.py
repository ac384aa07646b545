"""What one command line costs before it does its work: wall time and peak memory of
``usesearch COMMAND`` in a process of its own, on a two-photo ``tiny`` index (so the
figures are the start-up's: Python, the libraries imported, the catalog opened).

Commands that run no model (``info``, ``failures``, ``prune``, ``reindex``,
``similar SEGMENT_ID``) and refusals of a mistyped path or index import no model
library; ``query`` and the Ray workers' read stage are measured beside them.

    python benchmarks/cli_start.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built in a process of its own: a child's peak memory counts its parent's at the fork,
# so this one imports nothing of usesearch (~20 MB).
BUILD = (
    "import sys; from pathlib import Path; from tests.helpers import OPTS, write_photos; "
    "from usesearch.indexer import IndexOptions, index_paths; "
    "index_paths([write_photos(Path(sys.argv[1]), ('astronaut', 'coffee'))], sys.argv[2], IndexOptions(**OPTS))"
)


def measure(argv: list[str]) -> tuple[float, float, int]:
    """(seconds, peak MiB, exit code) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest is shown")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    db = root / "db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", BUILD, str(root / "photos"), str(db)], check=True, env=env, cwd=ROOT)
    cli = [sys.executable, "-m", "usesearch"]
    commands = {
        "info": [*cli, "info", "--db", str(db)],
        "failures": [*cli, "failures", "--db", str(db)],
        "prune": [*cli, "prune", "--db", str(db)],
        "reindex": [*cli, "reindex", "--db", str(db)],
        "similar SEGMENT_ID": [*cli, "similar", "1", "--db", str(db)],
        "query, no index there": [*cli, "query", "a cat", "--db", str(root / "nowhere")],
        "serve, no index there": [*cli, "serve", "--db", str(root / "nowhere")],
        "index, a mistyped path": [*cli, "index", str(root / "fotos"), "--db", str(root / "new")],
        "query (loads the model)": [*cli, "query", "a cat", "--db", str(db)],
        "Ray's read stage (import)": [sys.executable, "-c", "import usesearch.indexer.ray_reads"],
        "Ray's actors (import)": [sys.executable, "-c", "import usesearch.indexer.distributed"],
    }
    print(f"{'command':<28} {'seconds':>8} {'peak MiB':>9}  exit")
    for name, argv in commands.items():
        runs = [measure(argv) for _ in range(args.repeat)]
        seconds, mib, code = min(runs)
        print(f"{name:<28} {seconds:8.2f} {mib:9.0f}  {code}")


if __name__ == "__main__":
    main()
