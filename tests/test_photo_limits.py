"""How large a photo is read: ``--max-pixels`` and ``--max-bytes`` on the commands that
read photos, a re-run with a raised limit trying again the photos it refused, and a
photo indexed past the defaults drawn by the server, ``--show`` and exports.

The defaults (100 MP, 512 MiB) are scaled down here, as a 100-megapixel test photo
would take 300 MB and seconds to decode: ``small_defaults`` sets the defaults every
reader falls back on to less than the test photos have."""

import os
import subprocess
import sys

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.cli.photo_limits import count_from
from usesearch.errors import ImageReadError, UsesearchError
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.io import files

runner = CliRunner()
BIG = (300, 200)  # the photo the limits are about: 60,000 pixels


@pytest.fixture
def small_defaults(monkeypatch):
    """Default limits of 10,000 pixels and 4 KiB, for every reader that takes the default."""
    pixels, size = 10_000, 4096
    monkeypatch.setattr(files, "DEFAULT_MAX_PIXELS", pixels)
    monkeypatch.setattr(files, "DEFAULT_MAX_BYTES", size)
    monkeypatch.setattr(files.decode, "__defaults__", (pixels,))
    monkeypatch.setattr(files.pixel_count, "__defaults__", (pixels,))
    monkeypatch.setattr(files.read_bytes, "__defaults__", (size, None))
    return pixels, size


