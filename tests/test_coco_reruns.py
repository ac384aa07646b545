"""A labelled dataset indexed again and again (``usesearch index IMAGES --coco FILE.json``):
reruns that follow an edited file, read only what changed, survive a kill and a failing
photo; every fault of the dataset recorded in one line while the rest is indexed; folders
holding none of its photos and options that do not go with it refused."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, segment_table, write_photos
from tests.test_coco_index import CATEGORIES, TINY, _box, write_coco
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


def test_each_fault_of_a_dataset_is_recorded_in_one_line_and_the_rest_indexed(tmp_path):
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    w, h = Image.open(photos / "chelsea.png").size
    good = rle.encode(_box(h, w, 2, 2, 20, 20))
    short = {"size": [h, w], "counts": [5, 5]}  # runs stop short: pycocotools would read past them
    images = [
        {"id": 1, "file_name": "chelsea.png", "height": h, "width": w},
        {"id": 2, "file_name": "gone.png", "height": 10, "width": 10},
        {"id": 3, "file_name": "sub/coffee.png", "height": 1, "width": 1},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": good},
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": good},  # duplicate id
        {"id": 2, "image_id": 1, "category_id": 9, "segmentation": good},  # unknown category
        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": short},  # broken RLE
        {"id": 4, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, float("nan"), 4, 5, 6]]},  # broken polygon
        {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3]]},  # broken polygon
        {"id": 6, "image_id": 1, "category_id": 1, "segmentation": rle.encode(np.zeros((h, w), bool))},  # empty
        {"id": 7, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},  # missing photo
        {"id": 8, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},  # wrong size
        {"id": 9, "image_id": 42, "category_id": 1, "segmentation": good},  # no such image entry
        {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 30, 2, 30, 30]]},
        {"id": 2**63, "image_id": 1, "category_id": 1, "segmentation": good},  # past BIGINT: the run stopped
        {"id": "11", "image_id": 1, "category_id": 1, "segmentation": good},  # said without where it is
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": good, "iscrowd": "0"},  # read as a crowd
        {"id": 13, "image_id": 1, "category_id": 1, "segmentation": [[4, 4, 30, 4, 30, 30]], "iscrowd": None},
    ]
    coco = tmp_path / "mixed.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES[:1]}))
    db = tmp_path / "db"
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(coco), *TINY])
    assert result.exit_code == 0, result.output
    assert "3 annotations indexed from 1 photos" in result.output
    ix = SegmentIndex.open(db)
    kept = {r.annotation_id: r.iscrowd for r in ix.store.rows(ix.store.segment_ids()).values()}
    assert kept == {1: False, 10: False, 13: False}  # a null iscrowd is not said: no crowd, as when missing
    problems = {(p.annotation_id, p.kind) for p in ix.store.annotation_problems()}
    assert problems == {
        (1, "duplicate id"),
        (2, "unknown category"),
        (3, "broken mask"),
        (4, "broken mask"),
        (5, "broken mask"),
        (6, "empty mask"),
        (None, "photo missing"),
        (None, "size mismatch"),
        (9, "unknown image"),
        (None, "broken annotation"),
        (12, "broken annotation"),
    }
    listed = runner.invoke(app, ["failures", "--db", str(db)])
    lines = listed.output.strip().splitlines()
    assert len(lines) == 12 and all("\t[mixed] " in line for line in lines)
    assert any("annotations[12]: id, image_id and category_id must be whole numbers (id '11')" in x for x in lines)
    assert any("annotation 12\t[mixed] broken annotation: iscrowd must be 0 or 1, not '0'" in x for x in lines)
    assert any(re.match(r"gone.png\s+\[mixed\] photo missing: no such photo", line) for line in lines)
    assert any(
        re.match(r"chelsea.png annotation 3\s+\[mixed\] broken mask: the RLE's runs do not cover", line)
        for line in lines
    )
    as_json = json.loads(runner.invoke(app, ["failures", "--db", str(db), "--json"]).stdout)
    assert as_json["files"] == [] and len(as_json["annotations"]) == 12
    assert {(a["annotation_id"], a["kind"], a["split"]) for a in as_json["annotations"]} == {
        (p.annotation_id, p.kind, "mixed") for p in ix.store.annotation_problems()
    }
    # A re-run records the same problems once, and embeds nothing again.
    report = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert report.segments == 0 and len(report.problems) == 12
    assert len(ix.store.annotation_problems()) == 12


@pytest.mark.parametrize(
    "args, why",
    [
        (["--split", "val"], "--split names a labelled dataset's split: it goes with --coco FILE.json\n"),
        (["--split", "val", "--coco", "{coco}", "--masker", "coco"], "goes with --coco FILE.json, not --masker coco"),
        (["--coco", "{coco}", "--points-per-side", "8"], "--points-per-side: SAM's settings need a masker run"),
    ],
)
def test_options_that_do_not_go_with_a_labelled_dataset_are_refused(tmp_path, args, why):
    """Each said in its own case's words (--split alone was told "not --masker coco")."""
    photos = write_photos(tmp_path / "photos", ("coffee",))
    coco = write_coco(tmp_path / "val.json", photos, ["coffee.png"], 1)
    args = [a.format(coco=coco) for a in args]
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), *args, *TINY])
    assert result.exit_code == 2 and why in result.stderr, result.output
    assert not (tmp_path / "db").exists()


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


