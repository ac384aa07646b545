"""A COCO file for ``index --coco``: read (``io.coco_dataset.read_coco``) streamed, not
loaded whole, with what reading it whole gives; refused in one line before anything
runs when it is not COCO; and indexed again after it changed, to what a fresh run of
the changed file gives."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import write_photos
from tests.test_coco_index import TINY, write_coco
from usesearch.cli.app import app
from usesearch.errors import CocoFileError
from usesearch.indexer.coco_index import index_coco


def test_a_streamed_file_reads_as_the_whole_file_does(tmp_path, monkeypatch):
    """A strict JSON file is streamed (never loaded whole), and gives what reading it
    whole gives: entries, annotations, their masks exactly, and every fault."""
    import ijson

    from usesearch.io import coco_dataset

    photos = write_photos(tmp_path / "photos")
    path = write_coco(tmp_path / "c.json", photos, ["sub/chelsea.png", "sub/rocket.png", "coffee.png"], 1)
    coco = json.loads(path.read_text())
    coco["annotations"] += [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},  # a repeated id
        {"id": 90, "image_id": 7, "category_id": 1, "segmentation": [[1.25, 1, 5, 1, 5, 5.5], [0, 0, 3, 0, 3, 3]]},
        {"id": 91, "image_id": 2, "category_id": 3, "segmentation": [[0.1, 0.2, 7.3, 0.4, 7.5, 9.25, 1, 2]]},
        {"id": 92, "image_id": 2, "category_id": 3, "segmentation": [[1, 2, "x", 4, 5, 6]]},  # kept as it is
    ]
    path.write_text(json.dumps(coco))

    def described(dataset):
        return (
            [
                (e.id, e.file_name, [(a.id, a.category, a.iscrowd, a.mask_source()) for a in e.annotations])
                for e in dataset.images
            ],
            [(name, ann_id, str(exc)) for name, ann_id, exc in dataset.problems],
        )

    real_loads = json.loads
    from usesearch.io import coco_json  # where a file is loaded whole

    monkeypatch.setattr(coco_json.json, "loads", lambda *a: pytest.fail("a strict JSON file was loaded whole"))
    streamed = coco_dataset.read_coco(path)
    monkeypatch.setattr(coco_json.json, "loads", real_loads)
    polygons = [a.segmentation for e in streamed.images for a in e.annotations if a.id == 91]
    assert isinstance(polygons[0][0], np.ndarray)  # held as an array, given back as the file's numbers
    monkeypatch.setattr(ijson, "items", lambda *a, **k: (_ for _ in ()).throw(ijson.JSONError("not strict")))
    whole = coco_dataset.read_coco(path)
    assert described(streamed) == described(whole)
    assert len(streamed.problems) == 2 and sum(len(e.annotations) for e in streamed.images) == 8
    assert [a.mask_source() for e in whole.images for a in e.annotations if a.id == 91] == [
        [[0.1, 0.2, 7.3, 0.4, 7.5, 9.25, 1, 2]]
    ]


@pytest.mark.parametrize(
    "content, why",
    [
        (b"\x89PNG not json", "not a COCO annotations file"),
        (b"[1, 2]", "needs the lists images, annotations, categories"),
        (b'{"images": [], "annotations": {}}', "needs the lists images, annotations, categories"),
        (b'{"images": [], "categories": [], "annotations": {}}', "needs the lists images, annotations, categories"),
        (b'{"images": [], "categories": []}', "needs the lists images, annotations, categories"),
        (b'{"images": [], "categories": [], "annotations": [{"id": 1', "not a COCO annotations file"),  # cut short
        (b"[NaN]", "needs the lists images, annotations, categories"),  # not strict JSON: read whole, then judged
    ],
)
def test_a_file_that_is_not_coco_is_refused_in_one_line_before_anything_runs(tmp_path, content, why):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--coco", str(bad), *TINY])
    assert result.exit_code == 2 and why in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "db").exists()
    with pytest.raises(CocoFileError):
        index_coco([photos], bad, tmp_path / "db")


def test_a_coordinate_past_any_float_is_one_annotations_fault(tmp_path):
    """ijson refuses 10**400 (so the file is read whole); the polygon holding it is
    refused in one line when its photo is read, and the others are kept."""
    from usesearch.errors import AnnotationError
    from usesearch.io.coco_dataset import read_coco
    from usesearch.io.coco_masks import masks_of

    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 10**400, 1, 5, 5]]},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]},
    ]
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    (entry,) = read_coco(path).images
    masks = dict((a.id, mask) for a, mask in masks_of(entry, 20, 20))
    assert isinstance(masks[1], AnnotationError) and "finite and near" in str(masks[1])
    assert isinstance(masks[2], dict) and masks[2]["size"] == [20, 20]


def test_a_broken_image_entry_is_said_as_what_it_is(tmp_path):
    """An id written as a string ("6", as some tools write ids) was "an image entry
    without id and file_name"."""
    from usesearch.io.coco_dataset import read_coco

    images = [
        {"id": "6", "file_name": "a.png"},
        {"id": 7, "file_name": 7},
        {"file_name": "c.png"},
        {"id": 8, "file_name": "d.png"},
    ]
    path = tmp_path / "ids.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    dataset = read_coco(path)
    said = [str(error) for _, _, error in dataset.problems]
    assert [e.id for e in dataset.images] == [8]
    assert said[0].startswith("an image entry whose id is not a whole number ('6'): ")
    assert said[1].startswith("an image entry whose file_name is not text (7): ")
    assert said[2].startswith("an image entry without id and file_name: ") and len(said) == 3


