"""The order pytest-xdist hands the test files to its workers: the longest first.

``--dist loadfile`` sends each file whole to one worker, and pytest-xdist sends the files
with the most tests first (its ``--loadscope-reorder``). The Ray files hold few tests of
10-60 s each, so they came last, and the run waited on one worker while the other was
done: from one run's durations (2026-12-08, 1,340 tests), that order ends at 717 s (the
run took 716.8 s), the longest file first at 692 s, the usual rule of a list scheduler.

A file's seconds are those a measured run took (``file_seconds.json``, beside this
module); a file not measured yet counts ``UNMEASURED_S`` a test. A wrong or old figure
changes the order, never a result. To measure them again, run the suite with
``USESEARCH_TEST_SECONDS`` naming the file to write::

    USESEARCH_TEST_SECONDS=tests/file_seconds.json .venv/bin/python -m pytest -q -n 2 --dist loadfile
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

SECONDS_FILE = Path(__file__).with_name("file_seconds.json")
UNMEASURED_S = 0.5  # a test of a file not measured yet (the suite's mean is ~1 s)
WRITE_TO = "USESEARCH_TEST_SECONDS"

_measured: defaultdict[str, float] = defaultdict(float)


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def known_seconds(path: Path = SECONDS_FILE) -> dict[str, float]:
    """The measured seconds of each file, {} where none are (an unreadable file included:
    the order is a speed-up, never a reason for the suite to fail)."""
    try:
        seconds = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {name: float(s) for name, s in seconds.items()} if isinstance(seconds, dict) else {}


def longest_first(nodeids: list[str], seconds: dict[str, float]) -> list[int]:
    """The positions of ``nodeids`` in the order to run them: the files by their seconds,
    the longest first; a file's tests together and in their own order."""
    tests_of: defaultdict[str, int] = defaultdict(int)
    for nodeid in nodeids:
        tests_of[file_of(nodeid)] += 1
    files = list(tests_of)  # in the order collected: a tie keeps it

    def weight(name: str) -> float:
        return seconds.get(name, UNMEASURED_S * tests_of[name])

    rank = {name: at for at, name in enumerate(sorted(files, key=weight, reverse=True))}
    return sorted(range(len(nodeids)), key=lambda i: (rank[file_of(nodeids[i])], i))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's: it would sort by count again
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = longest_first([item.nodeid for item in items], known_seconds())
    items[:] = [items[i] for i in order]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get(WRITE_TO) and not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller sees every worker's
        _measured[file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(WRITE_TO)
    if target and _measured and not os.environ.get("PYTEST_XDIST_WORKER"):
        ordered = dict(sorted(((name, round(s, 1)) for name, s in _measured.items()), key=lambda kv: -kv[1]))
        Path(target).write_text(json.dumps(ordered, indent=1) + "\n")
