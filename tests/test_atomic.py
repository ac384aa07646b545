"""Files replaced whole (``usesearch.io.atomic``): the old file or the new one, never
half of one, and nothing left beside it when the write fails."""

import pytest

from usesearch.io.atomic import write_atomic


def test_bytes_text_and_a_writer_function_replace_the_file(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "first")
    assert target.read_text() == "first"
    write_atomic(target, b"second", sync_folder=True)
    assert target.read_bytes() == b"second"
    write_atomic(target, lambda path: path.write_text("third"))
    assert target.read_text() == "third" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def half_then_fail(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
