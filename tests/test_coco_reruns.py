"""A labelled dataset indexed again and again (``usesearch index IMAGES --coco FILE.json``):
reruns that follow an edited file, read only what changed, survive a kill and a failing
photo, keep a renamed photo's annotations once (splits: test_coco_splits.py; the
dataset's faults and refusals: test_coco_faults.py)."""

import json
import os

from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, audit_cli, segment_table, write_photos
from tests.test_coco_index import _box, write_coco
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths
from usesearch.indexer.coco_index import index_coco
from usesearch.indexer.folder import DB_FILE
from usesearch.masks import rle


def test_a_photo_failing_on_a_rerun_keeps_its_segments_and_a_repair_keeps_its_sound_annotations(tmp_path):
    """Nothing indexed is lost to a failure: a re-run that cannot read an indexed photo
    (here a lower IndexOptions.max_bytes) notes the failure on it and keeps its segments, and
    ``--repair`` of a damaged photo re-makes its proposals and drops only the
    annotations whose own rows are damaged, which ``index --coco`` embeds again."""
    from sqlalchemy import select

    from tests.helpers import assert_consistent
    from usesearch.indexer.records import ImageRecord, SegmentRecord

    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    db = tmp_path / "db"
    first = index_paths([photos], db, IndexOptions(**OPTS))
    index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    whole = {"proposal": first.segments, "annotation": 4}
    for photo in photos.rglob("*.png"):  # touched: read again (unchanged files are skipped unread)
        os.utime(photo)
    unreadable = index_paths([photos], db, IndexOptions(**OPTS, max_bytes=100))
    assert unreadable.failed == 2 and all(
        why.endswith("(indexed before: its segments are kept)") for _, why in unreadable.failures
    )
    ix = SegmentIndex.open(db)
    assert ix.store.label_summary()["segments_by_source"] == whole and ix.index.ntotal == sum(whole.values())
    ix.close()
    listed = json.loads(CliRunner().invoke(app, ["failures", "--db", str(db), "--json"]).stdout)
    assert [(f["kept"], f["error"]) for f in listed["files"]] == [(True, "ImageReadError")] * 2
    assert index_paths([photos], db, IndexOptions(**OPTS)).skipped == 2  # read whole again: the notes are cleared
    assert json.loads(CliRunner().invoke(app, ["failures", "--db", str(db), "--json"]).stdout)["files"] == []
    ix = SegmentIndex.open(db)  # one annotation row and one proposal row of chelsea damaged
    with ix.store.sessions() as s:
        rows = s.execute(
            select(SegmentRecord.source, SegmentRecord.annotation_id, SegmentRecord.vec_chunk, SegmentRecord.vec_row)
            .join(ImageRecord)
            .where(ImageRecord.path.like("%chelsea.png"))
            .order_by(SegmentRecord.id)
        ).all()
    dim = ix.info.dim
    ix.close()
    annotation = next(r for r in rows if r.source == "annotation")
    proposal = next(r for r in rows if r.source == "proposal")
    for row in (annotation, proposal):
        chunk = db / "embeddings" / f"chunk-{row.vec_chunk:06d}.f16"
        data = bytearray(chunk.read_bytes())
        data[row.vec_row * 2 * dim + 3] ^= 0x5A
        chunk.write_bytes(bytes(data))
    repaired = index_paths([photos], db, IndexOptions(**OPTS, repair=True))
    assert [p.rsplit("/", 1)[1] for p in repaired.repaired] == ["chelsea.png"] and repaired.annotations_dropped == 1
    ix = SegmentIndex.open(db)
    assert ix.store.label_summary()["segments_by_source"] == {"proposal": first.segments, "annotation": 3}
    ix.close()
    again = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert again.segments == 1  # the dropped annotation alone is embedded again
    ix = SegmentIndex.open(db)
    assert ix.store.label_summary()["segments_by_source"] == whole
    ix.close()
    assert_consistent(db)


