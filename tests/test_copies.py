"""Files with the same content under other paths: a copy of an indexed photo is skipped
and said; one of a photo that fails fails with it, sequentially and on Ray."""

import json
import os

import pytest

from tests.helpers import OPTS, assert_consistent, settle, write_photos
from usesearch.indexer import IndexOptions, index_paths

pytestmark = pytest.mark.usefixtures("ray_for_ray_cases")


def index_with(on_ray: bool):
    if not on_ray:
        return index_paths
    pytest.importorskip("ray", reason="the distributed extra is not installed")
    from usesearch.indexer.distributed import index_paths_ray

    return lambda paths, db, options: index_paths_ray(paths, db, options, workers=1)


@pytest.mark.parametrize("on_ray", [False, True], ids=["sequential", "ray"])
def test_a_copy_of_a_file_that_fails_fails_with_it_and_is_not_read_again(tmp_path, monkeypatch, on_ray):
    """Two broken files of the same bytes: the second was skipped as a copy of "a photo
    earlier in this run", said as one, and left out of `failures`; the next run read it
    again and only then failed it."""
    from usesearch.indexer import known_images, read_ahead
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("coffee",))
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(b"garbage, not a picture\n")
    if on_ray:
        settle(photos)  # Ray's tasks stat the files: the patch below is this process's alone
    monkeypatch.setattr(known_images, "RACY_NS", 0)
    run = index_with(on_ray)
    first = run([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert (first.done, first.skipped, first.failed, first.copies) == (1, 0, 2, []), first
    assert sorted(os.path.basename(path) for path, _ in first.failures) == ["a.png", "b.png"]
    # Each failure names its own file: the copy's had named its twin ("cannot read image .../a.png").
    assert all(path in text and "ImageReadError" in text for path, text in first.failures), first.failures
    store = open_store(tmp_path / "db", read_only=True)
    try:
        assert sorted(os.path.basename(r.path) for r in store.failures()) == ["a.png", "b.png"]
        assert all(r.path in r.error_message and r.error_class == "ImageReadError" for r in store.failures())
    finally:
        store.close()
    reads: list[str] = []
    read = read_ahead.read_bytes
    monkeypatch.setattr(
        read_ahead, "read_bytes", lambda path, *a: reads.append(os.path.basename(path)) or read(path, *a)
    )
    again = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert (again.skipped, again.failed, again.copies, reads) == (3, 0, [], [])  # the failed ones: unread


def test_copies_are_skipped_unread_on_a_rerun_and_take_their_photos_record_once_it_is_gone(tmp_path, monkeypatch):
    """Every re-run read and hashed each copy (a hard link, a photo copied into two
    folders) whole: 40 copies of a 7.5 MB photo were 300 MB a run."""
    import shutil

    from usesearch.indexer import known_images, read_ahead
    from usesearch.indexer.maintenance import prune

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    shutil.copy(photos / "astronaut.png", photos / "sub" / "copy.png")
    os.link(photos / "astronaut.png", photos / "link.png")
    assert len(index_paths([photos], tmp_path / "db", IndexOptions(**OPTS)).copies) == 2
    reads: list[str] = []
    read = read_ahead.read_bytes
    monkeypatch.setattr(
        read_ahead, "read_bytes", lambda path, *a: reads.append(os.path.basename(path)) or read(path, *a)
    )
    again = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert (again.skipped, len(again.copies), reads) == (4, 2, [])
    (photos / "astronaut.png").unlink()  # the copies' photo: its record moves onto the first copy
    pruned = prune(tmp_path / "db", [photos], IndexOptions(**OPTS))
    assert pruned.images_removed == 0 and [os.path.basename(new) for _, new in pruned.moved] == ["link.png"]
    after = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))  # sub/copy.png: its copy now, unread
    assert (after.done, after.failed, len(after.copies), reads) == (0, 0, 1, []), after
    assert_consistent(tmp_path / "db")


