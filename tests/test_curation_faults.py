"""Curation keeps going through what real sources hold: broken annotations, missing or
rotated photos, a second source of the same photo, torn caches, changed models or
settings, and a second writer."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import usesearch
from usesearch.curation.cache import StageCache
from usesearch.curation.dataset import DatasetWriter, read_records, read_segments
from usesearch.curation.grounding import match_boxes_to_phrases
from usesearch.curation.masks import BoxMaskConfig
from usesearch.curation.pipeline import curate
from usesearch.curation.records import BoxText, ImageItem, Segment, TextRef
from usesearch.curation.sources import coco_captions_source, coco_instances_source, visual_genome_source
from usesearch.errors import CocoFileError, CurationConfigError
from usesearch.masks import rle


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


def _segment(hw, text):
    mask = np.zeros(hw, bool)
    mask[5:20, 5:20] = True
    encoded = rle.encode(mask)
    return Segment(
        rle=encoded, bbox=tuple(rle.bbox(encoded)), area=rle.area(encoded), texts=[TextRef(text, "vg", "region")]
    )


def test_a_strip_is_refused_only_where_a_captioner_or_grounder_would_shrink_it(tmp_path):
    """A 3 px strip failed deep in the grounder; its ground-truth masks need no model
    that shrinks it, so a source of masks curates it and one of captions refuses it."""
    Image.fromarray(data.coffee()[:30]).save(tmp_path / "strip.png")
    masks = ImageItem(path=str(tmp_path / "strip.png"), segments=[_segment((30, 600), "a rim")])
    report = curate([masks], tmp_path / "ds", source="one")
    assert report.done == 1 and report.failed == 0
    Image.fromarray(data.coffee()[:3]).save(tmp_path / "thin.png")
    thin = ImageItem(path=str(tmp_path / "thin.png"), segments=[_segment((3, 600), "a rim")])
    assert curate([thin], tmp_path / "ds", source="one").done == 1
    captioned = ImageItem(path=str(tmp_path / "thin.png"), captions=[TextRef("a cup", "coco", "caption")])
    refused = curate([captioned], tmp_path / "other", source="two", grounder=lambda rgb, caption: [])
    assert refused.done == 0 and refused.failed == 1
    assert "600x3 px is too small or too narrow" in (tmp_path / "other" / "failures.jsonl").read_text()


def test_a_second_source_of_the_same_photo_adds_its_pairs(tmp_path, photos):
    item = lambda text: ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), text)])  # noqa: E731
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


def test_other_mask_settings_on_a_curated_folder_are_refused(tmp_path, photos):
    cat = ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), "a cat")])
    curate([cat], tmp_path / "ds", mask_config=BoxMaskConfig())
    with pytest.raises(CurationConfigError, match="pred_iou_thresh 0.6 \\(now 0.8\\)"):
        curate([], tmp_path / "ds", mask_config=BoxMaskConfig(pred_iou_thresh=0.8))
    # A source with given masks runs no SAM: it joins whatever SAM settings the folder has, both ways round.
    cup = ImageItem(path=str(photos / "cup.png"), segments=[_segment((100, 150), "a cup")])
    assert curate([cup], tmp_path / "ds", mask_config=None, source="given").done == 1
    curate([cup], tmp_path / "other", mask_config=None, source="given")
    assert curate([cat], tmp_path / "other", mask_config=BoxMaskConfig(pred_iou_thresh=0.8)).done == 1

    def cut_after_one():
        yield ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), "a cat")])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an unfinished curation keeps its settings too
        curate(cut_after_one(), tmp_path / "cut", mask_config=BoxMaskConfig(pred_iou_thresh=0.5))
    with pytest.raises(CurationConfigError, match="pred_iou_thresh 0.5 \\(now 0.6\\)"):
        curate([], tmp_path / "cut", mask_config=BoxMaskConfig())
    # With no predictor (SAM cannot run) the Python API records no SAM settings by default.
    curate([cup], tmp_path / "api", source="given")
    assert "mask_config" not in json.loads((tmp_path / "api" / "manifest.json").read_text())


def test_a_run_cut_short_leaves_an_unfinished_curation_and_a_refused_one_leaves_nothing(tmp_path, photos):
    def cut_after_one():
        yield ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), "a cat")])
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


class CountingGrounder:
    def __init__(self, identity):
        self.identity, self.calls = identity, 0

    def __call__(self, rgb, caption):
        self.calls += 1
        return [BoxText((0, 0, rgb.shape[1], rgb.shape[0]), [TextRef("a cat", caption.source, "phrase")])]


def test_cached_boxes_are_reused_for_the_same_grounder_and_another_grounder_is_refused(tmp_path, photos):
    """A dataset's boxes come from one grounder: another one's would be mixed in silently
    beside the photos already done (as another SAM's masks, or captioner's texts)."""
    item = ImageItem(path=str(photos / "cat.png"), captions=[TextRef("A cat.", "gt_caption", "caption")])
    first, same, other = (CountingGrounder(i) for i in ("dino-a|box=0.05", "dino-a|box=0.05", "dino-a|box=0.3"))
    for n, grounder in enumerate((first, same)):
        curate([item], tmp_path / "ds", object(), grounder=grounder, source="s")  # whole-photo boxes: no SAM call
        (tmp_path / "ds" / "shards").rename(tmp_path / f"shards-{n}")  # as if killed before its record
    with pytest.raises(CurationConfigError, match=r"grounder dino-a\|box=0.05 \(now dino-a\|box=0.3\)"):
        curate([item], tmp_path / "ds", object(), grounder=other, source="s")
    assert (first.calls, same.calls, other.calls) == (1, 0, 0)  # the same identity reused the cache


def test_a_dataset_refuses_another_sam_and_a_manifest_that_is_not_its_own(tmp_path, photos):
    item = ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), "a cat")])
    curate([item], tmp_path / "ds", object(), sam="sam vit_b sha256:aaaa", source="one")
    curate([item], tmp_path / "ds", source="two")  # given masks: no SAM ran, nothing to compare
    with pytest.raises(CurationConfigError, match="sam sam vit_b sha256:aaaa \\(now sam vit_b sha256:bbbb\\)"):
        curate([item], tmp_path / "ds", object(), sam="sam vit_b sha256:bbbb", source="three")
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["models"] == {"sam": "sam vit_b sha256:aaaa"}
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    with pytest.raises(usesearch.UsesearchError, match="is not a curated dataset's manifest"):
        curate([item], tmp_path / "web")
    assert json.loads((tmp_path / "web" / "manifest.json").read_text()) == {"name": "my web app", "icons": []}


def test_a_photo_name_that_is_not_utf8_is_curated_and_read_back_by_its_bytes(tmp_path, photos):
    import os

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/b\xff.png")
    (photos / "cat.png").rename(odd)
    curate([ImageItem(path=odd, segments=[_segment((75, 113), "a cat")]), ImageItem(path=odd + "x")], tmp_path / "ds")
    (record,) = read_records(tmp_path / "ds")
    assert record["path"] == odd and open(record["path"], "rb").read(4) == b"\x89PNG"
    assert _failures(tmp_path / "ds")[0]["path"] == odd + "x"  # the failure line too


def test_a_shard_the_manifest_lists_and_the_disk_lacks_is_refused(tmp_path, photos):
    item = ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), "a cat")])
    curate([item], tmp_path / "ds", source="one")
    curate([item], tmp_path / "ds", source="two")
    (tmp_path / "ds" / "shards" / "shard-00000.jsonl").unlink()
    with pytest.raises(usesearch.UsesearchError, match="shard shard-00000.jsonl is missing: restore it"):
        list(read_records(tmp_path / "ds"))


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


def test_a_torn_cache_line_does_not_swallow_the_next_entry(tmp_path):
    path = tmp_path / "boxes.jsonl"
    cache = StageCache(path)
    cache.put("a", 1)
    with open(path, "a") as f:
        f.write('{"key": "b", "val')  # killed mid-write
    reopened = StageCache(path)
    reopened.put("c", 3)
    assert (StageCache(path).get("a"), StageCache(path).get("c")) == (1, 3)


def test_one_writer_a_folder_and_new_shards_after_the_highest(tmp_path):
    writer = DatasetWriter(tmp_path)
    with pytest.raises(usesearch.UsesearchError, match="another curate run .* is writing to"):
        DatasetWriter(tmp_path)
    writer.write("a.png", "0" * 64, (4, 4), [], 0)
    writer.close()
    (tmp_path / "shards" / "shard-00000.jsonl").rename(tmp_path / "shards" / "shard-00003.jsonl")
    later = DatasetWriter(tmp_path)
    later.write("b.png", "1" * 64, (4, 4), [], 0)
    later.close()
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert shards == ["shard-00003.jsonl", "shard-00004.jsonl"]
    assert (tmp_path / "shards" / "shard-00003.jsonl").read_text().count("\n") == 1


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


def test_another_runs_end_does_not_finish_a_run_cut_short(tmp_path, photos):
    """Folder run cut short, then a whole run of another source: the dataset passed as
    finished, the first run's photos silently missing."""
    cat = ImageItem(path=str(photos / "cat.png"), segments=[_segment((75, 113), "a cat")])

    def cut_after_one():
        yield cat
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # by a version that spelled --input-format --source
        curate(cut_after_one(), tmp_path / "ds", source="folder", run="--source folder /photos")
    curate([cat], tmp_path / "ds", source="coco-instances", run="--input-format coco-instances /inst.json")
    # (the second run wrote the manifest again, its runs in today's spelling)
    with pytest.raises(usesearch.UsesearchError, match=r"cut short: --input-format folder /photos\)"):
        list(read_records(tmp_path / "ds"))
    curate([cat], tmp_path / "ds", source="folder", run="--input-format folder /photos")  # that run again: it ends
    assert len(list(read_records(tmp_path / "ds"))) == 2


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


