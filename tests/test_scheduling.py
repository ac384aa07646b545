"""The order the suite's files go to pytest-xdist's workers (tests/scheduling.py)."""

import json

from tests import scheduling


def test_the_longest_file_goes_first_its_tests_together_in_their_own_order():
    nodeids = ["tests/test_a.py::one", "tests/test_b.py::one", "tests/test_a.py::two", "tests/test_c.py::one"]
    order = scheduling.longest_first(nodeids, {"tests/test_a.py": 2.0, "tests/test_b.py": 30.0, "tests/test_c.py": 5})
    assert [nodeids[i] for i in order] == [
        "tests/test_b.py::one",
        "tests/test_c.py::one",
        "tests/test_a.py::one",
        "tests/test_a.py::two",
    ]


def test_a_file_not_measured_counts_by_its_tests_and_ties_keep_the_collected_order():
    new = [f"tests/test_new.py::t{i}" for i in range(5)]  # 5 x UNMEASURED_S = 2.5 s
    nodeids = ["tests/test_x.py::one", "tests/test_y.py::one", *new]
    order = scheduling.longest_first(nodeids, {"tests/test_x.py": 1.0, "tests/test_y.py": 1.0})
    assert [nodeids[i] for i in order] == [*new, "tests/test_x.py::one", "tests/test_y.py::one"]


def test_an_unreadable_or_odd_seconds_file_orders_by_counts_alone(tmp_path):
    broken = tmp_path / "seconds.json"
    broken.write_text("{not json")
    assert scheduling.known_seconds(broken) == {}
    broken.write_text(json.dumps([1, 2]))
    assert scheduling.known_seconds(broken) == {}
    assert scheduling.known_seconds(tmp_path / "none.json") == {}


def test_the_suites_seconds_name_files_that_exist():
    """A renamed file's old figure would be dead weight, and its new name counted as new."""
    seconds = scheduling.known_seconds()
    root = scheduling.SECONDS_FILE.parent.parent
    assert len(seconds) > 50
    assert [name for name in seconds if not (root / name).is_file()] == []