def test_a_copy_met_long_after_its_broken_twin_failed_fails_too(tmp_path, monkeypatch):
    """The read-ahead keeps a content as coming after its file failed: a copy met more
    than a few files later was skipped as a copy of "a photo earlier in this run" and
    left out of `failures`, with a copy noted of a content never indexed."""
    import numpy as np
    from PIL import Image

    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # distinct photos between the twins, past the read-ahead
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"m{i:02}.png")
    for name in ("a.png", "z.png"):
        (photos / name).write_bytes(b"garbage, not a picture\n")
    first = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert (first.done, first.failed, first.copies) == (12, 2, []), first
    assert sorted(os.path.basename(path) for path, _ in first.failures) == ["a.png", "z.png"]
    assert_consistent(tmp_path / "db")


def test_an_interrupted_run_does_not_count_copies_of_a_photo_it_never_committed(tmp_path):
    """Ray commits a window's photos together: a Ctrl-C before that commit left the copy
    of an uncommitted photo in the summary as skipped "= a photo earlier in this run".
    A copy of a photo committed before the Ctrl-C stays one; the other is not counted
    skipped either (a summary's 5 skipped explained 3)."""
    import numpy as np

    from tests.test_store_writes import segments
    from usesearch.indexer.image_writes import PhotoWrite
    from usesearch.indexer.options import IndexReport
    from usesearch.indexer.writer import Writer

    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    committed, lost = "c" * 64, "d" * 64
    with Writer(tmp_path / "db", IndexOptions(**OPTS), None) as writer:
        for sha, name in ((committed, "c"), (lost, "d")):  # each a copy of one earlier in the run
            assert writer.skip(f"/x/{name}2.png".encode(), sha, coming={sha}, path=f"/x/{name}2.png")
        assert writer.copies == []  # counted once the photo they copy is committed
        vectors = np.random.default_rng(0).standard_normal((2, writer.info.dim)).astype(np.float32)
        report = IndexReport(skipped=2)  # as the caller counts each skip
        writer.commit([PhotoWrite(b"/x/c.png", "/x/c.png", committed, (10, 10), segments(2), vectors)], report)
        assert writer.copies == [("/x/c2.png", "/x/c.png")]  # named once it is indexed

        def interrupted():
            raise KeyboardInterrupt
            yield "never"

        writer.run(interrupted(), report, lambda path: None)
    assert report.interrupted and writer.copies == [("/x/c2.png", "/x/c.png")]
    assert report.skipped == 1  # d2.png no skipped copy either: the summary's skipped count each have a line


@pytest.mark.parametrize("on_ray", [False, True], ids=["sequential", "ray"])
def test_a_photo_changed_into_a_copy_of_another_is_a_copy_not_indexed_twice(tmp_path, monkeypatch, on_ray):
    """`cp rocket.png chelsea.png` over an indexed chelsea: the next run embedded it
    again, and every search found the rocket twice. Now its old segments go and it is
    counted as a copy, as a new file of that content is; given its own content back, it
    is indexed again. A changed photo whose content no other holds is computed again."""
    import shutil

    from usesearch.indexer import known_images
    from usesearch.indexer.folder import open_store

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = write_photos(tmp_path / "photos", ("rocket", "coffee", "chelsea"))  # (the second in photos/sub)
    original = (photos / "chelsea.png").read_bytes()
    run, db = index_with(on_ray), tmp_path / "db"
    assert run([photos], db, IndexOptions(**OPTS)).done == 3

    def indexed() -> dict[str, int]:
        store = open_store(db, read_only=True)
        try:
            return {os.path.basename(p): len(store.image_segment_ids(i)) for i, _, p in store.image_files()}
        finally:
            store.close()

    rocket_segments, chelsea_segments = indexed()["rocket.png"], indexed()["chelsea.png"]
    shutil.copy(photos / "rocket.png", photos / "chelsea.png")
    again = run([photos], db, IndexOptions(**OPTS))
    assert again.done == 0 and [(os.path.basename(c), os.path.basename(h)) for c, h in again.copies] == [
        ("chelsea.png", "rocket.png")
    ], again
    # Its old segments went with its old content: said (the summary's copy line alone hid them).
    assert [(os.path.basename(c), n) for c, n in again.copies_replacing] == [("chelsea.png", chelsea_segments)]
    now = indexed()
    assert set(now) == {"rocket.png", "coffee.png"} and now["rocket.png"] == rocket_segments
    assert_consistent(db)
    (photos / "chelsea.png").write_bytes(original)
    back = run([photos], db, IndexOptions(**OPTS))
    assert back.done == 1 and back.copies == [] and set(indexed()) == {"rocket.png", "chelsea.png", "coffee.png"}
    assert_consistent(db)


