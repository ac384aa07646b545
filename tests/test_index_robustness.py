"""Bad input is recorded and the run goes on; kill -9 and re-run equals one clean run;
Ctrl-C stops a run cleanly (what a re-run reads again: test_index_reruns.py)."""

import io
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.helpers import OPTS, assert_consistent, segment_table, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.io.files import decode


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb's signature."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    d = root / "in"
    d.mkdir()
    photo = Image.fromarray(data.chelsea()).resize((72, 48))
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not a JPEG")
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (d / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    photo.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((np.linspace(0, 65535, 48 * 72).reshape(48, 72)).astype(np.uint16)).save(d / "sixteen.png")
    palette = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(d / "palette.png", transparency=0)
    frames = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    photo.save(d / "rotated.jpg", exif=exif)
    photo.save(os.path.join(os.fsencode(d), b"caf\xe9.png"))  # not valid UTF-8
    os.symlink(d, d / "loop")  # folder symlink back to itself
    os.symlink(d / "self.jpg", d / "self.jpg")  # file symlink loop
    (d / "locked").mkdir()
    Image.new("RGB", (40, 40), (120, 120, 120)).save(d / "nomasks.png")
    masks_json = root / "masks.json"
    masks_json.write_text(  # a mask for another photo: a file with none at all is refused
        '{"images": [{"id": 1, "file_name": "nomasks.png", "height": 40, "width": 40}, '
        '{"id": 2, "file_name": "elsewhere.png", "height": 40, "width": 40}], '
        '"annotations": [{"id": 1, "image_id": 2, "segmentation": [[2, 2, 30, 2, 30, 30]]}]}'
    )
    return root, d


def test_each_bad_input_is_indexed_or_recorded(bad_inputs, monkeypatch):
    root, d = bad_inputs
    real_scandir = os.scandir

    # Root can read any folder, so simulate the permission error an unreadable one gives.
    def scandir(path):
        if os.fsdecode(os.fspath(path)).endswith("locked"):  # (a str or bytes path, as os.scandir takes)
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index_paths([d], root / "db", IndexOptions(**OPTS))
    ix = SegmentIndex.open(root / "db")
    failed = {os.path.basename(r.path): f"{r.error_class}: {r.error_message}" for r in ix.store.failures()}
    assert set(failed) == {"empty.jpg", "text.jpg", "truncated.jpg", "bomb.png", "self.jpg", "locked"}
    assert "empty" in failed["empty.jpg"] and "not a recognised image" in failed["text.jpg"]
    assert "exceeds" in failed["bomb.png"] and "pixels" in failed["bomb.png"]  # refused from the header
    assert "PermissionError" in failed["locked"]
    assert "symbolic links" in failed["self.jpg"]
    with ix.store.sessions() as s:
        from usesearch.indexer.records import ImageRecord

        done = {os.path.basename(r.path): r for r in s.query(ImageRecord).filter_by(status="done")}
    assert set(done) == {
        "cmyk.jpg",
        "sixteen.png",
        "palette.png",
        "animated.gif",
        "rotated.jpg",
        "caf\\xe9.png",
        "nomasks.png",
    }
    assert (done["rotated.jpg"].width, done["rotated.jpg"].height) == (48, 72)  # EXIF applied
    assert report.done == 7 and report.failed == 6 and not report.interrupted
    assert_consistent(root / "db")
    # A glob naming it as a shell passes it (tab-completed: its byte undecoded, a surrogate
    # in Python) matched nothing: SQLite failed on it, "surrogates not allowed", exit 2.
    from usesearch.indexer import SearchFilters

    raw = SearchFilters(path=os.fsdecode(b"*caf\xe9*"))
    assert raw.path == "*caf\\xe9*"
    [first, *_] = ix.store.image_segment_ids(done["caf\\xe9.png"].id)
    hits = ix.similar(first, 5, SearchFilters(path=os.fsdecode(b"*caf\xe9*"), per_image=False))
    assert hits and {h.image for h in hits} == {done["caf\\xe9.png"].path}, hits
    with pytest.raises(ValueError, match="the filter label holds a character no text holds"):
        SearchFilters(label="\ud800")


def test_image_with_no_masks_is_done_with_zero_segments(bad_inputs):
    root, d = bad_inputs
    report = index_paths(
        [d / "nomasks.png"],
        root / "coco-db",
        IndexOptions(preset="tiny", masker="coco", masker_options={"masks_json": str(root / "masks.json")}),
    )
    assert (report.done, report.segments, report.failed) == (1, 0, 0)


def test_decoding_edge_cases_give_rgb():
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 12), 40000, np.uint16)).save(buf, "PNG")
    rgb = decode(buf.getvalue(), "x.png")
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8 and rgb[0, 0, 0] == 40000 >> 8


