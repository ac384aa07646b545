"""Curation keeps going through what real sources hold: broken annotations, missing or
rotated photos, a second source of the same photo, and a run cut
short (a curated folder's caches, identity and writers: test_curation_identity.py)."""

import json

import pytest
import torch
from PIL import Image
from skimage import data

import usesearch
from tests.helpers import curated_segment
from usesearch.curation.dataset import read_records, read_segments
from usesearch.curation.grounding import match_boxes_to_phrases
from usesearch.curation.pipeline import curate
from usesearch.curation.records import ImageItem, TextRef
from usesearch.curation.sources import coco_captions_source, coco_instances_source, visual_genome_source
from usesearch.errors import CocoFileError


def _failures(folder):
    return [json.loads(line) for line in (folder / "failures.jsonl").read_text().splitlines()]


def test_coco_instances_faults_are_recorded_and_the_rest_curated(tmp_path, photos):
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    coco = {
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "cup"}],
        "images": [
            {"id": 1, "file_name": "cat.png", "height": 75, "width": 113},
            {"id": 2, "file_name": "cup.png", "height": 150, "width": 100},  # rotated: the photo is 150 x 100
            {"id": 3, "file_name": "gone.png", "height": 9, "width": 9},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square},
            {"id": 2, "image_id": 1, "category_id": 7, "segmentation": square},  # unknown category
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, "x", 4, 5, 6]]},  # broken polygon
            {"id": 4, "image_id": 9, "category_id": 1, "segmentation": square},  # unknown image
            {"id": 5, "image_id": 2, "category_id": 2, "segmentation": square},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    report = curate(coco_instances_source(path, photos), tmp_path / "ds")
    # The rotated cup fails: its masks would not sit on its pixels. Curated with none, as
    # before, it was "done": the size fixed in the file, it was refused as changed.
    assert (report.done, report.failed, report.problems) == (1, 2, 5), report
    assert [p.rsplit("/", 1)[1] for p, _ in report.failures] == ["cup.png", "gone.png"]
    assert report.failures[0][1].startswith("size mismatch: the entry says 100x150 but the photo is 150x100")
    records = {r["path"].rsplit("/", 1)[1]: r for r in read_records(tmp_path / "ds")}
    assert [t.text for s in read_segments(records["cat.png"]) for t in s.texts] == ["cat"] and set(records) == {
        "cat.png"
    }
    kinds = sorted(f["error"].split(":")[0] for f in _failures(tmp_path / "ds"))
    assert kinds == ["broken mask", "photo missing", "size mismatch", "unknown category", "unknown image"]
    again = curate(coco_instances_source(path, photos), tmp_path / "ds")
    assert again.done == 0 and len(_failures(tmp_path / "ds")) == 5  # a re-run repeats no line
    coco["annotations"].reverse()  # a re-export in another order: the same annotations
    path.write_text(json.dumps(coco))
    reordered = curate(coco_instances_source(path, photos), tmp_path / "ds")
    assert (reordered.skipped, reordered.failed, reordered.missing) == (1, 2, 1)  # the cup and the missing gone.png
    # The cup's size fixed in the file: curated now.
    coco["images"][1].update(height=100, width=150)
    path.write_text(json.dumps(coco))
    fixed = curate(coco_instances_source(path, photos), tmp_path / "ds")
    assert (fixed.done, fixed.skipped) == (1, 1) and [p.rsplit("/", 1)[1] for p, _ in fixed.failures] == ["gone.png"]
    assert [
        t.text
        for r in read_records(tmp_path / "ds")
        if r["path"].endswith("cup.png")
        for s in read_segments(r)
        for t in s.texts
    ] == ["cup"]


