"""prune: images whose files are gone since indexing leave the index with their
segments and vectors, crash-safely; `info` counts them; an unmounted disk is not
taken for a deleted archive."""

import json
import os

import numpy as np
from typer.testing import CliRunner

from tests.helpers import OPTS, assert_consistent, kill_when, run_python, segment_table, sqlite_count, write_photos
from tests.test_index_scale import synthetic_index
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths, reindex

NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def test_prune_removes_what_is_gone_and_leaves_what_a_clean_index_has(tmp_path):
    photos = write_photos(tmp_path / "photos", NAMES)
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    (photos / "astronaut.png").unlink()  # gone
    (photos / "coffee.png").unlink()
    (photos / "coffee.png").mkdir()  # no longer a regular file
    # Corrupt since indexing: the next run keeps its segments with the failure noted; prune
    # said "0 images removed" and its segments kept answering queries.
    (photos / "sub" / "chelsea.png").write_bytes(b"garbage, not a picture any more\n")
    assert index_paths([photos / "sub" / "chelsea.png"], db, IndexOptions(**OPTS)).failed == 1
    runner = CliRunner()
    info = json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).output)
    assert (info["files_gone"], info["images_failing_kept"], info["images_failed"]) == (3, 1, 0), info
    result = runner.invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "3 images removed" in result.output, result.output
    # Their rows lie in the one chunk file, still written to: it said nothing of the disk.
    said = " ".join(result.output.split())
    assert "embedding files: nothing given back yet (the removed segments' rows lie in a chunk file" in said, said
    clean = tmp_path / "clean"
    index_paths([photos], clean, IndexOptions(**OPTS))
    assert segment_table(db) == segment_table(clean)
    assert_consistent(db)
    ix = SegmentIndex.open(db)
    assert ix.stats(check_files=True)["files_gone"] == 0 and {
        os.path.basename(h.image) for h in ix.query("a cat", k=50)
    } == {"rocket.png"}
    ix.close()


def test_info_counts_files_gone_from_a_sample_past_its_bound(tmp_path):
    """Past ``GONE_CHECKED`` images, ``info`` stats a sample drawn from every part of the
    catalog and scales its share gone (every file of 10^7 photos took minutes to stat,
    and 2.5 GB to list), also where removed images left gaps in the ids; up to it, every
    file, exactly. A run's folders are chosen before sampling: a small folder of a big
    catalog is counted whole."""
    from sqlalchemy import delete, insert

    from usesearch.indexer.folder import db_url_for
    from usesearch.indexer.leftovers import files_gone
    from usesearch.indexer.records import DONE, ImageRecord
    from usesearch.indexer.store import Store

    db = tmp_path / "db"
    synthetic_index(db, n=10, dim=8, images=1)
    store = Store(db_url_for(db, None), folder=db)

    def catalog(exists) -> None:
        rows = []
        for i in range(900):
            path = tmp_path / ("small" if i >= 890 else "photos") / f"{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.unlink(missing_ok=True)
            if exists(i):
                path.write_bytes(b"x")
            rows.append(dict(fs_path=os.fsencode(path), path=str(path), sha256=f"{i:064x}", status=DONE))
        with store.sessions.begin() as s:
            s.execute(delete(ImageRecord))
            s.execute(insert(ImageRecord), rows)

    catalog(lambda i: i % 3 == 0)  # 600 gone, spread evenly
    assert files_gone(store, most=1000)[:2] == (600, 900)
    gone, checked, _, estimated, _ = files_gone(store, most=150)
    assert checked == 150 and estimated and 500 <= gone <= 700
    catalog(lambda i: i < 450)  # the later half gone: a sample of the first ids saw none
    gone, checked, _, _, _ = files_gone(store, most=150)
    assert checked == 150 and 370 <= gone <= 530
    small = files_gone(store, [tmp_path / "small"], most=150)  # 10 photos, all gone
    assert (small.number, small.checked, small.estimated) == (10, 10, False)
    with store.sessions.begin() as s:  # ids with gaps: every other image removed
        s.execute(delete(ImageRecord).where(ImageRecord.id % 2 == 0))
    gone, checked, _, _, _ = files_gone(store, most=150)
    assert checked == 150 and 170 <= gone <= 280  # of 450, 225 gone
    store.close()


