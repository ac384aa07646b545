"""A labelled dataset's faults (``usesearch index IMAGES --coco FILE.json``): every fault
recorded in one line while the rest is indexed; repeated entries and ids read as one
photo and the first of each; folders holding none of its photos and options that do not
go with it refused before anything is made."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import write_photos
from tests.test_coco_index import CATEGORIES, TINY, _box, write_coco
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SegmentIndex
from usesearch.indexer.coco_index import index_coco
from usesearch.indexer.folder import DB_FILE
from usesearch.masks import rle


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
    assert "1 photo updated (3 annotations indexed" in result.output
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
    assert any(
        re.match(r"gone.png\s+\[mixed\] photo missing: no such photo .* \(1 annotation \(id 7\)\)$", x) for x in lines
    )
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
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},  # a detection dataset's box alone
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
            ("./a.png", 12, "broken mask"),  # its photo named, as for any other fault of a known entry
            ("a.png", 14, "broken mask"),
            ("./a.png", None, "broken annotation"),  # the annotation whose id is a string
            ("./a.png", None, "duplicate photo"),  # two entries of one file (it was said as an id repeated)
        ],
        key=str,
    )
    boxed = next(str(e) for _, a, e in dataset.problems if a == 14)
    assert boxed.startswith("the annotation has no segmentation (a box alone, as in a detection dataset: a segment")


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
    assert set(said) == {("a.png", "size mismatch"), ("b.png", "duplicate photo")}
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
    import usesearch.io.coco_dataset as coco_dataset
    from usesearch.errors import UsesearchError

    photos = write_photos(tmp_path / "photos", ("chelsea",))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png"], 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "mount").mkdir()
    looked_up: list = []
    real = coco_dataset.photo_path
    monkeypatch.setattr(coco_dataset, "photo_path", lambda *args: looked_up.append(args) or real(*args))
    for folders in ([tmp_path / "empty"], [tmp_path / "empty", tmp_path / "mount"]):
        with pytest.raises(UsesearchError, match="none of the 1 annotated photo"):
            index_coco(folders, coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert not looked_up and not (tmp_path / "db").exists()
    with pytest.raises(UsesearchError, match="none of the 1 annotated photo"):  # a folder holding others: looked up
        index_coco([write_photos(tmp_path / "others", ("coffee",))], coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert looked_up


def test_a_file_with_no_annotation_is_refused_for_a_new_index_and_empties_an_existing_split(tmp_path):
    """`index PHOTOS --coco EMPTY.json --db NEW` made an empty index and exited 0.
    Refused in one line, nothing made (on Ray too); beside an index holding the split,
    the emptied file removes the split's annotations, as the file says."""
    from usesearch.errors import UsesearchError
    from usesearch.indexer.coco_ray import index_coco_ray

    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    empty = tmp_path / "val.json"
    empty.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "chelsea.png"}], "annotations": [], "categories": []})
    )
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "new"), "--coco", str(empty), *TINY])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "val.json has no annotation of any photo: a new index of it would be empty" in said
    assert not (tmp_path / "new").exists()
    with pytest.raises(UsesearchError, match="val.json has no annotation of any photo"):
        index_coco_ray([photos], empty, tmp_path / "new", IndexOptions(preset="tiny"))
    assert not (tmp_path / "new").exists()
    db = tmp_path / "db"
    nothing = empty.read_text()
    write_coco(empty, photos, ["chelsea.png", "sub/rocket.png"], 1)
    assert runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(empty), *TINY]).exit_code == 0
    empty.write_text(nothing)
    emptied = runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(empty), *TINY])
    assert emptied.exit_code == 0 and "4 removed" in emptied.output, emptied.output


def test_a_file_name_found_under_two_folders_is_a_problem_not_a_guess(tmp_path):
    """`index B A --coco FILE`: an entry whose name both folders hold (per-camera folders
    each with IMG_0001.jpg, the same size) went to the first folder's photo silently, and
    swapping the folders moved its annotations. Recorded as a problem, left alone, in
    either order; one file reached through two folders is no ambiguity."""
    from tests.test_index_integrity import change_photo

    a = write_photos(tmp_path / "A", ("coffee", "rocket"))
    b = write_photos(tmp_path / "B", ("coffee",))
    change_photo(b, "coffee")  # same name, same size, other content
    coco = write_coco(tmp_path / "val.json", a, ["coffee.png", "sub/rocket.png"], 1)
    runner = CliRunner()
    for order in ((b, a), (a, b)):
        args = ["index", *map(str, order), "--db", str(tmp_path / "db"), "--coco", str(coco), *TINY]
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        said = " ".join(result.output.split())
        assert result.exit_code == 0, result.output
        assert "coffee.png: ambiguous photo: 2 photos of that name:" in said, said
        assert "its 2 annotations (ids 1, 2) are left as they were" in said, said
        ix = SegmentIndex.open(tmp_path / "db")
        placed = {r.annotation_id: r.image_path for r in ix.store.rows(ix.store.segment_ids()).values()}
        ix.close()
        assert placed == {3: str(a / "sub" / "rocket.png"), 4: str(a / "sub" / "rocket.png")}
    twice = runner.invoke(app, ["index", str(a), str(a), "--db", str(tmp_path / "db2"), "--coco", str(coco), *TINY])
    assert twice.exit_code == 0 and "ambiguous" not in twice.output and "4 annotations indexed" in twice.output


