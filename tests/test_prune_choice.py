"""What prune chooses to remove: everything gone is refused without --force (an unmounted
disk must not empty an index), --dry-run lists its choice with why, removing nothing, and
a gone photo a noted copy still holds moves onto that copy."""

from typer.testing import CliRunner

import usesearch.indexer.embeddings as embeddings
from tests.helpers import OPTS, assert_consistent, segment_table, write_photos
from tests.test_index_scale import synthetic_index
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths, reindex


def test_a_small_index_whose_files_are_all_gone_is_refused_too(tmp_path):
    """However few the photos, all of them gone looks like an unmounted disk."""
    synthetic_index(tmp_path / "db", n=4, dim=16, images=2)  # paths under /a/: none exist here
    result = CliRunner().invoke(app, ["prune", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "all 2 files the index records are gone" in result.output
    assert SegmentIndex.open(tmp_path / "db").stats()["images_done"] == 2


def test_everything_gone_is_refused_without_force(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", 50)  # 6 chunk files
    synthetic_index(tmp_path / "db", n=300, dim=16, images=30)  # paths under /a/: none exist here
    reindex(tmp_path / "db")
    runner = CliRunner()
    result = runner.invoke(app, ["prune", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "is the disk mounted" in result.output and "Traceback" not in result.output
    said = " ".join(result.output.split())  # the command to run, as it can be run
    assert f"`usesearch prune --db {tmp_path / 'db'} --force` removes them" in said, said
    scoped = runner.invoke(app, ["prune", "/a", "--db", str(tmp_path / "db")])
    assert "all 30 files the index records under /a are gone" in " ".join(scoped.output.split()), scoped.output
    elsewhere = runner.invoke(app, ["prune", str(tmp_path), "--db", str(tmp_path / "db")])
    assert elsewhere.exit_code == 0 and "no indexed photo lies under" in elsewhere.output, elsewhere.output
    typo = runner.invoke(app, ["prune", str(tmp_path / "nope"), "--db", str(tmp_path / "db")])  # it exited 0
    said = " ".join(typo.output.split())
    assert typo.exit_code == 2 and f"lies under {tmp_path / 'nope'}, and nothing is there: a typo?" in said, said
    assert SegmentIndex.open(tmp_path / "db").stats()["images_done"] == 30
    result = runner.invoke(app, ["prune", "--db", str(tmp_path / "db"), "--force"])
    assert result.exit_code == 0 and "30 images removed (300 segments)" in result.output, result.output
    # The embedding files give their disk back: every closed chunk is gone, the newest stays.
    assert "embedding files: 0.01 MiB given back" in result.output, result.output  # 5 x 50 rows x 32 bytes
    assert sorted(p.name for p in (tmp_path / "db" / "embeddings").iterdir()) == [
        "chunk-000005.f16",
        "chunk-000005.sum",
        "index-id",
    ]
    assert_consistent(tmp_path / "db")


def test_prune_dry_run_lists_what_would_go_and_why_and_removes_nothing(tmp_path):
    """`info` counted files gone, but nothing said which, short of pruning a copy."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    before = segment_table(db)
    (photos / "astronaut.png").unlink()
    (db / "fragments").mkdir()  # a Ray run's, cut short: prune removes it (its dry run said nothing of it)
    (db / "fragments" / f"{'0' * 64}.npz").write_bytes(b"\0" * 2**20)
    dry = CliRunner().invoke(app, ["prune", "--db", str(db), "--dry-run"])
    lines = dry.output.strip().splitlines()
    assert dry.exit_code == 0 and lines == [
        f"would remove {photos / 'astronaut.png'} (missing)",
        "would remove fragments of Ray runs cut short: 1.00 MiB",
        "dry run: 1 of 3 images would be removed; nothing was",
    ], dry.output
    assert (db / "fragments" / f"{'0' * 64}.npz").is_file()
    assert segment_table(db) == before
    for name in ("chelsea.png", "sub/chelsea.png", "coffee.png"):
        (photos / name).unlink(missing_ok=True)
    every = CliRunner().invoke(app, ["prune", "--db", str(db), "--dry-run"])
    assert "dry run: 3 of 3 images would be removed; nothing was (every file is gone" in every.output, every.output
    assert segment_table(db) == before
    done = CliRunner().invoke(app, ["prune", "--db", str(db), "--force"])
    assert done.exit_code == 0 and "3 images removed" in done.output and segment_table(db) == []


def test_prune_moves_a_gone_photo_onto_a_copy_a_run_noted_keeping_its_segments(tmp_path, monkeypatch):
    """`rm astronaut.png` where a run had noted copy.png as its copy: prune removed the
    photo with its segments (a labelled photo's annotations too), and the next run
    embedded the copy again. The record now moves onto the copy, as that run would move it."""
    import os
    import shutil

    from usesearch.indexer import known_images
    from usesearch.indexer.folder import open_store

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos, db = write_photos(tmp_path / "photos", ("astronaut", "coffee")), tmp_path / "db"
    shutil.copy(photos / "astronaut.png", photos / "copy.png")
    assert len(index_paths([photos], db, IndexOptions(**OPTS)).copies) == 1

    def segments() -> dict[str, list[int]]:
        store = open_store(db, read_only=True)
        try:
            return {os.path.basename(p): store.image_segment_ids(i) for i, _, p in store.image_files()}
        finally:
            store.close()

    before = segments()["astronaut.png"]
    (photos / "astronaut.png").unlink()
    runner = CliRunner()
    dry = runner.invoke(app, ["prune", "--db", str(db), "--dry-run"])
    assert "would move " + str(photos / "astronaut.png") + " onto its copy " + str(photos / "copy.png") in dry.output
    assert "0 of 2 images would be removed, 1 moved onto a copy of theirs; nothing was" in dry.output, dry.output
    result = runner.invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "finished: 0 images removed (0 segments)" in result.output, result.output
    assert "1 gone photo(s) moved onto a copy of theirs, their segments kept" in result.output, result.output
    assert segments() == {"copy.png": before, "coffee.png": segments()["coffee.png"]} and before
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert (again.done, again.skipped, again.moved, again.copies) == (0, 2, [], []), again
    assert_consistent(db)


def test_a_dry_run_says_what_prune_does_where_two_gone_photos_share_one_copy(tmp_path, monkeypatch):
    """Two records of one content (as `index --coco` keeps photos under their own names)
    and one copy noted: the dry run gave the copy to both ("0 would be removed"); prune
    moved one onto it and removed the other."""
    import os
    import shutil

    from sqlalchemy import update

    from usesearch.indexer import known_images
    from usesearch.indexer.folder import open_store
    from usesearch.indexer.maintenance import prune
    from usesearch.indexer.records import ImageRecord

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos, db = write_photos(tmp_path / "photos", ("astronaut", "coffee", "rocket")), tmp_path / "db"
    shutil.copy(photos / "astronaut.png", photos / "copy.png")
    assert len(index_paths([photos], db, IndexOptions(**OPTS)).copies) == 1
    store = open_store(db)
    try:
        ids = {os.path.basename(p): i for i, _, p in store.image_files()}
        content = store.image(ids["astronaut.png"]).sha256
        with store.sessions.begin() as s:
            s.execute(update(ImageRecord).where(ImageRecord.id == ids["rocket.png"]).values(sha256=content))
    finally:
        store.close()
    for name in ("astronaut.png", "rocket.png"):
        (photos / name).unlink()
    planned = prune(db, None, IndexOptions(**OPTS), dry_run=True)
    done = prune(db, None, IndexOptions(**OPTS))
    named = lambda pairs: [(os.path.basename(a), os.path.basename(b)) for a, b in pairs]  # noqa: E731
    assert named(planned.would_move) == named(done.moved) == [("astronaut.png", "copy.png")], (planned, done)
    assert [os.path.basename(p) for p, _ in planned.would_remove] == ["rocket.png"] and done.images_removed == 1