def test_a_rerun_reads_only_the_photos_that_changed_or_gained_a_mask(tmp_path, monkeypatch):
    """``index --coco`` again over the same photos: each was read and hashed (30 min
    at 10^6 photos) though its stat was the one recorded. Now a photo is read only where
    its file changed, or a new mask needs its pixels; the index is as a full re-read's."""
    import usesearch.indexer.coco_index as coco_index
    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # the photos were written just now: their stats kept all the same
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee", "rocket"))
    names = ["chelsea.png", "sub/coffee.png", "rocket.png"]
    coco = write_coco(tmp_path / "val.json", photos, names, 1)
    first = index_coco([photos], coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert first.done == 3
    read, real = [], coco_index.read_bytes
    monkeypatch.setattr(coco_index, "read_bytes", lambda p, *a: read.append(os.path.basename(p)) or real(p, *a))
    again = index_coco([photos], coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert read == [] and again.skipped == 3 and again.done == 0
    Image.open(photos / "rocket.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "rocket.png")
    data = json.loads(coco.read_text())
    data["annotations"][0]["segmentation"] = rle.encode(
        _box(*(data["images"][0][k] for k in ("height", "width")), 5, 5, 9, 9)
    )
    coco.write_text(json.dumps(data))  # chelsea's first mask is new: its pixels are needed
    changed = index_coco([photos], coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert sorted(read) == ["chelsea.png", "rocket.png"] and changed.done == 2 and changed.skipped == 1
    read.clear()
    assert index_coco([photos], coco, tmp_path / "db", IndexOptions(preset="tiny")).skipped == 3 and read == []
    monkeypatch.setattr(coco_index, "read_bytes", real)
    fresh = index_coco([photos], coco, tmp_path / "fresh", IndexOptions(preset="tiny"))
    assert fresh.done == 3
    assert segment_table(tmp_path / "db") == segment_table(tmp_path / "fresh")


def test_a_photo_repaired_after_a_failed_rerun_loses_its_failure(tmp_path, monkeypatch):
    """A photo damaged (its failure noted, its segments kept), then its bytes put back:
    the next ``index --coco`` found nothing to change and returned with the failure
    still listed, so every later run read it again."""
    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    db = tmp_path / "db"
    index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    original = (photos / "sub" / "rocket.png").read_bytes()
    (photos / "sub" / "rocket.png").write_bytes(original[: len(original) // 3])
    assert index_coco([photos], coco, db, IndexOptions(preset="tiny")).failed == 1
    (photos / "sub" / "rocket.png").write_bytes(original)
    repaired = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert repaired.failed == 0 and repaired.skipped == 2
    ix = SegmentIndex.open(db)
    assert ix.store.failures() == []
    ix.close()


def test_a_photo_renamed_with_its_entry_takes_its_record_along(tmp_path):
    """A photo renamed on disk and in the COCO file, its annotation ids unchanged: the
    `--coco` run made it a new record, embedded its annotations again (its old record
    kept copies: the split held each twice) and left its proposals on the path gone
    (found twice by every search until `prune`; the next masker run embedded them
    again). The record follows the photo, as a masker run's rename does."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/coffee.png"], 1)
    db = tmp_path / "db"
    index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    proposals = index_paths([photos], db, IndexOptions(**OPTS)).segments
    before = segment_table(db)
    (photos / "sub" / "coffee.png").rename(photos / "sub" / "coffee-renamed.png")
    coco.write_text(coco.read_text().replace("sub/coffee.png", "sub/coffee-renamed.png"))
    again = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert (again.removed, again.segments) == (0, 0)
    assert again.moved == [(str(photos / "sub" / "coffee.png"), str(photos / "sub" / "coffee-renamed.png"))]
    ix = SegmentIndex.open(db)
    rows = ix.store.rows(ix.store.segment_ids()).values()
    held = [(r.annotation_id, os.path.basename(r.image_path)) for r in rows if r.source == "annotation"]
    assert {os.path.basename(r.image_path) for r in rows} == {"chelsea.png", "coffee-renamed.png"}
    ix.close()
    assert sorted(held) == [
        (1, "chelsea.png"),
        (2, "chelsea.png"),
        (3, "coffee-renamed.png"),
        (4, "coffee-renamed.png"),
    ]
    renamed = [(name.replace("coffee.png", "coffee-renamed.png"), *rest) for name, *rest in before]
    assert segment_table(db) == sorted(renamed)
    assert index_paths([photos], db, IndexOptions(**OPTS)).skipped == 2 and proposals


def test_a_rerun_follows_an_edited_file_relabelled_reshaped_and_removed_annotations(tmp_path):
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    db = tmp_path / "db"
    index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    ix = SegmentIndex.open(db)
    before = {r.annotation_id: r for r in ix.store.rows(ix.store.segment_ids()).values()}
    edited = json.loads(coco.read_text())
    anns = {a["id"]: a for a in edited["annotations"]}
    anns[1]["category_id"] = 3  # a label fixed after review: no new embedding
    anns[2]["iscrowd"] = 0
    anns[3]["segmentation"] = [[1, 1, 20, 1, 20, 20]]  # a mask redrawn: embedded again
    edited["annotations"] = [a for a in edited["annotations"] if a["id"] != 4]  # an annotation deleted
    coco.write_text(json.dumps(edited))
    report = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    # The redrawn mask is counted as such (it was counted among the removed).
    assert (report.relabelled, report.removed, report.redrawn, report.segments) == (2, 1, 1, 1)
    after = {r.annotation_id: r for r in ix.store.rows(ix.store.segment_ids()).values()}
    assert sorted(after) == [1, 2, 3]
    assert (after[1].id, after[1].category) == (before[1].id, "cup") and not after[2].iscrowd
    w, h = Image.open(photos / "sub/rocket.png").size
    redrawn = rle.checked([[1, 1, 20, 1, 20, 20]], h, w)
    assert after[3].id != before[3].id and after[3].rle_counts == redrawn["counts"] != before[3].rle_counts
    assert [h.segment_id for h in ix.query("a cup", k=5, filters=SearchFilters(label="cup"))] == [after[1].id]
    again = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert (again.relabelled, again.removed, again.segments, again.skipped) == (0, 0, 0, 2)


def test_kill_dash_nine_mid_run_then_resume_equals_one_clean_run(tmp_path):
    from tests.helpers import assert_consistent, kill_when, run_python, sqlite_count

    # Twelve photos (more work than commits can finish before the kill lands, even on a loaded machine).
    kinds = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
    photos = write_photos(tmp_path / "photos", kinds)
    write_photos(tmp_path / "photos" / "copy", kinds[::-1])
    names = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.png"))
    assert len(names) == 12
    coco = write_coco(tmp_path / "train.json", photos, names, 1)
    killed = tmp_path / "killed"
    code = (
        "import sys; from usesearch.indexer import IndexOptions; from usesearch.indexer.coco_index import index_coco; "
        "index_coco([sys.argv[1]], sys.argv[2], sys.argv[3], IndexOptions(preset='tiny'))"
    )
    proc = run_python(code, photos, coco, killed)
    count = "SELECT count(*) FROM segments WHERE source = 'annotation'"
    at_kill = kill_when(proc, lambda: sqlite_count(killed / DB_FILE, count), lambda n: n >= 2, 0)
    assert 2 <= at_kill < 2 * len(names)
    # The split holds part of the file: said by `info` (and the audit), which told nothing of it.
    shown = CliRunner().invoke(app, ["info", "--db", str(killed)])
    said = " ".join(shown.output.split())
    assert f"split 'train' from {coco}: an `index --coco` run stopped before its end" in said, said
    audit_cli(killed)
    assert f"split 'train' holds part of a pass of {coco}" in " ".join(audit_cli.output.split())
    resumed = index_coco([photos], coco, killed, IndexOptions(preset="tiny"))
    ix = SegmentIndex.open(killed)
    assert ix.store.unfinished_passes() == []
    got = sorted(
        (r.image_path, r.annotation_id, r.category, r.rle_counts)
        for r in ix.store.rows(ix.store.segment_ids()).values()
    )
    dataset = json.loads(coco.read_text())
    entries = {e["id"]: e for e in dataset["images"]}
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    expected = []  # what one clean run stores: each annotation once
    for a in dataset["annotations"]:
        entry = entries[a["image_id"]]
        mask = rle.checked(a["segmentation"], entry["height"], entry["width"])
        expected.append((str(photos / entry["file_name"]), a["id"], names[a["category_id"]], mask["counts"]))
    assert resumed.skipped >= 1 and got == sorted(expected)
    assert_consistent(killed)


def test_a_labelled_run_naming_another_masker_is_refused_before_it_saves_an_annotation(tmp_path):
    """`index --coco FILE --masker sam` on a felzenszwalb index saved the file's changes,
    then was refused at its masker run (exit 2: a script took it for nothing done)."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    dataset = json.loads(coco.read_text())
    dataset["annotations"] = dataset["annotations"][:1]
    coco.write_text(json.dumps(dataset))
    args = ["index", str(photos), "--db", str(db), "--coco", str(coco), "--masker", "sam"]
    refused = CliRunner().invoke(app, args)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "built with masker felzenszwalb" in said and "asks for sam." in said, said
    assert "finished" not in said
    assert SegmentIndex.open(db).store.label_summary()["annotations_by_split"] == {"train": 4}  # none removed
    # The same masker with another setting: refused before the file's changes are saved too.
    sam_db = tmp_path / "sam"
    index_paths([photos], sam_db, IndexOptions(preset="tiny", masker="sam", masker_options={"points_per_side": 4}))
    index_coco([photos], coco, sam_db, IndexOptions(preset="tiny"))
    dataset["annotations"] = []
    coco.write_text(json.dumps(dataset))
    other = [
        "index",
        str(photos),
        "--db",
        str(sam_db),
        "--coco",
        str(coco),
        "--masker",
        "sam",
        "--points-per-side",
        "8",
    ]
    refused = CliRunner().invoke(app, other)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "asks for sam (points_per_side=8)" in said and "finished" not in said, said
    assert SegmentIndex.open(sam_db).store.label_summary()["annotations_by_split"] == {"train": 1}


def test_a_photo_that_failed_is_not_read_again_by_the_next_labelled_run(tmp_path, monkeypatch):
    """A plain run skips a file that failed as it was; each `index --coco` run read it
    again, failed anew and counted one more attempt."""
    from usesearch.indexer import known_images
    from usesearch.indexer.folder import open_store

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # (a file written just now keeps its stat)
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    (photos / "chelsea.png").write_bytes((photos / "chelsea.png").read_bytes()[:200])  # cut short: fails
    db = tmp_path / "db"
    first = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert first.failed == 1 and first.done == 1
    again = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert (again.failed, again.failed_before, again.skipped) == (0, 1, 2), again
    args = ["index", str(photos), "--db", str(db), "--coco", str(coco), "--preset", "tiny"]
    said = " ".join(CliRunner().invoke(app, args).output.split())
    assert "1 of the 2 skipped failed in an earlier run, its content unchanged, and was not tried again" in said, said
    retried = index_coco([photos], coco, db, IndexOptions(preset="tiny", retry_failed=True))
    assert retried.failed == 1 and retried.failed_before == 0
    store = open_store(db, read_only=True)
    try:
        assert [r.attempts for r in store.failures()] == [2]  # the first run and the retry
    finally:
        store.close()