def test_a_name_in_the_other_unicode_form_is_found_and_a_turned_photos_size_is_explained(tmp_path):
    """A file_name written NFD (as macOS tools write it) for a file named NFC was
    "photo missing", a name identical on screen; an entry sized as a JPEG's stored pixels,
    which its EXIF orientation turns, said only "the entry says 451x300 but the photo is
    300x451", while PIL and file browsers say 451x300."""
    import unicodedata

    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.coffee()).resize((60, 40)).save(photos / unicodedata.normalize("NFC", "café.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(data.rocket()).resize((60, 40)).save(photos / "turned.jpg", exif=exif)
    images = [
        {"id": 1, "file_name": unicodedata.normalize("NFD", "café.png"), "height": 40, "width": 60},
        {"id": 2, "file_name": "turned.jpg", "height": 40, "width": 60},
    ]
    box = rle.encode(_box(40, 60, 5, 5, 20, 20))
    annotations = [{"id": i, "image_id": i, "category_id": 1, "segmentation": box, "iscrowd": 0} for i in (1, 2)]
    coco = tmp_path / "val.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    report = index_coco([photos], coco, tmp_path / "db", IndexOptions(preset="tiny"))
    assert report.segments == 1 and not any("photo missing" in p for p in report.problems), report.problems
    assert any(
        "size mismatch: the entry says 60x40 but the photo is 40x60 (turned: where its EXIF orientation turns it" in p
        for p in report.problems
    ), report.problems


def test_a_split_name_the_catalog_cannot_keep_is_refused(tmp_path):
    """`--split ' '` and a 300-character split were taken (the catalog's column holds
    128: PostgreSQL refuses past it), and neither could be named again by `--split`;
    `--split ''` was taken as no --split (the file's stem)."""
    photos = write_photos(tmp_path / "photos", ("chelsea",))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png"], 1)
    for bad in (" ", "x" * 300, "a\nb", ""):
        result = CliRunner().invoke(
            app, ["index", str(photos), "--db", str(tmp_path / "db"), "--coco", str(coco), "--split", bad, *TINY]
        )
        assert result.exit_code == 2 and "a split is named by 1 to 128 characters" in result.output, result.output
        assert not (tmp_path / "db").exists()


def test_a_photo_that_fails_says_how_many_of_the_files_annotations_it_holds(tmp_path):
    """The summary's annotations did not add up to the file's: those on a photo that
    failed to read were in no count ("1 failed, 0 problems")."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/coffee.png"], 1)
    (photos / "sub" / "coffee.png").write_bytes(b"not a picture")
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--coco", str(coco), *TINY]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "1 photo updated (2 annotations indexed, 0 relabelled, 0 removed)" in said, said
    assert "1 failed (with 2 annotations of this file), 0 problems" in said, said


def test_categories_of_one_name_or_names_alike_but_for_case_are_recorded(tmp_path):
    """Categories 1 and 2 both "cup" were one class, and "Cup " another, with no word."""
    from usesearch.io.coco_dataset import read_coco

    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5]]}],
        "categories": [
            {"id": 1, "name": "cup"},
            {"id": 2, "name": "cup"},
            {"id": 3, "name": "Cup "},
            {"id": 4, "name": "cat"},
        ],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(coco))
    said = sorted(str(e) for _, _, e in read_coco(path).problems if e.kind == "category name")
    assert said == [
        "categories 1, 2 share the name 'cup': their annotations are one class here",
        "categories named 'cup', 'Cup ' differ only in case or spaces: they are 2 classes "
        "(one name in the file makes them one)",
    ]


def test_a_polygon_wholly_off_its_photo_is_said_to_lie_outside_it_not_only_empty():
    """An annotation of another photo, or at another scale, read "empty mask: the mask
    covers no pixel"; the polygon's box and the photo's size say what went wrong."""
    from usesearch.io.coco_dataset import Annotation, ImageEntry, _compact
    from usesearch.io.coco_masks import checked_masks

    off = Annotation(10, "cat", False, _compact([[300, 300, 400, 300, 400, 400]]))
    edge = Annotation(11, "cat", False, _compact([[250, 160, 300, 160, 300, 200]]))  # partly on: kept, clipped
    kept, problems = checked_masks(ImageEntry(1, "a.png", 170, 256, [off, edge]), (170, 256))
    assert [a.id for a, _ in kept] == [11]
    (name, ann, error), *_ = problems
    assert (name, ann, error.kind) == ("a.png", 10, "empty mask") and len(problems) == 1
    assert str(error).endswith("its polygon (x 300-400, y 300-400) lies outside the 256x170 photo"), str(error)
