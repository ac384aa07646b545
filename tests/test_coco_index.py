"""A labelled dataset indexed by its own masks (``usesearch index IMAGES --coco FILE.json``):
annotations kept with their ids, classes, crowd flags and splits beside a masker's
proposals of the same photos, searched with --label/--split/--source, counted by
``info``, never embedded twice; and every fault of the dataset recorded in one line
while the rest is indexed."""

import json
import os
import re
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, segment_table, write_photos
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths
from usesearch.indexer.coco_index import index_coco
from usesearch.indexer.folder import DB_FILE
from usesearch.indexer.web import create_app
from usesearch.masks import rle

TINY = ["--preset", "tiny"]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "rocket"}, {"id": 3, "name": "cup"}]


def _box(h, w, top, left, bottom, right):
    mask = np.zeros((h, w), bool)
    mask[top:bottom, left:right] = True
    return mask


def write_coco(path, photos, names, first_id, categories=CATEGORIES):
    """Two annotations a photo, one as an RLE and one as a polygon: classes by photo."""
    images, annotations = [], []
    for i, name in enumerate(names):
        w, h = Image.open(photos / name).size
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        category = 1 if "chelsea" in name else 2 if "rocket" in name else 3
        box = rle.encode(_box(h, w, h // 4, w // 4, h // 2, w // 2))
        polygon = [[2, 2, w - 3, 2, w - 3, h - 3, 2, h - 3]]
        annotations += [
            {"id": first_id + 2 * i, "image_id": i + 1, "category_id": category, "segmentation": box, "iscrowd": 0},
            {
                "id": first_id + 2 * i + 1,
                "image_id": i + 1,
                "category_id": category,
                "segmentation": polygon,
                "iscrowd": 1,
            },
        ]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Photos, a train and a val COCO file over them, and an index of both made with the CLI."""
    root = tmp_path_factory.mktemp("coco")
    photos = write_photos(root / "photos")
    train = write_coco(root / "instances_train.json", photos, ["sub/chelsea.png", "sub/rocket.png"], 100)
    val = write_coco(root / "instances_val.json", photos, ["astronaut.png", "coffee.png", "sub/rocket.png"], 500)
    db = root / "db"
    runner = CliRunner()
    for coco, split in ((train, ["--split", "train"]), (val, [])):  # val: the file's stem names it
        result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(coco), *split, *TINY])
        assert result.exit_code == 0, result.output
    return root, photos, db


def test_annotations_are_indexed_with_their_ids_classes_and_splits(labelled):
    root, photos, db = labelled
    ix = SegmentIndex.open(db)
    rows = ix.store.rows(ix.store.segment_ids())
    got = sorted(
        (r.split, r.annotation_id, r.category, r.iscrowd, r.image_path[len(str(photos)) + 1 :]) for r in rows.values()
    )
    assert got == [
        ("instances_val", 500, "cup", False, "astronaut.png"),
        ("instances_val", 501, "cup", True, "astronaut.png"),
        ("instances_val", 502, "cup", False, "coffee.png"),
        ("instances_val", 503, "cup", True, "coffee.png"),
        ("instances_val", 504, "rocket", False, "sub/rocket.png"),
        ("instances_val", 505, "rocket", True, "sub/rocket.png"),
        ("train", 100, "cat", False, "sub/chelsea.png"),
        ("train", 101, "cat", True, "sub/chelsea.png"),
        ("train", 102, "rocket", False, "sub/rocket.png"),
        ("train", 103, "rocket", True, "sub/rocket.png"),
    ]
    assert all(r.source == "annotation" for r in rows.values())
    # One photo, one image record, whatever splits annotate it; its mask is the file's.
    rocket = [r for r in rows.values() if r.image_path.endswith("rocket.png")]
    assert len({r.image_id for r in rocket}) == 1 and len(rocket) == 4
    w, h = Image.open(photos / "sub/rocket.png").size
    box = next(r for r in rocket if r.annotation_id == 102)
    assert (
        rle.decode({"size": [h, w], "counts": box.rle_counts}).sum()
        == box.area
        == (h // 2 - h // 4) * (w // 2 - w // 4)
    )
    # The read API an audit streams: columns, classes and splits by index.
    batches = list(ix.store.annotation_segments(split="train", batch=3))
    assert [len(b) for b in batches] == [3, 1]
    train = batches[0]
    assert train.categories == ("cat", "cup", "rocket") and train.splits == ("instances_val", "train")
    assert [train.categories[c] for c in train.category] == ["cat", "cat", "rocket"]
    assert set(train.split.tolist()) == {1} and train.annotation_id.tolist() == [100, 101, 102]
    assert list(ix.store.proposal_segments()) == []
    vectors = ix.store.files().read(train.chunk, train.row)
    assert vectors.shape == (3, ix.info.dim) and np.isfinite(vectors).all()


def test_a_rerun_adds_nothing_twice(labelled):
    root, photos, db = labelled
    before = sqlite3.connect(db / DB_FILE).execute("SELECT count(*) FROM segments").fetchone()[0]
    report = index_coco([photos], root / "instances_val.json", db, IndexOptions(preset="tiny"))
    assert (report.done, report.segments, report.skipped) == (0, 0, 3) and report.problems == []
    assert sqlite3.connect(db / DB_FILE).execute("SELECT count(*) FROM segments").fetchone()[0] == before == 10


def test_label_and_split_filter_query_and_similar(labelled):
    root, photos, db = labelled
    runner = CliRunner()
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--label", "rocket", "--json", "-k", "20"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    rows = SegmentIndex.open(db).store.rows(range(1, 11))
    assert sorted(h["segment_id"] for h in found) == sorted(r.id for r in rows.values() if r.category == "rocket")
    # Each hit says which annotation it is: its id, class and split, as stored.
    for h in found:
        row = rows[h["segment_id"]]
        assert (h["source"], h["category"], h["split"]) == ("annotation", "rocket", row.split)
        assert h["annotation_id"] == row.annotation_id
    asked = ["query", "a cat", "--db", str(db), "--label", "rocket", "--split", "train"]
    table = runner.invoke(app, asked, env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "label" in table.output and "rocket [train]" in table.output
    ix = SegmentIndex.open(db)
    only = ix.query("a cat", k=20, filters=SearchFilters(label="rocket", split="train"))
    assert sorted(h.annotation_id for h in only) == [102, 103] and {h.split for h in only} == {"train"}
    served = TestClient(create_app(ix)).get("/api/search", params={"q": "a cat", "label": "rocket", "split": "train"})
    assert [(h["category"], h["split"], h["annotation_id"]) for h in served.json()["hits"]] == [
        (h.category, h.split, h.annotation_id) for h in only
    ]
    like = ix.similar(only[0].segment_id, k=20, filters=SearchFilters(split="instances_val"))
    assert len(like) == 6 and {ix.store.rows([h.segment_id])[h.segment_id].split for h in like} == {"instances_val"}
    assert ix.query("a cat", k=5, filters=SearchFilters(label="dog")) == []
    assert ix.query("a cat", k=5, filters=SearchFilters(source="proposal")) == []
    with_path = ix.query("a cat", k=20, filters=SearchFilters(label="rocket", path="*/sub/*"))
    assert len(with_path) == 4


def test_broad_labels_are_checked_on_the_candidates_with_the_same_hits(labelled, monkeypatch):
    """A class, split or source keeping many segments is checked on the candidates
    (rows carry them) instead of resolved into an id selection of millions: the hits
    are those the database resolution gives. A class the sample lacks is resolved."""
    import usesearch.indexer.selection

    root, photos, db = labelled
    asks = [
        SearchFilters(label="rocket"),
        SearchFilters(split="train"),
        SearchFilters(source="annotation", per_image=True),
        SearchFilters(label="rocket", split="instances_val", min_area=1000),
        SearchFilters(split="instances_val", path="*/sub/*"),
    ]

    def run(ix):
        calls: list[tuple] = []
        real = ix.store.segment_locations_where
        monkeypatch.setattr(ix.store, "segment_locations_where", lambda *a: calls.append(a) or real(*a))
        return [ix.query("a cat", k=5, filters=f) for f in asks], calls

    ix = SegmentIndex.open(db)
    resolved, resolving = run(ix)  # 10 segments: every filter is narrow, resolved in the database
    ix.close()
    monkeypatch.setattr(usesearch.indexer.selection, "SELECTION_MAX", 0)  # now every one is broad
    ix = SegmentIndex.open(db)
    checked, checking = run(ix)
    assert ix.query("a cat", k=5, filters=SearchFilters(label="dog")) == [] and len(checking) == 1
    ix.close()
    assert len(resolving) == len(asks) and checking[0][2] == "dog"  # only the class nothing has was resolved
    # A narrow --min-area becomes the selection, the broad class and split are checked on its candidates.
    no_labels = (None, None, None)
    monkeypatch.setattr(
        usesearch.indexer.selection.Selections, "_few", lambda self, area, labels=no_labels: not any(labels)
    )
    ix = SegmentIndex.open(db)
    area_first, by_area = run(ix)
    ix.close()
    assert by_area == [(None, 1000)]  # only the ask with a --min-area, resolved without its labels
    assert all(hits for hits in resolved)
    # FAISS and the exact scan round scores differently: equal masks of one photo (the
    # rocket is in both splits) may swap places, so the photos and scores are compared.
    for ask, by_check, by_resolving in [*zip(asks, checked, resolved), *zip(asks, area_first, resolved)]:
        assert [h.image_id for h in by_check] == [h.image_id for h in by_resolving]
        assert [h.score for h in by_check] == pytest.approx([h.score for h in by_resolving], abs=1e-6)
        if not ask.per_image:
            assert {h.segment_id for h in by_check} == {h.segment_id for h in by_resolving}
        for h in by_check:
            assert ask.label in (None, h.category) and ask.split in (None, h.split) and h.area >= ask.min_area
    assert {(h.category, h.split) for h in checked[3]} == {("rocket", "instances_val")}


def test_info_counts_segments_per_source_split_and_class(labelled):
    root, photos, db = labelled
    result = CliRunner().invoke(app, ["info", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["segments_by_source"] == {"annotation": 10}
    assert stats["annotations_by_split"] == {"instances_val": 6, "train": 4}
    assert stats["annotations_by_class"] == {"instances_val": {"cup": 4, "rocket": 2}, "train": {"cat": 2, "rocket": 2}}
    table = CliRunner().invoke(app, ["info", "--db", str(db)])
    assert "split train: cat 2, rocket 2" in table.output
    lines = {line.split(":", 1)[0].strip(): line for line in table.output.splitlines()}
    assert lines["segments_by_source"].endswith(": annotation 10") and lines["head"].endswith(": -")  # read, not repr
    assert len({line.index(":") for line in lines.values()}) == 1  # one column, however long a key


def test_proposals_and_annotations_of_the_same_photos_sit_side_by_side(tmp_path):
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    db = tmp_path / "db"
    first = index_paths([photos], db, IndexOptions(**OPTS))  # proposals first
    labels = index_coco([photos], coco, db, IndexOptions(preset="tiny"))
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert first.segments > 0 and labels.segments == 4 and again.skipped == 2 and again.done == 0
    summary = SegmentIndex.open(db).store.label_summary()["segments_by_source"]
    assert summary == {"proposal": first.segments, "annotation": 4}
    # Annotations first, then a masker run: the photos still get their proposals, once.
    other = tmp_path / "other"
    index_coco([photos], coco, other, IndexOptions(preset="tiny"))
    assert SegmentIndex.open(other).info.masker == "none"
    made = index_paths([photos], other, IndexOptions(**OPTS))
    assert made.done == 2 and index_paths([photos], other, IndexOptions(**OPTS)).skipped == 2
    ix = SegmentIndex.open(other)
    assert ix.info.masker == "felzenszwalb"
    assert ix.store.label_summary()["segments_by_source"] == {"proposal": made.segments, "annotation": 4}
    props = [b for b in ix.store.proposal_segments()]
    assert sum(len(b) for b in props) == made.segments and all((b.annotation_id == -1).all() for b in props)
    assert len(ix.query("a cat", k=100, filters=SearchFilters(source="annotation"))) == 4


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


def test_an_older_index_gains_the_label_columns_and_their_indexes(tmp_path, monkeypatch):
    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # the photo was written just now: its stat kept all the same
    photos = write_photos(tmp_path / "photos", ("coffee",))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    con = sqlite3.connect(db / DB_FILE)
    for name in ("source_image", "category", "split"):
        con.execute(f"DROP INDEX ix_segments_{name}")
    for name in ("source", "annotation_id", "category", "iscrowd", "split"):
        con.execute(f"ALTER TABLE segments DROP COLUMN {name}")
    con.execute("ALTER TABLE images DROP COLUMN proposals_made")
    con.execute("ALTER TABLE images DROP COLUMN file_stat")
    con.commit()
    con.close()
    again = index_paths([photos], db, IndexOptions(**OPTS))  # the first writable open upgrades it
    assert again.skipped == 1 and again.done == 0  # an old photo counts as having its proposals
    con = sqlite3.connect(db / DB_FILE)
    columns = {r[1] for r in con.execute("PRAGMA table_info(segments)")}
    indexes = {r[1] for r in con.execute("PRAGMA index_list(segments)")}
    assert {"source", "annotation_id", "category", "iscrowd", "split"} <= columns
    assert {"ix_segments_source_image", "ix_segments_category", "ix_segments_split"} <= indexes
    assert con.execute("SELECT DISTINCT source FROM segments").fetchall() == [("proposal",)]
    (stat,) = con.execute("SELECT file_stat FROM images").fetchone()  # read whole once more, its stat noted
    assert stat.startswith(f"{(photos / 'coffee.png').stat().st_size}:")


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


def test_the_audits_photo_pass_reads_a_range_of_the_source_image_index(tmp_path):
    """The audit walks the annotated photos a batch at a time past the last image id.
    An older index (source alone indexed) read every annotation for each batch: its
    index is replaced by (source, image_id) on the first writable open, and the query
    is a range of it."""
    from sqlalchemy.dialects import sqlite

    from usesearch.indexer.audit.source import annotated_photos

    photos = write_photos(tmp_path / "photos", ("coffee",))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    con = sqlite3.connect(db / DB_FILE)
    con.execute("DROP INDEX ix_segments_source_image")
    con.execute("CREATE INDEX ix_segments_source ON segments (source)")  # as an older usesearch made it
    con.commit()
    con.close()
    index_paths([photos], db, IndexOptions(**OPTS))  # the first writable open upgrades it
    con = sqlite3.connect(db / DB_FILE)
    indexes = {r[1] for r in con.execute("PRAGMA index_list(segments)")}
    assert "ix_segments_source_image" in indexes and "ix_segments_source" not in indexes
    query = annotated_photos(after=0, batch=1000)
    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    plan = " ".join(str(row[-1]) for row in con.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "USING COVERING INDEX ix_segments_source_image (source=? AND image_id>?)" in plan, plan


@pytest.mark.parametrize(
    "segmentation",
    [
        [[1, 2, 3, 4, 5]],
        [[0, 0, 1e12, 0, 1e12, 1e12]],
        [],
        {"size": [10, 12], "counts": [50, 100]},
        {"size": [10, 12], "counts": "!!"},
        {"size": [20, 20], "counts": [400]},
        {"counts": "abc"},
        None,
    ],
)
def test_broken_masks_are_refused_before_pycocotools_reads_them(segmentation):
    with pytest.raises(ValueError):
        rle.checked(segmentation, 10, 12)
    box = _box(10, 12, 2, 3, 5, 9)
    assert rle.checked(rle.encode(box), 10, 12) == rle.encode(box)
    flat = np.zeros(120, bool)
    flat[5:15] = True  # COCO counts run down the columns
    uncompressed = rle.checked({"size": [10, 12], "counts": [5, 10, 105]}, 10, 12)
    assert uncompressed == rle.encode(flat.reshape((10, 12), order="F"))


def test_a_labelled_dataset_on_postgresql_and_an_older_catalog_upgraded_there(tmp_path, pg_url):
    from sqlalchemy import create_engine, text

    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS, db_url=pg_url))
    engine = create_engine(pg_url)
    with engine.begin() as conn:  # the catalog as an older usesearch made it
        for name in ("source", "annotation_id", "category", "iscrowd", "split"):
            conn.execute(text(f"ALTER TABLE segments DROP COLUMN {name}"))
        conn.execute(text("ALTER TABLE images DROP COLUMN proposals_made"))
    engine.dispose()
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    report = index_coco([photos], coco, db, IndexOptions(preset="tiny", db_url=pg_url))
    assert report.segments == 4 and report.problems == []
    assert index_paths([photos], db, IndexOptions(**OPTS, db_url=pg_url)).skipped == 2  # proposals kept as made
    ix = SegmentIndex.open(db, db_url=pg_url)
    hits = ix.query("a cat", k=10, filters=SearchFilters(label="cat", split="val"))
    assert sorted(ix.store.rows([h.segment_id for h in hits])[h.segment_id].annotation_id for h in hits) == [1, 2]
    assert ix.store.label_summary()["annotations_by_class"] == {"val": {"cat": 2, "rocket": 2}}


def test_the_web_api_filters_by_label_split_and_source_and_shows_a_segments_labels(labelled):
    from fastapi.testclient import TestClient

    from usesearch.indexer.web import create_app

    root, photos, db = labelled
    client = TestClient(create_app(SegmentIndex.open(db)))
    hits = client.get("/api/search", params={"q": "a cat", "k": 50, "label": "rocket", "split": "train"}).json()["hits"]
    labels = [client.get(f"/api/segments/{h['segment_id']}").json() for h in hits]
    assert sorted((s["annotation_id"], s["category"], s["split"]) for s in labels) == [
        (102, "rocket", "train"),
        (103, "rocket", "train"),
    ]
    assert client.get("/api/search", params={"q": "a cat", "source": "proposal"}).json()["hits"] == []
    assert client.get("/api/search", params={"q": "a cat", "source": "masks"}).status_code in (400, 422)


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