def test_a_local_model_folder_is_one_identity_however_it_is_typed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from usesearch.curation.pretrained import PretrainedStage

    folder = tmp_path / "gd"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"x" * 10)

    def identity(name):
        model = torch.nn.Linear(1, 1)
        model.config = SimpleNamespace(_name_or_path=name)
        return PretrainedStage(model, None).model_identity()

    monkeypatch.chdir(tmp_path)
    assert identity("gd") == identity(str(folder)) == identity("gd/") == identity("./gd")
    before = identity("gd")
    (folder / "config.json").write_text('{"a": 2}')  # another model saved under the same name
    assert identity("gd") != before


def test_a_sam_checkpoint_of_the_users_is_hashed_once_per_content(tmp_path, monkeypatch):
    from usesearch.models import weights

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "mine.pth"
    checkpoint.write_bytes(b"weights")
    first = weights.remembered_sha256(checkpoint)
    monkeypatch.setattr(weights, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert weights.remembered_sha256(checkpoint) == first
    assert list(tmp_path.iterdir()) != [] and not (tmp_path / "mine.pth.sha256").exists()  # nothing beside it
    monkeypatch.undo()
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path / "home"))
    checkpoint.write_bytes(b"other weights")
    assert weights.remembered_sha256(checkpoint) != first