def test_a_file_that_failed_is_no_indexed_photo_gone_unless_it_is_missing(tmp_path):
    """A FIFO (or an unreadable file) fails each run; it was said to be an "indexed photo
    gone", and a prune removed its record only for the next run to fail it again."""
    photos = write_photos(tmp_path / "photos", NAMES[:2])
    os.mkfifo(photos / "pipe.jpg")
    (photos / "broken.png").write_bytes(b"not a photo")
    db = tmp_path / "db"
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny"])
    assert result.exit_code == 0 and "2 failed" in result.output and "are gone" not in result.output, result.output
    (photos / "broken.png").unlink()  # a failed file now missing: its record has nothing left to say
    info = runner.invoke(app, ["info", "--db", str(db), "--json"])
    assert '"files_gone": 1' in info.output, info.output
    (photos / "astronaut.png").rename(tmp_path / "away.png")  # an indexed photo gone: the run says so
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny"])
    assert "  1 indexed photo(s) under these folders are gone (" in result.output, result.output
    assert "astronaut.png: missing): `usesearch prune" in result.output, result.output
    (tmp_path / "away.png").rename(photos / "astronaut.png")
    result = runner.invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "1 image removed" in result.output, result.output
    ix = SegmentIndex.open(db)
    assert [os.path.basename(r.path) for r in ix.store.failures()] == ["pipe.jpg"]
    ix.close()


def test_index_prune_only_touches_the_folders_it_was_given(tmp_path):
    a, b = write_photos(tmp_path / "a", NAMES[:2]), write_photos(tmp_path / "b", NAMES[2:])
    db = tmp_path / "db"
    index_paths([a, b], db, IndexOptions(preset="tiny"))  # the CLI's defaults below
    (a / "astronaut.png").unlink()
    (b / "coffee.png").unlink()
    result = CliRunner().invoke(app, ["index", str(a), "--db", str(db), "--preset", "tiny", "--prune"])
    assert result.exit_code == 0 and "pruned 1 image" in result.output, result.output
    ix = SegmentIndex.open(db)
    assert sorted(os.path.basename(p) for _, _, p in ix.store.image_files()) == [
        "chelsea.png",
        "coffee.png",
        "rocket.png",
    ]
    ix.close()
    # A photo named itself, not its folder: it was "no indexed photo", and nothing was removed.
    ix = SegmentIndex.open(db)
    where = {os.path.basename(p): p for _, _, p in ix.store.image_files()}
    ix.close()
    named = CliRunner().invoke(app, ["prune", where["coffee.png"], "--db", str(db)])
    assert named.exit_code == 0 and "1 image removed" in named.output, named.output
    there = CliRunner().invoke(app, ["prune", where["chelsea.png"], "--db", str(db)])
    assert there.exit_code == 0 and "no indexed photo" not in there.output and "0 images removed" in there.output
    ix = SegmentIndex.open(db)
    assert sorted(os.path.basename(p) for _, _, p in ix.store.image_files()) == ["chelsea.png", "rocket.png"]
    ix.close()


def test_kill_dash_nine_during_prune_then_resume(tmp_path):
    db = tmp_path / "db"
    synthetic_index(db, n=6_000, dim=16, images=1_500)
    reindex(db)
    code = "import sys; from usesearch.indexer.maintenance import prune; prune(sys.argv[1], force=True)"
    left = kill_when(
        run_python(code, db),
        lambda: sqlite_count(db / "segments.sqlite", "select count(*) from images"),
        lambda n: n <= 1_250,
        start=1_500,
        every=0.02,
    )
    assert 0 < left < 1_500
    ix = SegmentIndex.open(db)  # usable at once: the vectors are reconciled with what was committed
    assert ix.index.ntotal == len(ix.store.segment_ids()) == 4 * ix.stats()["images_done"]
    ix.close()
    result = CliRunner().invoke(app, ["prune", "--db", str(db), "--force"])
    assert result.exit_code == 0, result.output
    ix = SegmentIndex.open(db)
    assert ix.stats()["images_done"] == 0 and ix.index.ntotal == 0
    ix.close()
    assert_consistent(db)