def test_a_caption_file_without_captions_is_refused_and_a_bad_caption_recorded(tmp_path, photos):
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [{"id": 1, "file_name": "cat.png"}], "annotations": [{"id": 1}]}))
    with pytest.raises(
        CocoFileError, match="holds no caption: for a COCO instances file use --input-format coco-instances"
    ):
        list(coco_captions_source(instances, photos))
    captions = tmp_path / "captions.json"
    images = [{"id": 1, "file_name": "cat.png"}, {"file_name": "no-id.png"}]
    annotations = [{"image_id": 1, "caption": "A cat."}, {"image_id": 1}]
    # An empty caption (it was said as "not a caption with an image_id"); one of no entry's id (dropped unsaid).
    annotations += [{"image_id": 1, "caption": " "}, {"image_id": 5, "caption": "A dog."}]
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    items = list(coco_captions_source(captions, photos))
    assert [len(i.problems) for i in items] == [4, 0] and items[1].captions[0].text == "A cat."
    said = [str(error) for _, _, error in items[0].problems]
    assert (
        said[1].startswith("an empty caption (image_id 1)")
        and said[3] == "1 caption(s) of image_id 5, which no image entry has"
    )
    # An entry with no file_name was a photo "None", missing under --images.
    images += [{"id": 2}, {"id": 3, "file_name": None}]
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    items = list(coco_captions_source(captions, photos))
    faults = [str(error) for item in items[2:] for _, _, error in item.problems]
    assert faults == ["image 2 has no file_name", "image 3 has no file_name"], faults
    assert not any(item.photo or item.missing for item in items[2:])


def test_visual_genome_is_streamed_from_its_subfolders_and_faults_recorded(tmp_path):
    images = tmp_path / "VG"
    (images / "VG_100K_2").mkdir(parents=True)
    Image.fromarray(data.astronaut()[::4, ::4]).save(images / "VG_100K_2" / "7.jpg")
    regions = [
        {"id": 7, "regions": [{"image_id": 7, "x": 10, "y": 10, "width": 50, "height": 60, "phrase": "a face"}]},
        {"id": 7, "regions": [{"image_id": 7, "x": 1, "y": 1, "width": 5}]},  # no phrase, no height
        # An empty phrase, a box of no area: dropped unsaid before.
        {"id": 7, "regions": [{"image_id": 7, "x": 1, "y": 1, "width": 5, "height": 5, "phrase": " "}]},
        {"id": 7, "regions": [{"image_id": 7, "x": 1, "y": 1, "width": 0, "height": 5, "phrase": "a line"}]},
        {"id": 8, "regions": [{"image_id": 8, "x": 1, "y": 1, "width": 5, "height": 5, "phrase": "gone"}]},
        "not an image",
    ]
    path = tmp_path / "region_descriptions.json"
    path.write_text(json.dumps(regions))
    items = list(visual_genome_source(path, images))
    assert items[0].path == str(images / "VG_100K_2" / "7.jpg") and items[0].boxes[0].texts[0].text == "a face"
    assert [len(i.problems) for i in items] == [0, 1, 1, 1, 1, 1]
    assert [i.photo for i in items] == [True, True, True, True, False, False]
    assert [str(i.problems[0][2]).split(":")[0] for i in items[2:4]] == [
        "a region with an empty phrase",
        "a region with a box of no area (0x5)",
    ]
    path.write_text(json.dumps({"regions": []}))
    with pytest.raises(CocoFileError, match="is not Visual Genome's region_descriptions.json"):
        list(visual_genome_source(path, images))


def test_a_visual_genome_region_repeated_is_kept_once_and_recorded(tmp_path):
    """A region listed twice (its region_id again) gave its pair twice, trained on twice as often, unsaid."""
    images = tmp_path / "VG"
    images.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(images / "7.jpg")
    region = {"image_id": 7, "x": 10, "y": 10, "width": 50, "height": 60, "phrase": "a face"}
    other = region | {"region_id": 2, "phrase": "a hat"}
    path = tmp_path / "region_descriptions.json"
    path.write_text(json.dumps([{"id": 7, "regions": [region | {"region_id": 1}, other, region | {"region_id": 1}]}]))
    [item] = visual_genome_source(path, images)
    assert [box.texts[0].text for box in item.boxes] == ["a face", "a hat"]
    assert [str(p[2]).split(",")[0] for p in item.problems] == ["a region repeating region_id 1"]
    path.write_text(json.dumps([{"id": 7, "regions": [region, region]}]))  # (no region_id: nothing to tell them by)
    assert len(next(visual_genome_source(path, images)).boxes) == 2