def test_an_entry_whose_size_turned_wrong_loses_its_stored_annotations(tmp_path):
    """A re-run after an entry's size was changed to one the photo does not have
    records the mismatch and drops that photo's annotations of the split, as a fresh
    run of the changed file keeps none."""
    from usesearch.indexer import IndexOptions, SegmentIndex

    photos = write_photos(tmp_path / "photos")
    names = ["sub/chelsea.png", "sub/rocket.png", "coffee.png"]
    path = write_coco(tmp_path / "train.json", photos, names, 1)
    index_coco([photos], path, tmp_path / "db", IndexOptions(preset="tiny"))
    coco = json.loads(path.read_text())
    coco["images"][1]["width"] = 999  # sub/rocket.png's entry
    path.write_text(json.dumps(coco))
    report = index_coco([photos], path, tmp_path / "db", IndexOptions(preset="tiny"))
    fresh = index_coco([photos], path, tmp_path / "fresh", IndexOptions(preset="tiny"))
    assert report.removed == 2 and any("size mismatch" in line for line in report.problems)

    def annotations(db):
        ix = SegmentIndex.open(db)
        rows = ix.store.rows(ix.store.segment_ids())
        ix.close()
        return sorted((r.annotation_id, r.category, r.image_path.rsplit("/", 1)[1]) for r in rows.values())

    assert annotations(tmp_path / "db") == annotations(tmp_path / "fresh") and len(annotations(tmp_path / "fresh")) == 4
    assert fresh.problems == report.problems


def test_two_entries_leading_to_one_photo_are_indexed_together_and_stay_put(tmp_path):
    """'sub/chelsea.png' under the first folder and 'chelsea.png' under the second are
    one photo: their annotations are indexed together (a problem says so), and a
    re-run embeds nothing (each entry would otherwise undo the other's)."""
    from usesearch.indexer import IndexOptions

    photos = write_photos(tmp_path / "photos")  # chelsea is in photos/sub
    first = write_coco(tmp_path / "a.json", photos, ["sub/chelsea.png"], 1)
    coco = json.loads(first.read_text())
    coco["images"].append({**coco["images"][0], "id": 2, "file_name": "chelsea.png"})
    coco["annotations"] += [{**a, "id": a["id"] + 10, "image_id": 2} for a in coco["annotations"]]
    first.write_text(json.dumps(coco))
    folders = [photos, photos / "sub"]
    report = index_coco(folders, first, tmp_path / "db", IndexOptions(preset="tiny"), split="train")
    assert (report.done, report.segments) == (1, 4)
    assert any("name the same photo" in line for line in report.problems)
    again = index_coco(folders, first, tmp_path / "db", IndexOptions(preset="tiny"), split="train")
    assert (again.segments, again.removed, again.skipped) == (0, 0, 1)


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "audit", "--coco", "{bad}", "--images", "{photos}", "--report-dir", "{out}"],
        ["eval", "parts", "--coco", "{bad}", "--images", "{photos}"],
        [
            "curate",
            "run",
            "{bad}",
            "--input-format",
            "coco-instances",
            "--images",
            "{photos}",
            "--dataset-dir",
            "{out}",
        ],
    ],
)
@pytest.mark.parametrize(
    "content, why", [(b'{"a": 1}', "it needs the lists images, annotations"), (b"{'a'", "not a COCO annotations file")]
)
def test_every_command_taking_a_coco_file_refuses_one_that_is_not_in_one_line(tmp_path, command, content, why):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    args = [a.format(bad=bad, photos=photos, out=tmp_path / "out") for a in command]
    result = CliRunner().invoke(app, [*args, "--preset", "tiny"])
    assert result.exit_code == 2 and why in result.stderr and str(bad) in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_index_refuses_a_file_that_is_not_coco_before_any_model_library_loads(tmp_path):
    """`index PHOTOS --coco notcoco.json` said so once torch and the models' libraries had
    loaded (4 s)."""
    from tests.helpers import invoke_in_a_fresh_python

    photos = write_photos(tmp_path / "photos", ("coffee",))
    (tmp_path / "bad.json").write_bytes(b'{"a": 1}')
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--coco", str(tmp_path / "bad.json")]
    [(exit_code, said)], heavy = invoke_in_a_fresh_python([*args, "--preset", "tiny"])
    assert exit_code == 2 and heavy == [] and "it needs the lists images, annotations" in said, said
    assert not (tmp_path / "db").exists()