def test_index_says_which_indexed_photos_are_gone(tmp_path):
    """A re-run over a folder whose photos were deleted says so and what removes them,
    rather than leaving an index that still answers with them in silence."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"]
    runner = CliRunner()
    assert "are gone" not in runner.invoke(app, args).output
    (photos / "sub" / "coffee.png").unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "1 indexed photo(s) under these folders are gone" in again.output
    assert "coffee.png: missing" in again.output and "usesearch prune --db" in again.output
    pruned = runner.invoke(app, [*args, "--prune"])
    assert pruned.exit_code == 0 and "pruned 1 image" in pruned.output and "under these folders" not in pruned.output
    assert SegmentIndex.open(tmp_path / "db").stats()["images_done"] == 1


def test_index_prune_of_an_emptied_folder_prunes_it_and_a_new_index_of_one_is_refused(tmp_path):
    """No photo under the folders given: a new index is refused (a wrong path, a disk not
    mounted); an existing one's folder may have been emptied, and --prune reaches the
    prune's own guard, which names the command that removes them."""
    photos = write_photos(tmp_path / "photos", NAMES[:1])
    (tmp_path / "keep").mkdir()
    write_photos(tmp_path / "keep", NAMES[1:2])
    db = tmp_path / "db"
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["index", str(photos), str(tmp_path / "keep"), "--db", str(db), "--preset", "tiny"]
        ).exit_code
        == 0
    )
    (photos / "astronaut.png").unlink()
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--prune"])
    said = " ".join(result.output.split())  # the prune's own guard, naming its command, not "no photo under"
    assert result.exit_code == 2 and f"`usesearch prune {photos} --db {db} --force` removes them" in said, said
    forced = runner.invoke(app, ["prune", str(photos), "--db", str(db), "--force"])
    assert forced.exit_code == 0 and "1 image removed" in forced.output, forced.output
    refused = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "new"), "--preset", "tiny"])
    assert refused.exit_code == 2 and "no photo under" in refused.output


def test_a_full_disk_during_prune_says_to_run_prune_again(tmp_path, monkeypatch):
    import errno

    from usesearch.indexer.writer import Writer

    photos = write_photos(tmp_path / "photos", NAMES)
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    (photos / "astronaut.png").unlink()

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Writer, "write", full)
    result = CliRunner().invoke(app, ["prune", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "run `usesearch prune` again (removals so far are kept)" in result.stderr


def test_a_prune_interrupted_by_ctrl_c_exits_130_keeping_its_removals(tmp_path, monkeypatch):
    """It said "interrupted" and exited 0, so `usesearch prune && next-step` went on."""
    import signal

    from usesearch.indexer.writer import Writer

    photos = write_photos(tmp_path / "photos", NAMES)
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    for photo in sorted(photos.rglob("*.png"))[:3]:
        photo.unlink()
    removing = Writer.remove_image

    calls = []

    def ctrl_c_on_the_second(self, image_id, **kwargs):
        calls.append(image_id)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return removing(self, image_id, **kwargs)

    monkeypatch.setattr(Writer, "remove_image", ctrl_c_on_the_second)
    result = CliRunner().invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 130, result.output
    assert "interrupted; removals so far are kept: " in result.output
    assert_consistent(db)
    monkeypatch.undo()
    again = CliRunner().invoke(app, ["prune", "--db", str(db)])
    assert again.exit_code == 0 and "finished" in again.output and "images removed" in again.output


def test_prune_forgets_the_noted_copies_no_run_needs_and_keeps_the_others(tmp_path, monkeypatch):
    """Rows of the `copies` table were never deleted: a copy since deleted, or one indexed
    under its own name once its photo was gone, kept its row for the index's life."""
    import shutil

    from sqlalchemy import select

    from usesearch.indexer import known_images
    from usesearch.indexer.folder import open_store
    from usesearch.indexer.maintenance import prune
    from usesearch.indexer.records import CopyRecord

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # stats of files just written count

    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    for name in ("x", "y", "z"):
        shutil.copy(photos / "astronaut.png", photos / f"{name}.png")
    (photos / "elsewhere").mkdir()
    shutil.copy(photos / "sub" / "coffee.png", photos / "elsewhere" / "coffee.png")
    db = tmp_path / "db"
    assert len(index_paths([photos], db, IndexOptions(**OPTS)).copies) == 4

    def noted() -> set[str]:
        store = open_store(db, None)
        try:
            with store.sessions() as s:
                return {os.path.basename(os.fsdecode(p)) for p in s.scalars(select(CopyRecord.fs_path))}
        finally:
            store.close()

    assert noted() == {"x.png", "y.png", "z.png", "coffee.png"}
    (photos / "x.png").unlink()  # a copy gone
    (photos / "astronaut.png").unlink()  # the photo: y.png takes its record (its note kept), z.png stays its copy
    outside = prune(db, [photos / "sub"], IndexOptions(**OPTS))  # another folder: nothing of these goes
    assert outside.copies_forgotten == 0 and noted() == {"x.png", "y.png", "z.png", "coffee.png"}
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert again.done == 0 and [os.path.basename(new) for _, new in again.moved] == ["y.png"], again
    result = CliRunner().invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "2 copies of indexed photos no longer noted" in result.output, (
        result.output
    )  # x.png; y.png
    assert noted() == {"z.png", "coffee.png"}
    assert_consistent(db)


def test_info_counts_the_fragments_ray_runs_cut_short_left_and_prune_removes_them(tmp_path, capsys):
    """A Ray run killed, then its photos deleted or changed: their fragments stayed in the
    index folder for good, counted nowhere."""
    from usesearch.indexer.fragments import FRAGMENTS, fragment_path, write_fragment

    photos, db = write_photos(tmp_path / "photos", ("coffee",)), tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    write_fragment(fragment_path(db, "ab" * 32), (4, 4), [], np.zeros((0, 8)))  # a photo deleted since
    (db / FRAGMENTS / ("cd" * 32 + ".attempts")).write_text("1")
    runner = CliRunner()
    info = json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).output)
    assert info["bytes_fragments"] > 0
    # A run without --ray computes such photos again, and says the files wait (it said nothing).
    rerun = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny"])
    assert f"1 photo computed by a Ray run and not committed wait in {db / FRAGMENTS} (a run cut short, " in (
        " ".join(rerun.output.split())
    ), rerun.output
    from usesearch.cli import index_output

    capsys.readouterr()
    index_output.say_fragments_waiting(str(db), on_ray=True, interrupted=True)  # (a Ray run cut short says it too)
    assert "the next `index --ray` run commits them without computing them again" in capsys.readouterr().out
    index_output.say_fragments_waiting(str(db), on_ray=True, interrupted=False)  # (a whole one's: changed photos)
    assert capsys.readouterr().out == ""
    result = runner.invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "fragments of Ray runs cut short" in result.output, result.output
    assert not list((db / FRAGMENTS).iterdir())
    assert json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).output)["bytes_fragments"] == 0