def test_a_folder_named_through_a_link_is_said_as_the_same_files_not_copies(tmp_path):
    """`index names-link` (a link to an indexed folder) said "5 skipped as copies of a
    photo indexed under another path": they are the same files."""
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    db = str(tmp_path / "db")
    assert CliRunner().invoke(app, ["index", str(photos), "--db", db, "--preset", "tiny"]).exit_code == 0
    (tmp_path / "alias").symlink_to(photos)
    again = CliRunner().invoke(app, ["index", str(tmp_path / "alias"), "--db", db, "--preset", "tiny"])
    said = " ".join(again.output.split())
    assert again.exit_code == 0 and "2 skipped: the same files as indexed, reached through a link" in said, said
    assert "copies of a photo" not in said


def test_a_photo_overwritten_with_anothers_bytes_says_its_old_segments_went(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from usesearch.cli.app import app

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"]
    first = CliRunner().invoke(app, [*args, "--json"])
    segments = json.loads(first.stdout)["proposals"]["segments"]
    shutil.copy(photos / "coffee.png", photos / "sub" / "chelsea.png")
    said = " ".join(CliRunner().invoke(app, args).output.replace("│", "").split())
    assert "1 skipped as a copy of a photo indexed under another path" in said, said
    assert f"1 of those copies ({photos / 'sub' / 'chelsea.png'}) held other content when indexed: the " in said
    old = said.split("held other content when indexed: the ")[1].split(" segment")[0]
    assert 0 < int(old) < segments and "of that content were removed" in said, said


@pytest.mark.parametrize("on_ray", [False, True], ids=["sequential", "ray"])
def test_a_labelled_photo_whose_bytes_another_path_holds_gets_its_proposals_and_keeps_its_annotations(tmp_path, on_ray):
    """A photo in train and its byte copy in val (a leak the audit shows): the masker
    run removed whichever still waited for its proposals as a copy of the other, with
    its annotations, unsaid; the next --coco run embedded them again, and the next
    masker run removed them again."""
    import shutil

    from tests.test_coco_index import write_coco
    from usesearch.indexer.coco_index import index_coco
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("rocket", "chelsea"))  # (the second in photos/sub)
    shutil.copy(photos / "rocket.png", photos / "rocket_copy.png")
    db, val = tmp_path / "db", ["rocket_copy.png", "sub/chelsea.png"]
    index_coco([photos], write_coco(tmp_path / "train.json", photos, ["rocket.png"], 1), db, IndexOptions(**OPTS))
    index_coco([photos], write_coco(tmp_path / "val.json", photos, val, 9), db, IndexOptions(**OPTS))
    report = index_with(on_ray)([photos], db, IndexOptions(**OPTS))
    assert report.done == 3 and report.copies == [] and not report.annotations_lost, report
    store = open_store(db, read_only=True)
    try:
        kept = {
            os.path.basename(path): sorted(
                {(r.source, r.split) for r in store.rows(store.image_segment_ids(i)).values()}
            )
            for i, _, path in store.image_files()
        }
        waiting = [r.path for r in store.images_with_hash(store.image(1).sha256) if not r.proposals_made]
    finally:
        store.close()
    assert kept == {
        "rocket.png": [("annotation", "train"), ("proposal", None)],
        "rocket_copy.png": [("annotation", "val"), ("proposal", None)],
        "chelsea.png": [("annotation", "val"), ("proposal", None)],
    }
    assert waiting == []
    assert_consistent(db)
    # A labelled photo changed into a copy of another goes as a copy, its annotations
    # (of its old content) said lost, as those of any photo whose content changed are.
    shutil.copy(photos / "rocket.png", photos / "sub" / "chelsea.png")
    changed = index_with(on_ray)([photos], db, IndexOptions(**OPTS))
    assert [os.path.basename(c) for c, _ in changed.copies] == ["chelsea.png"], changed
    assert changed.annotations_lost == {"val": 2}
    assert_consistent(db)