def test_a_dataset_curated_from_coco_names_its_photos_by_absolute_path(tmp_path, monkeypatch):
    """So it trains and shows from any folder, as a folder source's does."""
    from usesearch.curation.dataset import read_records

    photos = write_photos(tmp_path / "photos", ("coffee",))
    coco = write_coco(tmp_path / "inst.json", photos, ["coffee.png"], 1)
    monkeypatch.chdir(tmp_path)
    args = ["curate", "run", "inst.json", "--input-format", "coco-instances", "--images", "photos"]
    result = CliRunner().invoke(app, [*args, "--dataset-dir", "pairs", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    paths = [record["path"] for record in read_records(tmp_path / "pairs")]
    assert paths == [str(photos / "coffee.png")] and coco.is_file()


@pytest.mark.parametrize(
    "fault", ["photo missing", "size mismatch", "degenerate polygon", "no annotations", "all broken", "unnamed"]
)
def test_eval_parts_refuses_a_faulty_ground_truth_before_the_models(tmp_path, fault):
    """A photo missing at the end of the list threw away every result before it; an
    entry of another size than its photo scored 0 without a word; a polygon pycocotools
    cannot rasterise was an unexpected error (a NaN in one took it to all the memory)."""
    from usesearch.training.synthetic import write_parts_coco

    coco_file = write_parts_coco(tmp_path / "parts", 2, seed=5)
    coco = json.loads(coco_file.read_text())
    last = coco["images"][-1]
    if fault == "photo missing":
        (tmp_path / "parts" / "images" / last["file_name"]).unlink()
        why = f"1 photo(s) {coco_file} names are not readable under"
    elif fault == "size mismatch":
        last["height"] += 7
        why = "the entry says"
    elif fault == "degenerate polygon":
        coco["annotations"][0]["segmentation"] = [[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]]
        why = "annotation fault(s) in"
    elif fault == "all broken":  # each fault was found, and only "no annotation" said
        for annotation in coco["annotations"]:
            del annotation["segmentation"]
        why = "holds no annotation of its photos ({} fault(s) in it, the first: ".format(len(coco["annotations"]))
    elif fault == "unnamed":  # "cannot embed an empty text", naming neither the file nor the category
        coco["categories"][0]["name"] = " "
        why = "category {} has no name".format(coco["categories"][0]["id"])
    else:  # COCOeval's -1 was reported as "mAP_mask@[0.5:0.95]: -100.00", exit 0
        coco["annotations"] = []
        why = "holds no annotation of its photos: there is nothing to score against"
    coco_file.write_text(json.dumps(coco))
    args = ["eval", "parts", "--coco", str(coco_file), "--images", str(tmp_path / "parts" / "images"), "-p", "tiny"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and why in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_part_category_without_annotations_has_no_ap_null_not_nan():
    """NaN is not JSON: strict parsers refused ``eval parts --json``'s output."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO

    from usesearch.masks import rle
    from usesearch.tasks.parts import mask_map

    mask = np.zeros((20, 20), bool)
    mask[4:12, 4:12] = True
    segmentation = rle.encode(mask)
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": segmentation,
                "area": 64,
                "bbox": [4, 4, 8, 8],
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 1, "name": "roof"}, {"id": 2, "name": "chimney"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        overall, per_category = mask_map(
            gt, [{"image_id": 1, "category_id": 1, "segmentation": segmentation, "score": 0.9}]
        )
    assert per_category["chimney"] is None and per_category["roof"] == pytest.approx(1.0) == overall
    assert json.loads(json.dumps(per_category), parse_constant=lambda c: pytest.fail(c)) == per_category
