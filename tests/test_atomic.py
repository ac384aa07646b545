"""Files replaced whole (``usesearch.io.atomic``): the old file or the new one, never
half of one, and nothing left beside it when the write fails."""

import pytest
import torch

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


def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_own(tmp_path, monkeypatch):
    """safetensors writes its files 0600: a checkpoint written so could not be read by
    the other users of a shared run folder."""
    import os

    from safetensors.torch import save_file

    from usesearch.io.atomic import write_atomic

    def private(path):
        save_file({"a": torch.zeros(2)}, str(path))

    from usesearch.io import atomic

    monkeypatch.setattr(atomic, "NEW_FILE_MODE", 0o644)  # a umask of 022, whatever this machine's is
    write_atomic(tmp_path / "head.safetensors", private)
    assert os.stat(tmp_path / "head.safetensors").st_mode & 0o777 == 0o644  # not safetensors' 0600
    os.chmod(tmp_path / "head.safetensors", 0o640)
    write_atomic(tmp_path / "head.safetensors", private)
    assert os.stat(tmp_path / "head.safetensors").st_mode & 0o777 == 0o640