def test_a_photo_renamed_with_its_entry_holds_its_annotations_once(tmp_path):
    """A photo renamed on disk and in the COCO file, its annotation ids unchanged: its
    old record kept its copies, so the split held each of those annotations twice
    (once on a path gone). The file names one photo for each: the other copy goes."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/coffee.png"], 1)
    db = tmp_path / "db"
    index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    (photos / "sub" / "coffee.png").rename(photos / "sub" / "coffee-renamed.png")
    coco.write_text(coco.read_text().replace("sub/coffee.png", "sub/coffee-renamed.png"))
    again = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert again.removed == 2
    ix = SegmentIndex.open(db)
    held = [(r.annotation_id, os.path.basename(r.image_path)) for r in ix.store.rows(ix.store.segment_ids()).values()]
    ix.close()
    assert sorted(held) == [
        (1, "chelsea.png"),
        (2, "chelsea.png"),
        (3, "coffee-renamed.png"),
        (4, "coffee-renamed.png"),
    ]
    index_coco([photos], coco, tmp_path / "fresh", IndexOptions(preset="tiny"))
    assert segment_table(db) == segment_table(tmp_path / "fresh")


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
    assert (report.relabelled, report.removed, report.segments) == (2, 2, 1)
    after = {r.annotation_id: r for r in ix.store.rows(ix.store.segment_ids()).values()}
    assert sorted(after) == [1, 2, 3]
    assert (after[1].id, after[1].category) == (before[1].id, "cup") and not after[2].iscrowd
    w, h = Image.open(photos / "sub/rocket.png").size
    redrawn = rle.checked([[1, 1, 20, 1, 20, 20]], h, w)
    assert after[3].id != before[3].id and after[3].rle_counts == redrawn["counts"] != before[3].rle_counts
    assert [h.segment_id for h in ix.query("a cup", k=5, filters=SearchFilters(label="cup"))] == [after[1].id]
    again = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    assert (again.relabelled, again.removed, again.segments, again.skipped) == (0, 0, 0, 2)


def test_two_files_indexed_as_one_split_keep_each_others_annotations(tmp_path):
    """Also on a photo both files annotate (its stored annotations this file lacks are
    the other's), and both ways round; an id the split already holds from the other
    file is refused as a problem (the audit and failures name annotations by split and
    id), never put in place of the other file's."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    first = write_coco(tmp_path / "part1.json", photos, ["chelsea.png", "sub/rocket.png"], 1)  # ids 1-4
    second = write_coco(tmp_path / "part2.json", photos, ["sub/rocket.png"], 10)  # ids 10, 11, a shared photo
    db = tmp_path / "db"
    index_coco([photos], first, db, IndexOptions(preset="tiny"), split="train")
    report = index_coco([photos], second, db, IndexOptions(preset="tiny"), split="train")
    assert report.segments == 2 and report.removed == 0 and report.shared_with == [str(first.resolve())]
    again = index_coco([photos], first, db, IndexOptions(preset="tiny"), split="train")
    assert (again.segments, again.removed, again.skipped) == (0, 0, 2)
    ix = SegmentIndex.open(db)
    assert ix.store.label_summary()["annotations_by_class"] == {"train": {"cat": 2, "rocket": 4}}
    ids = lambda: sorted(ix.store.annotation_photos("train"))  # noqa: E731
    assert ids() == [1, 2, 3, 4, 10, 11]
    clashing = write_coco(tmp_path / "part3.json", photos, ["chelsea.png", "sub/rocket.png"], 3)  # ids 3-6
    third = index_coco([photos], clashing, db, IndexOptions(preset="tiny"), split="train")
    assert sum("annotation id 3 is already in split 'train' on another photo" in p for p in third.problems) == 1
    assert sum("already in split" in p for p in third.problems) == 2 and third.removed == 0
    assert ids() == [1, 2, 3, 4, 5, 6, 10, 11]  # 5 and 6 are new; 3 and 4 stay part1's
    # Each file's problems are its own: part1 indexed again records its own afresh, and
    # part3's two stay (they were all deleted, and `failures` said nothing was refused).
    index_coco([photos], first, db, IndexOptions(preset="tiny"), split="train")
    assert sorted(p.coco_file for p in ix.store.annotation_problems()) == [str(clashing.resolve())] * 2
    ix.close()


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
    resumed = index_coco([photos], coco, killed, IndexOptions(preset="tiny"))
    ix = SegmentIndex.open(killed)
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


def test_reading_a_coco_file_keeps_one_entry_a_photo_and_the_first_of_each_id(tmp_path):
    from usesearch.io.coco_dataset import read_coco

    poly = [[1, 1, 5, 1, 5, 5]]
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 8, "width": 8},
            {"id": 2, "file_name": "./a.png", "height": 8, "width": 8},  # the same photo again
            {"id": 1, "file_name": "b.png"},  # a repeated image id: the first is kept
            {"file_name": "c.png"},  # no id
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": poly},
            {"id": 11, "image_id": 2, "category_id": 1, "segmentation": poly, "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 1},  # no segmentation
            {"id": "13", "image_id": 2, "category_id": 1, "segmentation": poly},  # an id that is not a number
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}, {"name": "nameless"}],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(coco))
    dataset = read_coco(path)
    assert [(e.id, e.file_name, [(a.id, a.category, a.iscrowd) for a in e.annotations]) for e in dataset.images] == [
        (1, "a.png", [(10, "cat", False), (11, "cat", True)])
    ]
    assert sorted(((f, a, e.kind) for f, a, e in dataset.problems), key=str) == sorted(
        [
            (None, None, "duplicate id"),  # category 1 again
            (None, None, "broken annotation"),  # the nameless category
            ("b.png", None, "duplicate id"),
            (None, None, "broken annotation"),  # the image entry without an id
            (None, 12, "broken mask"),
            (None, None, "broken annotation"),  # the annotation whose id is a string
            ("./a.png", None, "duplicate id"),
        ],
        key=str,
    )