def scans(folder):
    """Two small photos and one of ``BIG`` pixels (a noisy PNG: past 4 KiB too)."""
    import numpy as np

    write_photos(folder, ("astronaut", "coffee"))
    noise = np.random.default_rng(0).integers(0, 255, (BIG[1], BIG[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "scan.png")
    return folder


def index_cli(photos, db, *flags):
    result = runner.invoke(
        app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--masker", "felzenszwalb", *flags]
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("text", "unit", "value"),
    [("250M", 1000, 250_000_000), ("2G", 1024, 2 * 1024**3), ("1.5k", 1000, 1500), ("4096", 1024, 4096)],
)
def test_a_limit_takes_a_number_or_one_with_k_m_or_g(text, unit, value):
    assert count_from(unit, 1)(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "x", "2x", "nan", "inf", "1e30", ""])
def test_a_limit_that_is_no_size_is_one_line(text):
    with pytest.raises(typer.BadParameter, match="give a number"):
        count_from(1000, 1)(text)


def test_index_refuses_past_its_limits_says_which_options_raise_them_and_a_raised_run_reads_them(tmp_path, monkeypatch):
    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # photos just written keep their stat all the same
    photos, db = scans(tmp_path / "photos"), tmp_path / "db"
    scan = photos / "scan.png"
    out = index_cli(photos, db, "--max-pixels", "50k")
    assert f"{BIG[0]}x{BIG[1]} = {BIG[0] * BIG[1]} pixels exceeds the limit of 50000" in out
    assert "1 photo(s) refused for their size: --max-pixels and --max-bytes raise the limits" in out
    listed = runner.invoke(app, ["failures", "--db", str(db)])
    assert listed.stdout.count("\n") == 1 and listed.stdout.startswith(str(scan))  # one line a file, for scripts
    assert "1 of them refused for their size: `usesearch index PATHS --db" in listed.stderr
    # The same limit again: the refused photo is skipped unread, as any failure with the same content.
    read = []
    real = files.read_bytes
    import usesearch.indexer.read_ahead as read_ahead

    def spy(fs_path, *args, **kwargs):
        read.append(os.fsdecode(fs_path))
        return real(fs_path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(read_ahead, "read_bytes", spy)
        out = index_cli(photos, db, "--max-pixels", "50k")
    assert "0 images indexed, 3 skipped" in out and str(scan) not in read
    # Raised (no --retry-failed): it is read and indexed, its failure over.
    out = index_cli(photos, db, "--max-pixels", "0.06M")
    assert "1 image indexed, 2 skipped, 0 failed" in out
    index = SegmentIndex.open(db)
    assert index.store.counts()["images_done"] == 3 and index.store.failures() == []
    # Bytes: refused from the file's size, unread, and said with the same line.
    out = index_cli(photos, tmp_path / "db2", "--max-bytes", f"{scan.stat().st_size - 1}")
    assert f"{scan.stat().st_size} bytes exceeds the limit of {scan.stat().st_size - 1}" in out
    assert "1 photo(s) refused for their size" in out


def test_a_photo_indexed_past_the_defaults_is_drawn_by_the_server_show_and_exports(tmp_path, small_defaults):
    from usesearch.indexer.export import contact_sheet
    from usesearch.indexer.web.budget import PixelBudget
    from usesearch.indexer.web.render import ImageCache

    pixels, size = small_defaults
    photos, db = scans(tmp_path / "photos"), tmp_path / "db"
    (photos / "astronaut.png").unlink(), (photos / "sub" / "coffee.png").unlink()
    refused = index_paths([photos], db, IndexOptions(**OPTS, max_pixels=pixels, max_bytes=size))  # the defaults
    assert refused.failed == 1 and "exceeds the limit" in refused.failures[0][1]
    report = index_paths([photos], db, IndexOptions(**OPTS, max_pixels=10 * pixels, max_bytes=100 * size))
    assert report.done == 1 and report.segments
    index = SegmentIndex.open(db)
    record = index.store.image_by_path(os.fsencode(photos / "scan.png"))  # (a new record: its failed one went)
    assert record is not None and (record.width, record.height) == BIG and os.path.getsize(record.fs_path) > size
    # The server's cache: read and decoded past the defaults, its budget taken whole, not refused.
    budget = PixelBudget(pixels=pixels)
    rgb = ImageCache(budget=budget).rgb(record)
    assert rgb.shape == (BIG[1], BIG[0], 3) and budget.peak == pixels and budget.in_use == 0
    # --show's sheet and exports: the photo's tiles, not a grey "unreadable" one.
    hits = index.similar(index.store.image_segment_ids(record.id)[0], 3)
    _, unreadable = contact_sheet(hits, tmp_path / "sheet.png", sha256_of=lambda i: index.store.image(i).sha256)
    assert hits and unreadable == {}
    # Another file under its name, past the limits, is still refused (read as the index knows it).
    Image.new("RGB", (BIG[0] * 2, BIG[1])).save(record.fs_path)
    with pytest.raises(UsesearchError):
        ImageCache(budget=PixelBudget(pixels=pixels)).rgb(record)


def test_a_larger_photo_than_the_budget_waits_for_all_of_it_only_where_it_is_indexed():
    from usesearch.indexer.web.budget import PixelBudget

    budget = PixelBudget(pixels=100, wait_s=0.2)
    with pytest.raises(UsesearchError, match="at most 100"):
        with budget.hold(500):
            pass
    with budget.hold(30):
        with pytest.raises(UsesearchError, match="busy"):  # all of it, so not while another holds some
            with budget.hold(500, larger_alone=True):
                pass
    with budget.hold(500, larger_alone=True):
        assert budget.in_use == 100


def test_the_refused_pixel_count_is_read_back_from_the_refusal_pixel_count_writes(tmp_path):
    import io

    png = io.BytesIO()
    Image.new("RGB", BIG).save(png, format="PNG")
    with pytest.raises(ImageReadError) as refused:
        files.pixel_count(png.getvalue(), "x.png", max_pixels=59_999)
    assert files.pixels_refused(str(refused.value)) == BIG[0] * BIG[1]
    assert files.pixels_refused("cannot read image x.png: not a recognised image format") is None
    assert files.pixels_refused(None) is None


def test_segment_embed_and_similar_image_take_the_limits_and_name_them_when_they_refuse(tmp_path):
    photos, db = scans(tmp_path / "photos"), tmp_path / "db"
    index_paths([photos / "sub"], db, IndexOptions(**OPTS))
    scan = str(photos / "scan.png")
    refused = [
        [
            "segment",
            scan,
            "--out",
            str(tmp_path / "l.png"),
            "--classes",
            "a,b",
            "--preset",
            "tiny",
            "--max-pixels",
            "1k",
        ],
        ["embed", scan, "a cat", "--preset", "tiny", "--max-pixels", "1k"],
        ["similar", "--db", str(db), "--image", scan, "--point", "5,5", "--max-bytes", "1k"],
    ]
    for args in refused:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output  # a user error
        assert result.output.count("\n") == 1 and "exceeds the limit of" in result.output
        assert "(--max-pixels, --max-bytes raise the limits)" in result.output
    within = runner.invoke(app, refused[-1][:-1] + ["1M"])
    assert within.exit_code == 0, within.output


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature and header chunk alone: PIL reads its size, nothing to decode."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def test_a_raised_limit_lets_in_photos_past_twice_pils_own_and_pils_warning_gives_way_to_ours():
    """PIL refuses a header past twice its limit (179 MP) itself: `--max-pixels 250M` could
    not let in a 200 MP scan, and the refusal named neither our limit nor the option."""
    scan = png_header(20_000, 10_000)  # 200 MP
    assert files.pixel_count(scan, "scan.png", max_pixels=250_000_000) == 200_000_000
    with pytest.raises(ImageReadError) as refused:
        files.pixel_count(scan, "scan.png")
    assert files.pixels_refused(str(refused.value)) == 200_000_000
    assert Image.MAX_IMAGE_PIXELS == files.PIL_DEFAULT_LIMIT  # PIL's own limit as it was
    # Past PIL's 89 MP but within our 100: no PIL warning on stderr (a process of its own, as
    # the CLI: pytest resets the warning filters a module sets while tests are collected).
    code = (
        "import sys; from usesearch.io import files; print(files.pixel_count(bytes.fromhex(sys.argv[1]), '95mp.png'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, png_header(10_000, 9_500).hex()], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "95000000" and done.stderr == "", done.stderr
    assert files.pixels_refused(str(refused.value)[:-4]) == 200_000_000  # a message cut short (2,000 chars kept)


def test_a_raised_byte_limit_reads_what_the_file_holds_not_the_limit(tmp_path):
    """read(max_bytes + 1) allocated all of `--max-bytes 64G` for every photo: a MemoryError each."""
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    data, _ = files.read_bytes(str(photo), max_bytes=2**62)
    assert data == photo.read_bytes()


def test_prune_keeps_a_photo_indexed_past_the_defaults_that_reads_as_indexed(tmp_path, small_defaults):
    """A photo indexed with `--max-pixels` raised, with a passing failure noted since, was
    judged failing by prune's default limits and removed with its segments."""
    import sqlite3

    from usesearch.indexer.folder import DB_FILE
    from usesearch.indexer.maintenance import prune

    pixels, size = small_defaults
    photos, db = scans(tmp_path / "photos"), tmp_path / "db"
    (photos / "astronaut.png").unlink(), (photos / "sub" / "coffee.png").unlink()
    assert index_paths([photos], db, IndexOptions(**OPTS, max_pixels=10 * pixels, max_bytes=100 * size)).done == 1
    with sqlite3.connect(db / DB_FILE) as con:  # a read that failed once (the disk was busy), noted on it
        con.execute("update images set error_class = 'ImageReadError', error_message = 'busy'")
    report = prune(db, None, IndexOptions(max_pixels=pixels, max_bytes=size))  # the defaults
    assert report.images_removed == 0 and SegmentIndex.open(db).store.counts()["images_done"] == 1


def test_one_waiting_for_the_whole_budget_is_not_starved_by_smaller_holds():
    """Overlapping small holds kept the budget from ever being free: the photo larger than
    it waited its 20 s and got a 503, however often it was asked."""
    import threading
    import time

    from usesearch.indexer.web.budget import PixelBudget

    budget = PixelBudget(pixels=100, wait_s=5)
    order: list[str] = []
    first = threading.Event()

    def small(name: str, after: threading.Event | None) -> None:
        if after is not None:
            after.wait()
        with budget.hold(40):
            first.set()
            order.append(name)
            time.sleep(0.3)

    def large() -> None:
        first.wait()
        with budget.hold(500, larger_alone=True):
            order.append("whole")

    threads = [threading.Thread(target=large), threading.Thread(target=small, args=("a", None))]
    for t in threads:
        t.start()
    time.sleep(0.1)  # "whole" waits behind "a"; "b" comes after it and must let it go first
    late = threading.Thread(target=small, args=("b", None))
    late.start()
    for t in [*threads, late]:
        t.join(10)
    assert order == ["a", "whole", "b"]