def test_kill_dash_nine_then_resume_equals_one_clean_run(tmp_path):
    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "coins")
    photos = write_photos(tmp_path / "photos", names)
    for i in range(3):  # more work so the kill lands mid-run
        write_photos(tmp_path / "photos" / f"copy{i}", names[::-1][i:] + names[:i])
        for p in (tmp_path / "photos" / f"copy{i}").rglob("*.png"):
            Image.open(p).rotate(90 * (i + 1), expand=True).save(p)
    db = tmp_path / "db"
    code = (
        "import sys; from usesearch.indexer import IndexOptions, index_paths; "
        "index_paths([sys.argv[1]], sys.argv[2], "
        "IndexOptions(preset='tiny', masker='felzenszwalb', masker_options={'max_masks': 8}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(photos), str(db)], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(db / "segments.sqlite", timeout=5) as con:
                done = con.execute("select count(*) from images where status='done'").fetchone()[0]
        except sqlite3.Error:
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the indexer finished before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 32
    resumed = index_paths([photos], db, IndexOptions(**OPTS))
    assert resumed.skipped >= done and resumed.failed == 0
    clean = tmp_path / "clean"
    index_paths([photos], clean, IndexOptions(**OPTS))
    assert segment_table(db) == segment_table(clean)
    assert_consistent(db)


def test_ctrl_c_stops_cleanly_and_keeps_finished_images(tmp_path, monkeypatch):
    from usesearch.masks.maskers import FelzenszwalbMasker

    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    calls = []
    original = FelzenszwalbMasker.__call__

    def interrupt_on_second(self, rgb, path=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, rgb, path)

    monkeypatch.setattr(FelzenszwalbMasker, "__call__", interrupt_on_second)
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert report.interrupted and report.done == 1
    assert_consistent(tmp_path / "db")
    monkeypatch.setattr(FelzenszwalbMasker, "__call__", original)
    rest = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert (rest.done, rest.skipped) == (2, 1)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_that_a_finalizer_swallowed_still_interrupts_the_run(tmp_path, monkeypatch):
    """SIGINT while Python runs a finalizer (SQLAlchemy's event registry has one): the
    KeyboardInterrupt is printed as "Exception ignored" and dropped, and the run went
    on to its end, exit 0. The CLI counts each SIGINT; the loop stops at its next step,
    exit 130, before its first photo's work."""
    import signal

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.indexer import pipeline

    class SwallowsCtrlC:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    real_load = pipeline.load_models

    def load_models(options):
        loaded = real_load(options)
        SwallowsCtrlC()  # collected at once: its SIGINT raised, and dropped, inside __del__
        return loaded

    monkeypatch.setattr(pipeline, "load_models", load_models)
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--masker", "felzenszwalb"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130 and "interrupted" in result.output and "0 images indexed" in result.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command's handler is gone
    monkeypatch.setattr(pipeline, "load_models", real_load)
    rest = CliRunner().invoke(app, args)
    assert rest.exit_code == 0 and "3 images indexed" in rest.output, rest.output


def test_a_masker_files_broken_masks_fail_their_photo_in_one_line_and_the_rest_is_indexed(tmp_path):
    """``--masker coco``: a compressed RLE whose runs fall short of the photo (pycocotools
    read past its end and indexed garbage) fails its photo, named; the other photos are
    indexed. A mask whose form is broken where its entry gives the photo's size (another
    size, short uncompressed runs, a polygon of 5 coordinates) or an entry without its
    keys refuses the file in one line before anything is made: the photo failed, and the
    fixed file was another content, which the index refused."""
    import json
    import re

    from usesearch.errors import CocoFileError
    from usesearch.masks import rle
    from usesearch.masks.maskers import CocoMasker

    photos = tmp_path / "photos"
    photos.mkdir()
    for shade, name in enumerate(("good.png", "short.png", "unsized.png")):
        Image.new("RGB", (30, 20), (90, 90, 90 + shade)).save(photos / name)  # each its own content
    whole = np.zeros((20, 30), bool)
    whole[5:15, 5:20] = True
    short = {"size": [20, 30], "counts": rle.encode(whole[:10])["counts"]}  # 300 of 600 pixels
    images = [{"id": i, "file_name": n, "height": 20, "width": 30} for i, n in enumerate(["good.png", "short.png"])]
    images.append({"id": 2, "file_name": "unsized.png"})  # sized by its photo: checked as it is read
    annotations = [
        {"id": 1, "image_id": 0, "segmentation": rle.encode(whole)},
        {"id": 2, "image_id": 1, "segmentation": short},
        {"id": 3, "image_id": 2, "segmentation": {"size": [40, 50], "counts": [100, 1900]}},
    ]
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"images": images, "annotations": annotations}))
    report = index_paths(
        [photos], tmp_path / "db", IndexOptions(preset="tiny", masker="coco", masker_options={"masks_json": str(masks)})
    )
    failed = dict(report.failures)
    assert (
        report.done == 1
        and report.segments == 1
        and set(failed) == {str(photos / "short.png"), str(photos / "unsized.png")}
    )
    assert all("the mask of annotation" in why and "is broken" in why for why in failed.values())
    for broken, why in (
        ({"size": [40, 50], "counts": [100, 1900]}, "the RLE's size is [40, 50] but the photo is 20x30"),
        ({"size": [20, 30], "counts": [5, 10]}, "the RLE's runs do not cover"),
        ([[1, 1, 5, 1, 5]], "a polygon needs an even number of coordinates"),
    ):
        masks.write_text(
            json.dumps({"images": images, "annotations": [{"id": 4, "image_id": 1, "segmentation": broken}]})
        )
        with pytest.raises(
            CocoFileError, match=re.escape("masks.json: the mask of annotation 4 (short.png) is broken: " + why)
        ):
            index_paths(
                [photos],
                tmp_path / "new",
                IndexOptions(preset="tiny", masker="coco", masker_options={"masks_json": str(masks)}),
            )
        assert not (tmp_path / "new").exists()
    masks.write_text(json.dumps({"images": images, "annotations": [{"id": 4, "image_id": 0}]}))
    with pytest.raises(CocoFileError, match="annotation #0 has no image_id or no segmentation"):
        CocoMasker(masks)