def test_a_repeated_entry_giving_its_photo_another_size_adds_no_annotation(tmp_path):
    """Annotations drawn on another size of the photo would be decoded at the first
    entry's size and sit off its pixels: left out, said as a size mismatch."""
    from usesearch.io.coco_dataset import read_coco

    poly = [[1, 1, 5, 1, 5, 5]]
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 8, "width": 8},
            {"id": 2, "file_name": "a.png", "height": 16, "width": 16},  # the same file at another size
            {"id": 3, "file_name": "b.png"},  # unsized: the repeat's size is the file's word on it
            {"id": 4, "file_name": "b.png", "height": 6, "width": 9},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": poly},
            {"id": 11, "image_id": 2, "category_id": 1, "segmentation": poly},
            {"id": 12, "image_id": 3, "category_id": 1, "segmentation": poly},
            {"id": 13, "image_id": 4, "category_id": 1, "segmentation": poly},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(coco))
    dataset = read_coco(path)
    kept = [(e.file_name, e.height, e.width, [a.id for a in e.annotations]) for e in dataset.images]
    assert kept == [("a.png", 8, 8, [10]), ("b.png", 6, 9, [12, 13])]
    said = {(f, e.kind): str(e) for f, _, e in dataset.problems}
    assert set(said) == {("a.png", "size mismatch"), ("b.png", "duplicate id")}
    assert "at 8x8 and 16x16: the annotations of 2 are left out" in said[("a.png", "size mismatch")]