def test_a_photo_failing_since_indexed_is_pruned_only_while_it_still_fails(tmp_path):
    """A photo indexed, then failing at a re-run (corrupt mid-copy, a read error) keeps
    its segments. `prune` removed it even once it read again; now it reads it first.
    `index --prune` leaves to `prune` what the same run just kept, and says so."""
    photos = write_photos(tmp_path / "photos", NAMES)
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(preset="tiny"))  # the CLI's defaults below
    chelsea, coffee = photos / "sub" / "chelsea.png", photos / "coffee.png"
    saved = chelsea.read_bytes()
    for photo in (chelsea, coffee):
        photo.write_bytes(b"garbage, not a picture any more\n")
    runner = CliRunner()
    args = ["index", str(photos), "--db", str(db), "--preset", "tiny"]
    rerun = runner.invoke(app, [*args, "--prune"])
    said = " ".join(rerun.output.split())
    assert rerun.exit_code == 0 and "pruned 0 images" in said, rerun.output
    assert f"2 photo(s) indexed before fail to read now and keep their segments: `usesearch prune --db {db}`" in said
    assert "under these folders are gone" not in said, said  # the run's gone-line counts no photo it just kept
    before = segment_table(db)
    chelsea.write_bytes(saved)  # repaired, not yet indexed again: it reads, so it stays
    result = runner.invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "1 image removed" in result.output, result.output
    kept = {os.path.basename(r[0]) for r in segment_table(db)}
    assert "chelsea.png" in kept and "coffee.png" not in kept and len(segment_table(db)) < len(before)
    assert_consistent(db)


def test_prune_says_the_annotations_that_go_with_their_photos(tmp_path):
    """A labelled photo pruned took its annotations with it, and nothing said so nor how
    to get them back once the photo returns."""
    from tests.test_coco_index import write_coco
    from usesearch.indexer.coco_index import index_coco

    photos, db = write_photos(tmp_path / "photos", ("rocket", "coffee")), tmp_path / "db"
    index_coco([photos], write_coco(tmp_path / "train.json", photos, ["rocket.png"], 1), db, IndexOptions(**OPTS))
    index_paths([photos], db, IndexOptions(**OPTS))
    (photos / "rocket.png").unlink()
    result = CliRunner().invoke(app, ["prune", "--db", str(db)])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 image removed" in said, result.output
    assert "2 annotations (2 of split 'train') went with their photos: `usesearch index PATHS --coco FILE" in said
    assert_consistent(db)