def test_failures_prints_a_line_a_file_even_for_a_name_with_a_newline(tmp_path):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    photos = write_photos(tmp_path / "photos", ("coffee",))
    (photos / "bad\nname.jpg").write_text("this is not a JPEG")
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    result = CliRunner().invoke(app, ["failures", "--db", str(tmp_path / "db")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{photos}/bad\\nname.jpg\t"), lines
    assert lines[0].count("name.jpg") == 1, lines  # its path said once: the reason leaves it out


def test_a_failing_file_moved_with_its_folder_is_one_failure_not_two(tmp_path):
    """`mv photos archive` then `index archive`: the photos moved with their segments, but
    each failing file was recorded again under its new path, its old failure kept:
    `failures` listed both and `info` counted them twice."""
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("coffee",))
    (photos / "bad.jpg").write_text("this is not a JPEG")
    db = tmp_path / "db"
    assert index_paths([photos], db, IndexOptions(**OPTS)).failed == 1
    photos.rename(tmp_path / "archive")
    moved = index_paths([tmp_path / "archive"], db, IndexOptions(**OPTS))
    assert moved.failed == 1 and len(moved.moved) == 1, moved
    store = open_store(db, read_only=True)
    try:
        failed = [r.path for r in store.failures()]
    finally:
        store.close()
    assert failed == [str(tmp_path / "archive" / "bad.jpg")], failed


def test_a_photo_gone_between_the_walk_and_its_read_is_said_not_recorded(tmp_path, monkeypatch):
    """A file deleted while a run went on was recorded as a failure with Python's
    "FileNotFoundError: [Errno 2] ...", kept in `failures` though no run could meet it."""
    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.indexer import pipeline
    from usesearch.indexer.folder import open_store
    from usesearch.io.files import Found

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    walked = pipeline.photos_under
    gone = str(photos / "deleted.png")  # walked, then deleted before its read
    monkeypatch.setattr(pipeline, "photos_under", lambda *a, **k: [*walked(*a, **k), Found(gone, gone)])
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "2 images indexed, 0 skipped, 0 failed" in said, said
    assert f"1 photo ({gone}) went between the walk and its read (deleted or moved during the run)" in said, said
    store = open_store(tmp_path / "db", read_only=True)
    try:
        assert store.failures() == []
    finally:
        store.close()


def test_a_commands_ctrl_c_does_not_outlive_it(tmp_path):
    """A SIGINT counted by one command and never handled (click made it an Abort) must not
    stop a later run through the Python API: it stopped at its first photo."""
    import signal

    from usesearch import interrupts

    with pytest.raises(KeyboardInterrupt), interrupts.counting():
        signal.raise_signal(signal.SIGINT)
    photos = write_photos(tmp_path / "photos", ("coffee",))
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert not report.interrupted and report.done == 1
    interrupts.raise_if_lost()  # outside a command: never raises


@pytest.mark.parametrize("on_ray", [False, True], ids=["sequential", "ray"])
def test_sigterm_stops_a_run_as_ctrl_c_does_even_where_sigint_is_ignored(tmp_path, on_ray):
    """`timeout`, `docker stop` and systemd send SIGTERM: the run ended silently at exit
    143, its summary unsaid; and a script's background job (SIGINT ignored) kept none of
    the CLI's handling. Now: what was kept is said, exit 143. On Ray too, whose ray.init
    put in a handler of its own (exit 15 at once, nothing said)."""
    import subprocess
    import sys
    import textwrap

    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    script = textwrap.dedent(
        f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` in a script starts it
        from usesearch.indexer import distributed, writer
        original = writer.Writer.commit
        def terminated_after_the_first(self, photos, report):  # (the driver's, on Ray too)
            original(self, photos, report)
            signal.raise_signal(signal.SIGTERM)
        writer.Writer.commit = terminated_after_the_first
        sys.argv = ["usesearch", "index", {str(photos)!r}, "--db", {str(db)!r}, "--preset", "tiny",
                    "--masker", "felzenszwalb"] + {["--ray", "--workers", "1"] if on_ray else []!r}
        from usesearch.cli.app import main
        main()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    said = done.stdout + done.stderr
    assert done.returncode == 143 and "interrupted; finished work is kept: 1 image indexed" in said, said
    assert_consistent(db)
    rest = index_paths([photos], db, IndexOptions(preset="tiny", masker="felzenszwalb"))
    assert (rest.done, rest.skipped) == (2, 1)


def test_a_dead_writers_temporary_identity_files_are_taken_back(tmp_path):
    """A new index killed at its first write left `embeddings/.index-id.PID.tmp` through every
    later run; a live writer's, and a file of the user's, stay."""
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    folder = db / "embeddings"
    dead = 2**22 + 7  # (past Linux's pid_max: no such process)
    left = [folder / f".index-id.{dead}.tmp", folder / f".writer-tokens.{dead}.tmp"]
    kept = [folder / f".writer-tokens.{os.getpid()}.tmp", folder / f".notes.{dead}.tmp"]
    for path in left + kept:
        path.write_text("x")
    write_photos(photos, ("rocket",))  # a run that changes the embedding files: its writer token is written
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 1
    assert [p.exists() for p in left + kept] == [False, False, True, True]