def test_a_folder_holding_none_of_the_files_photos_is_refused_before_anything_is_made(tmp_path):
    """`index EMPTY --coco FILE --db NEW` (a wrong folder, a disk not mounted) made an
    index bound to the run's model, recorded every photo as missing and exited 0, where
    a plain `index EMPTY` is refused. Refused in one line, nothing made, also beside an
    existing index (left as it was) and on Ray (before Ray starts); a folder holding
    some of them still indexes those."""
    from usesearch.errors import UsesearchError
    from usesearch.indexer.coco_ray import index_coco_ray

    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    (tmp_path / "empty").mkdir()
    others = write_photos(tmp_path / "others", ("coffee",))
    runner = CliRunner()
    for folder in (tmp_path / "empty", others):
        result = runner.invoke(app, ["index", str(folder), "--db", str(tmp_path / "new"), "--coco", str(coco), *TINY])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "none of the 2 annotated photo(s) val.json names is under" in said, said
        assert not (tmp_path / "new").exists()
        with pytest.raises(UsesearchError, match="none of the 2 annotated photo"):
            index_coco_ray([folder], coco, tmp_path / "new", IndexOptions(preset="tiny"))
        assert not (tmp_path / "new").exists()
    db = tmp_path / "db"
    ok = runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(coco), *TINY])
    assert ok.exit_code == 0, ok.output
    catalog = (db / DB_FILE).read_bytes()
    result = runner.invoke(app, ["index", str(tmp_path / "empty"), "--db", str(db), "--coco", str(coco)])
    assert result.exit_code == 2 and (db / DB_FILE).read_bytes() == catalog, result.output
    (photos / "sub" / "rocket.png").unlink()  # one of the two: indexed, the other recorded as missing
    some = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "some"), "--coco", str(coco), *TINY])
    assert some.exit_code == 0 and "problem: sub/rocket.png: photo missing" in some.output, some.output


def test_empty_folders_are_refused_without_looking_up_each_photo(tmp_path, monkeypatch):
    """A disk not mounted: the folder is empty, and each of a file's 10^6 photos was
    looked up (a stat each, on a network share) before the refusal."""
    import usesearch.indexer.coco_plan as coco_plan
    from usesearch.errors import UsesearchError

    photos = write_photos(tmp_path / "photos", ("chelsea",))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png"], 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "mount").mkdir()
    looked_up: list = []
    real = coco_plan.photo_path
    monkeypatch.setattr(coco_plan, "photo_path", lambda *args: looked_up.append(args) or real(*args))
    for folders in ([tmp_path / "empty"], [tmp_path / "empty", tmp_path / "mount"]):
        with pytest.raises(UsesearchError, match="none of the 1 annotated photo"):
            index_coco(folders, coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert not looked_up and not (tmp_path / "db").exists()
    with pytest.raises(UsesearchError, match="none of the 1 annotated photo"):  # a folder holding others: looked up
        index_coco([write_photos(tmp_path / "others", ("coffee",))], coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert looked_up