def test_a_strip_is_refused_only_where_a_captioner_or_grounder_would_shrink_it(tmp_path):
    """A 3 px strip failed deep in the grounder; its ground-truth masks need no model
    that shrinks it, so a source of masks curates it and one of captions refuses it."""
    Image.fromarray(data.coffee()[:30]).save(tmp_path / "strip.png")
    masks = ImageItem(path=str(tmp_path / "strip.png"), segments=[curated_segment((30, 600), "a rim")])
    report = curate([masks], tmp_path / "ds", source="one")
    assert report.done == 1 and report.failed == 0
    Image.fromarray(data.coffee()[:3]).save(tmp_path / "thin.png")
    thin = ImageItem(path=str(tmp_path / "thin.png"), segments=[curated_segment((3, 600), "a rim")])
    assert curate([thin], tmp_path / "ds", source="one").done == 1
    captioned = ImageItem(path=str(tmp_path / "thin.png"), captions=[TextRef("a cup", "coco", "caption")])
    refused = curate([captioned], tmp_path / "other", source="two", grounder=lambda rgb, caption: [])
    assert refused.done == 0 and refused.failed == 1
    assert "600x3 px is too small or too narrow" in (tmp_path / "other" / "failures.jsonl").read_text()


def test_a_second_source_of_the_same_photo_adds_its_pairs(tmp_path, photos):
    item = lambda text: ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), text)])  # noqa: E731
    assert curate([item("a cat")], tmp_path / "ds", source="one").done == 1
    assert curate([item("a tabby")], tmp_path / "ds", source="two").done == 1
    again = curate([item("a tabby")], tmp_path / "ds", source="two")
    assert (again.done, again.skipped) == (0, 1)
    texts = sorted(t.text for r in read_records(tmp_path / "ds") for s in read_segments(r) for t in s.texts)
    assert texts == ["a cat", "a tabby"]
    # One photo, not two: counted once, and trained as one sample whose duplicate masks merged their texts.
    from usesearch.curation.dataset import stats
    from usesearch.training.data import load_samples

    assert stats(tmp_path / "ds")["images"] == 1
    [sample] = load_samples([tmp_path / "ds"])
    assert len(sample.rles) == 1 and sorted(sample.texts[0]) == ["a cat", "a tabby"]
    # A third source repeating a pair of the first's (the same caption grounded again): Table 1 counted
    # it twice, and its mask; training, which merges them, sees each once.
    assert curate([item("a cat")], tmp_path / "ds", source="three").done == 1
    table = stats(tmp_path / "ds")
    [sample] = load_samples([tmp_path / "ds"])
    assert (table["images"], table["segments"], table["pairs_after_nms"], table["pairs"]) == (1, 1, 2, 2), table
    assert len(sample.rles) == table["segments"] and len(set(sample.texts[0])) == table["pairs_after_nms"]
    assert sum(table["pairs_by_source"].values()) == 2 and table["unique_expressions"] == 2


