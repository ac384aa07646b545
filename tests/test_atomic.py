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


def test_a_link_keeps_pointing_at_the_replaced_file(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_fifo_or_device_is_written_into_not_replaced(tmp_path):
    """``--export-coco /dev/stdout``: renaming over it would replace the device node
    (as root, for every process) and the reader would get nothing."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, "through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_picture_that_fails_mid_save_keeps_the_old_one(tmp_path, monkeypatch):
    """``query --show``, ``segment --out``: a kill or a full disk used to leave a
    truncated picture where the earlier one was."""
    from PIL import Image

    from usesearch.io.atomic import save_picture

    target = tmp_path / "sheet.png"
    save_picture(Image.new("RGB", (8, 4), (255, 0, 0)), target)
    with Image.open(target) as saved:
        assert saved.format == "PNG" and saved.size == (8, 4)  # the format from the name, not from ".tmp"
    real_save = Image.Image.save

    def half_then_fail(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_picture(Image.new("RGB", (2, 2)), target)
    with Image.open(target) as kept:
        assert kept.size == (8, 4) and [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


@pytest.mark.parametrize("mode", ["wb", "ab"])
def test_dev_stdout_is_written_through_the_processs_own_stdout(tmp_path, mode):
    """`--export-coco /dev/stdout > out.json` (or `>> log`): resolving the link and
    renaming over it unlinked the shell's file (or, opened anew, truncated it)."""
    import subprocess
    import sys

    out = tmp_path / "out.txt"
    out.write_bytes(b"kept\n")
    script = (
        "from usesearch.io.atomic import write_atomic\n"
        "print('before', flush=True)\n"
        "write_atomic('/dev/stdout', 'json\\n')\n"
        "print('after', flush=True)\n"
    )
    with open(out, mode) as stdout:
        subprocess.run([sys.executable, "-c", script], stdout=stdout, check=True, timeout=60)
    kept = "kept\n" if mode == "ab" else ""
    assert out.read_text() == kept + "before\njson\nafter\n"
    piped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert piped.stdout == "before\njson\nafter\n"


def test_a_failed_write_names_the_file_asked_for_not_the_temporary_one(tmp_path):
    """`query --show /proc/version.png` said "/proc/.version.png.9293.tmp: No such file"."""
    from usesearch.io.atomic import write_atomic

    target = tmp_path / "gone" / "sheet.png"
    with pytest.raises(FileNotFoundError) as raised:
        write_atomic(target, b"x")
    assert raised.value.filename == str(target)
