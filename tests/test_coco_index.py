"""A labelled dataset indexed by its own masks (``usesearch index IMAGES --coco FILE.json``):
annotations kept with their ids, classes, crowd flags and splits beside a masker's
proposals of the same photos, searched with --label/--split/--source, counted by
``info``, never embedded twice; and every fault of the dataset recorded in one line
while the rest is indexed."""

import json
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
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
        assert h["iscrowd"] == row.iscrowd
    # An export of annotations keeps what they are: the crowd flag was reset to 0 and the class dropped.
    out = root / "rockets.json"
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--label", "rocket", "--export-coco", str(out)])
    assert result.exit_code == 0, result.output
    exported = json.loads(out.read_text())["annotations"]
    assert sorted(
        (a["segment_id"], a["iscrowd"], a["label"], a["split"], a["annotation_id"]) for a in exported
    ) == sorted(
        (r.id, int(r.iscrowd), r.category, r.split, r.annotation_id) for r in rows.values() if r.category == "rocket"
    )
    assert {a["iscrowd"] for a in exported} == {0, 1}
    asked = ["query", "a cat", "--db", str(db), "--label", "rocket", "--split", "train"]
    table = runner.invoke(app, asked, env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "label" in table.output and "rocket [train]" in table.output
    ix = SegmentIndex.open(db)
    only = ix.query("a cat", k=20, filters=SearchFilters(label="rocket", split="train"))
    assert sorted(h.annotation_id for h in only) == [102, 103] and {h.split for h in only} == {"train"}
    served = TestClient(create_app(ix)).get("/api/search", params={"q": "a cat", "label": "rocket", "split": "train"})
    assert [(h["category"], h["split"], h["annotation_id"], h["iscrowd"]) for h in served.json()["hits"]] == [
        (h.category, h.split, h.annotation_id, h.iscrowd)
        for h in only  # (the web's lacked iscrowd)
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


def test_an_audit_of_photos_without_proposals_says_which_lists_cannot_see_them(labelled, tmp_path):
    """Annotations indexed, no masker run yet: the overlooked and badly located lists came
    out "0 found", read as a clean dataset."""
    import shutil

    _, photos, db = labelled
    shutil.copytree(db, tmp_path / "db")
    result = CliRunner().invoke(
        app, ["audit", "--db", str(tmp_path / "db"), "--report-dir", str(tmp_path / "report")], env={"COLUMNS": "300"}
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "4 annotated photo(s) have no proposals yet: the overlooked and badly_located lists cannot see them" in said
    assert f"(`usesearch index IMAGES --masker NAME --db {tmp_path / 'db'}` makes them)" in said  # (index_flags')
    runner = CliRunner()
    made = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--masker", "felzenszwalb"])
    assert made.exit_code == 0, made.output
    again = runner.invoke(app, ["audit", "--db", str(tmp_path / "db"), "--report-dir", str(tmp_path / "report")])
    assert again.exit_code == 0 and "no proposals yet" not in again.output, again.output