def test_a_run_cut_short_leaves_an_unfinished_curation_and_a_refused_one_leaves_nothing(tmp_path, photos):
    def cut_after_one():
        yield ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curate(cut_after_one(), tmp_path / "ds")
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["finished"] is False  # not taken as whole
    with pytest.raises(usesearch.UsesearchError, match="is an unfinished curation"):
        list(read_records(tmp_path / "ds"))
    assert curate([], tmp_path / "ds").done == 0 and len(list(read_records(tmp_path / "ds"))) == 1  # resumed
    # A re-run into the finished dataset, cut short in turn, leaves it unfinished: no partial data passes as whole.
    with pytest.raises(KeyboardInterrupt):
        curate(cut_after_one(), tmp_path / "ds", source="another")
    with pytest.raises(usesearch.UsesearchError, match="is an unfinished curation"):
        list(read_records(tmp_path / "ds"))
    curate([], tmp_path / "ds", source="another")
    assert len(list(read_records(tmp_path / "ds"))) == 2
    (tmp_path / "vg.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(CocoFileError):
        curate(visual_genome_source(tmp_path / "vg.json", photos), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    region = {"x": 1, "y": 1, "width": 20, "height": 20, "phrase": "a cat", "image_id": "cat"}
    whole = json.dumps([{"id": "cat", "regions": [region]}, {"id": "cup", "regions": [{**region, "image_id": "cup"}]}])
    (tmp_path / "vg.json").write_text(whole[: whole.index('{"id": "cup"') + 20])  # cut short in the second photo
    with pytest.raises(CocoFileError, match="damaged or cut short; the photos before the damage are curated"):
        curate(visual_genome_source(tmp_path / "vg.json", photos), tmp_path / "cut-vg", object())


def test_a_photo_name_that_is_not_utf8_is_curated_and_read_back_by_its_bytes(tmp_path, photos):
    import os

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/b\xff.png")
    (photos / "cat.png").rename(odd)
    curate(
        [ImageItem(path=odd, segments=[curated_segment((75, 113), "a cat")]), ImageItem(path=odd + "x")],
        tmp_path / "ds",
    )
    (record,) = read_records(tmp_path / "ds")
    assert record["path"] == odd and open(record["path"], "rb").read(4) == b"\x89PNG"
    assert _failures(tmp_path / "ds")[0]["path"] == odd + "x"  # the failure line too


def test_a_folder_that_cannot_be_listed_is_a_recorded_failure(tmp_path, photos, monkeypatch):
    import os

    from usesearch.curation.sources import folder_source

    (photos / "sub").mkdir()
    real_scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("/sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    items = list(folder_source(photos))
    report = curate([i for i in items if i.error is not None], tmp_path / "ds")
    assert report.failed == 1 and _failures(tmp_path / "ds")[0]["path"] == str(photos / "sub")
    assert "Permission denied" in _failures(tmp_path / "ds")[0]["error"]


def test_a_box_that_grounds_no_phrase_does_not_suppress_one_that_does():
    from usesearch.curation.expressions import Expression

    spans = [None, (0, 3), (4, 7), (8, 14), None]  # [CLS] the red rabbit [SEP]
    rabbit = Expression("the red rabbit", "the red rabbit", 0, 14, 4, 14)
    probs = torch.zeros(2, 5)
    probs[0, 1] = 0.7  # "the": in no phrase span (the phrase starts at "red")
    probs[1, 3] = 0.6  # "rabbit"
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9.8]])
    [match] = match_boxes_to_phrases(probs, boxes, spans, [rabbit])
    assert match.expression is rabbit and match.score == pytest.approx(0.6)


def test_a_photo_listed_twice_with_other_annotations_is_said_to_be_a_duplicate(tmp_path, photos):
    import shutil

    shutil.copy(photos / "cat.png", photos / "cat-copy.png")  # the same bytes under two names
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    coco = {
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "ear"}],
        "images": [
            {"id": 1, "file_name": "cat.png", "height": 75, "width": 113},
            {"id": 2, "file_name": "cat-copy.png", "height": 75, "width": 113},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square},
            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": square},
        ],
    }
    (tmp_path / "dup.json").write_text(json.dumps(coco))
    report = curate(coco_instances_source(tmp_path / "dup.json", photos), tmp_path / "ds")
    assert report.done == 1 and len(report.failures) == 1
    assert "the same photo as " in report.failures[0][1] and "merge its entries" in report.failures[0][1]