@pytest.mark.parametrize("on_ray", [False, True], ids=["sequential", "ray"])
def test_two_known_photos_changed_into_one_content_are_one_photo_and_its_copy(tmp_path, on_ray):
    """Two indexed files (or two that failed: empty, a link loop) given the same new
    content: both were embedded again, every search found that photo twice, and on Ray
    the second commit found their shared fragment gone and ended the run."""
    import shutil

    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("rocket", "coffee", "chelsea"))  # (the second in photos/sub)
    (photos / "empty.png").write_bytes(b"")  # fails, then is given that content too
    run, db = index_with(on_ray), tmp_path / "db"
    first = run([photos], db, IndexOptions(**OPTS))
    assert (first.done, first.failed) == (3, 1)
    new = write_photos(tmp_path / "new", ("camera",)) / "camera.png"  # a content the index has not seen
    for name in ("rocket.png", "empty.png"):
        shutil.copy(new, photos / name)
    again = run([photos], db, IndexOptions(**OPTS))
    store = open_store(db, read_only=True)
    try:
        paths = sorted(os.path.basename(p) for i, _, p in store.image_files())
    finally:
        store.close()
    assert [(os.path.basename(c), os.path.basename(h)) for c, h in again.copies] == [("rocket.png", "empty.png")]
    assert (again.done, again.failed) == (1, 0) and paths == ["chelsea.png", "coffee.png", "empty.png"], again
    assert_consistent(db)
    # A content both held, already indexed: the same (the case a holder settled before).
    for name in ("rocket.png", "empty.png"):
        shutil.copy(photos / "sub" / "coffee.png", photos / name)
    third = run([photos], db, IndexOptions(**OPTS))
    assert sorted(os.path.basename(c) for c, _ in third.copies) == ["empty.png", "rocket.png"], third
    assert third.done == 0 and third.failed == 0
    assert_consistent(db)


def test_a_known_photo_changed_into_a_labelled_ones_bytes_waits_for_its_proposals(tmp_path, monkeypatch):
    """A labelled photo's record is there before its proposals are: a known photo given
    its bytes lost its own record at once, before that photo was committed (had it
    failed or the run been cut, its copy would have kept nothing)."""
    import shutil

    from tests.test_coco_index import write_coco
    from usesearch.indexer import writer
    from usesearch.indexer.coco_index import index_coco
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("rocket", "chelsea"))  # (the second in photos/sub)
    db = tmp_path / "db"
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 2
    write_photos(tmp_path / "photos", ("camera",))  # photos/camera.png: labelled, no proposals yet
    index_coco([photos], write_coco(tmp_path / "lab.json", photos, ["camera.png"], 1), db, IndexOptions(**OPTS))
    shutil.copy(photos / "camera.png", photos / "sub" / "chelsea.png")

    def paths() -> set[str]:
        store = open_store(db, read_only=True)
        try:
            return {os.path.basename(p) for _, _, p in store.image_files()}
        finally:
            store.close()

    real, at_commit = writer.Writer.commit, []

    def commit(self, photos_, report):
        at_commit.append(paths())
        return real(self, photos_, report)

    monkeypatch.setattr(writer.Writer, "commit", commit)
    report = index_paths([photos], db, IndexOptions(**OPTS))
    assert at_commit and "chelsea.png" in at_commit[0]  # kept until the labelled photo was committed
    assert [(os.path.basename(c), os.path.basename(h)) for c, h in report.copies] == [("chelsea.png", "camera.png")]
    assert paths() == {"rocket.png", "camera.png"}
    assert_consistent(db)