def test_caption_entries_naming_one_file_are_one_photo_with_all_their_captions(tmp_path, photos):
    # The second entry was skipped as the photo curated already: its captions were lost unsaid.
    images = [{"id": i, "file_name": "cat.png", "height": 75, "width": 113} for i in (1, 2)]
    images.append({"id": 3, "file_name": "cup.png", "height": 100, "width": 150})
    images.append({"id": 4, "file_name": "cup.png", "height": 9, "width": 9})  # another size: a text holds at any
    annotations = [{"image_id": i, "caption": c} for i, c in ((1, "a woman"), (2, "an astronaut"), (4, "a cup"))]
    (tmp_path / "caps.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    items = list(coco_captions_source(tmp_path / "caps.json", photos))
    assert [(i.path.rsplit("/", 1)[1], [c.text for c in i.captions]) for i in items] == [
        ("cat.png", ["a woman", "an astronaut"]),
        ("cup.png", ["a cup"]),
    ]
    said = [[f"{error.kind}: {error}" for _, _, error in i.problems] for i in items]
    assert said == [
        ["duplicate photo: image entries 1 and 2 name the same file: their captions are curated together"],
        ["duplicate photo: image entries 3 and 4 name the same file: their captions are curated together"],
    ], said


def test_instances_faults_of_a_repeat_spelled_otherwise_or_a_dropped_entry_are_recorded(tmp_path, photos):
    # Keyed by the repeat's own spelling ("./cat.png") or by a file no kept entry names, they were lost unsaid.
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    coco = {
        "categories": [{"id": 1, "name": "cat"}],
        "images": [
            {"id": 1, "file_name": "cat.png", "height": 75, "width": 113},
            {"id": 2, "file_name": "./cat.png", "height": 75, "width": 113},
            {"id": 1, "file_name": "other.png", "height": 9, "width": 9},  # its id repeated: dropped
        ],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "segmentation": square} for i in (1, 2)],
    }
    (tmp_path / "i.json").write_text(json.dumps(coco))
    said = [
        f"{e.kind}: {e}" for item in coco_instances_source(tmp_path / "i.json", photos) for _, _, e in item.problems
    ]
    assert sorted(said) == [
        "duplicate id: image id 1 repeated",
        "duplicate photo: image entries 1 and 2 name the same file: their annotations are indexed together",
    ], said


def test_a_caption_or_region_changed_in_the_source_since_curated_is_said_not_skipped(tmp_path, photos):
    """A caption added to a file curated before was skipped with the photo as done (only
    COCO instances were compared), so the new text never reached the dataset, unsaid."""
    from usesearch.curation.pipeline import source_digest
    from usesearch.curation.records import BoxText

    def captioned(*texts):
        return ImageItem(path=str(photos / "cat.png"), captions=[TextRef(t, "gt_caption", "caption") for t in texts])

    ground_nothing = lambda rgb, caption: []  # noqa: E731 - (no model: the record is what is compared)
    assert curate([captioned("a cat")], tmp_path / "ds", source="coco-captions", grounder=ground_nothing).done == 1
    same = curate([captioned("a cat")], tmp_path / "ds", source="coco-captions", grounder=ground_nothing)
    assert (same.done, same.skipped, same.failed) == (0, 1, 0)
    added = curate([captioned("a cat", "a tabby")], tmp_path / "ds", source="coco-captions", grounder=ground_nothing)
    assert (added.done, added.skipped, added.failed) == (0, 0, 1)
    assert "its captions in the source changed since it was curated" in added.failures[0][1], added.failures
    # Visual Genome's regions alike: a region added or moved changes what the record is made of; their order not.
    region = lambda text, box=(1.0, 1.0, 5.0, 5.0): BoxText(box, [TextRef(text, "vg", "region")])  # noqa: E731
    regions = lambda *boxes: ImageItem(path="p.jpg", boxes=list(boxes))  # noqa: E731
    face, nose = region("a face"), region("a nose", (2.0, 2.0, 3.0, 3.0))
    assert source_digest(regions(face, nose)) == source_digest(regions(nose, face))
    assert source_digest(regions(face)) != source_digest(regions(face, nose))
    assert source_digest(regions(face)) != source_digest(regions(region("a face", (1.0, 1.0, 5.0, 6.0))))
    assert source_digest(ImageItem(path="p.jpg")) is None  # a folder's photo: its pixels alone