def test_a_labelled_photo_failing_now_keeps_its_record_where_a_copy_of_it_lies(tmp_path):
    """A labelled photo truncated (a copy in progress) beside an unlabelled copy of it:
    its record, annotations and all, moved onto the copy as if renamed; repaired and
    indexed again, the photo was embedded a second time, and every search found it twice."""
    import shutil

    from tests.test_coco_index import write_coco
    from usesearch.indexer.coco_index import index_coco
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("rocket",))
    shutil.copy(photos / "rocket.png", photos / "rocket_copy.png")
    db, train = tmp_path / "db", write_coco(tmp_path / "train.json", photos, ["rocket.png"], 1)
    index_coco([photos], train, db, IndexOptions(**OPTS))
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 1  # the copy skipped as one
    whole = (photos / "rocket.png").read_bytes()
    (photos / "rocket.png").write_bytes(whole[: len(whole) // 2])
    cut = index_paths([photos], db, IndexOptions(**OPTS))
    assert cut.failed == 1 and cut.moved == [], cut
    (photos / "rocket.png").write_bytes(whole)
    index_coco([photos], train, db, IndexOptions(**OPTS))
    index_paths([photos], db, IndexOptions(**OPTS))
    store = open_store(db, read_only=True)
    try:
        images = {os.path.basename(p): len(store.image_segment_ids(i)) for i, _, p in store.image_files()}
    finally:
        store.close()
    assert list(images) == ["rocket.png"], images  # one photo: its copy is a copy
    assert_consistent(db)


def test_a_photo_renamed_ahead_of_its_old_name_now_a_copy_keeps_its_record(tmp_path, monkeypatch):
    """`mv astronaut.png 0.png && cp sub/coffee.png astronaut.png`: 0.png (met first) took
    the astronaut's record, then astronaut.png, a copy now, removed "its" record as read
    ahead of the move: the moved one. The run said it moved, 0.png had no segments, and
    the next run embedded it again. (On Ray too, through the same ``Writer``: its hashed
    photos are read ahead alike; left out of the suite for its 25 s.)"""
    import shutil

    from usesearch.indexer import known_images
    from usesearch.indexer.folder import open_store

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))  # (the second in photos/sub)
    run, db = index_paths, tmp_path / "db"
    assert run([photos], db, IndexOptions(**OPTS)).done == 2
    os.rename(photos / "astronaut.png", photos / "0.png")
    shutil.copy(photos / "sub" / "coffee.png", photos / "astronaut.png")
    again = run([photos], db, IndexOptions(**OPTS))
    named = lambda pairs: [(os.path.basename(a), os.path.basename(b)) for a, b in pairs]  # noqa: E731
    assert named(again.moved) == [("astronaut.png", "0.png")], again
    assert named(again.copies) == [("astronaut.png", "coffee.png")] and again.done == 0, again
    store = open_store(db, read_only=True)
    try:
        segments = {os.path.basename(p): len(store.image_segment_ids(i)) for i, _, p in store.image_files()}
    finally:
        store.close()
    assert set(segments) == {"0.png", "coffee.png"} and segments["0.png"] > 0, segments
    assert_consistent(db)
    third = index_paths([photos], db, IndexOptions(**OPTS))
    assert third.done == 0 and third.skipped == 3, third
