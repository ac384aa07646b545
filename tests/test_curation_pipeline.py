"""Curation end to end on constructed COCO / Visual Genome sources with the tiny SAM."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor
from skimage import data
from typer.testing import CliRunner

import usesearch
from usesearch.cli.app import app
from usesearch.curation.dataset import read_records, read_segments, stats
from usesearch.curation.masks import BoxMaskConfig
from usesearch.curation.pipeline import curate
from usesearch.curation.sources import coco_captions_source, coco_instances_source, visual_genome_source
from usesearch.errors import CurationConfigError
from usesearch.masks.sam import load_sam


@pytest.fixture()
def coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.chelsea()[::4, ::4]).save(images / "cat.jpg")  # 75 x 113
    Image.fromarray(data.coffee()[::4, ::4]).save(images / "cup.jpg")  # 100 x 150
    (images / "broken.jpg").write_text("nope")
    square = mask_utils.encode(np.asfortranarray(np.pad(np.ones((20, 20), np.uint8), ((10, 45), (10, 83)))))
    instances = {
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "cup"}],
        "images": [
            {"id": 1, "file_name": "cat.jpg", "height": 75, "width": 113},
            {"id": 2, "file_name": "cup.jpg", "height": 100, "width": 150},
            {"id": 3, "file_name": "broken.jpg", "height": 10, "width": 10},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [75, 113], "counts": square["counts"].decode()},
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[10, 10, 30, 10, 30, 31, 10, 31]],
            },  # same square
            {"id": 3, "image_id": 2, "category_id": 2, "segmentation": [[40, 20, 110, 20, 110, 80, 40, 80]]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    return tmp_path, images, path


def test_coco_instances_become_pairs_with_nms_and_failures_recorded(coco):
    root, images, ann = coco
    report = curate(coco_instances_source(ann, images), root / "ds")
    assert (report.done, report.failed) == (2, 1) and "broken.jpg" in report.failures[0][0]
    records = {r["path"].rsplit("/", 1)[1]: r for r in read_records(root / "ds")}
    cat = read_segments(records["cat.jpg"])
    assert records["cat.jpg"]["pairs_before_nms"] == 2 and len(cat) == 1  # duplicates merged
    assert [t.text for t in cat[0].texts] == ["cat"] and cat[0].texts[0].source == "coco_category"
    decoded = mask_utils.decode({"size": cat[0].rle["size"], "counts": cat[0].rle["counts"].encode()})
    assert decoded.shape == (75, 113) and decoded.sum() == cat[0].area
    s = stats(root / "ds")
    assert (s["images"], s["pairs"], s["pairs_after_nms"], s["unique_expressions"]) == (2, 3, 2, 2)
    assert s["pairs_by_source"] == {"coco_category": 2}
    again = curate(coco_instances_source(ann, images), root / "ds")
    assert (again.done, again.skipped) == (0, 2)  # resumed: nothing redone
    assert len(list(read_records(root / "ds"))) == 2


def test_visual_genome_boxes_go_through_sam(tmp_path):
    images = tmp_path / "vg"
    images.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(images / "7.jpg")
    regions = [
        {
            "id": 7,
            "regions": [
                {
                    "region_id": 1,
                    "image_id": 7,
                    "x": 10,
                    "y": 10,
                    "width": 50,
                    "height": 60,
                    "phrase": "the astronaut's face",
                },
                {"region_id": 2, "image_id": 7, "x": 0, "y": 0, "width": 128, "height": 128, "phrase": "a photo"},
            ],
        }
    ]
    ann = tmp_path / "region_descriptions.json"
    ann.write_text(json.dumps(regions))
    predictor = SamPredictor(load_sam(usesearch.get_preset("tiny").sam, "tiny"))
    loose = BoxMaskConfig(pred_iou_thresh=-10, stability_score_thresh=-10, min_region_area=0)
    report = curate(visual_genome_source(ann, images), tmp_path / "ds", predictor, mask_config=loose)
    assert report.done == 1 and report.pairs == 2
    [record] = read_records(tmp_path / "ds")
    texts = {t.text: t for seg in read_segments(record) for t in seg.texts}
    assert set(texts) == {"the astronaut's face", "a photo"} and texts["a photo"].source == "vg"
    whole = [s for s in read_segments(record) if any(t.text == "a photo" for t in s.texts)][0]
    assert whole.area == 128 * 128  # the >90% box became the whole image


def test_captioned_sources_are_refused_without_a_grounder(tmp_path, coco):
    root, images, _ = coco
    captions = root / "captions.json"
    captions.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "cat.jpg"}], "annotations": [{"image_id": 1, "caption": "A cat."}]}
        )
    )
    with pytest.raises(CurationConfigError, match="no grounding model"):
        curate(coco_captions_source(captions, images), tmp_path / "ds")


def test_cli_curate_run_and_stats(coco):
    root, images, ann = coco
    runner = CliRunner()
    run = runner.invoke(
        app,
        [
            "curate",
            "run",
            str(ann),
            "--input-format",
            "coco-instances",
            "--images",
            str(images),
            "--dataset-dir",
            str(root / "cli-ds"),
            "--preset",
            "tiny",
        ],
    )
    assert run.exit_code == 0, run.output
    result = runner.invoke(app, ["curate", "stats", str(root / "cli-ds"), "--json"])
    assert json.loads(result.output)["pairs_after_nms"] == 2
    table = runner.invoke(app, ["curate", "stats", str(root / "cli-ds")])  # as a person reads it, no dict's repr
    assert table.exit_code == 0 and "pairs_by_source: coco_category 2" in table.output, table.output


def _curated_with_a_crowd(coco):
    """The coco fixture curated with its cup (annotation 3) a crowd region: the dataset's folder."""
    root, images, ann = coco
    instances = json.loads(ann.read_text())
    for a in instances["annotations"]:
        a["iscrowd"] = int(a["id"] == 3)
    ann.write_text(json.dumps(instances))
    curate(coco_instances_source(ann, images), root / "ds")
    return root


def test_a_crowd_annotations_text_is_tagged_crowd(coco):
    """Crowd regions (iscrowd=1: many people under one "person") became ordinary pairs,
    and the shard keeps no iscrowd: a researcher could not leave them out."""
    root = _curated_with_a_crowd(coco)
    kinds = {t.kind for r in read_records(root / "ds") for s in read_segments(r) for t in s.texts}
    assert kinds == {"category", "crowd"}
    assert stats(root / "ds")["pairs_by_kind"] == {"category": 1, "crowd": 1}


def test_training_can_leave_crowd_texts_out(coco):
    """A crowd region's class names many objects under one mask: a training set that
    leaves them out drops their texts, and a segment that had only those."""
    from usesearch.training.config import TrainConfig
    from usesearch.training.data import load_samples

    root = _curated_with_a_crowd(coco)

    def texts(samples):
        return {s.path.rsplit("/", 1)[1]: s.texts for s in samples}

    assert texts(load_samples([root / "ds"])) == {"cat.jpg": [["cat"]], "cup.jpg": [["cup"]]}
    assert texts(load_samples([root / "ds"], TrainConfig(skip_kinds=("crowd",)).skip_kinds)) == {"cat.jpg": [["cat"]]}
    with pytest.raises(ValueError, match="skip kind 'crowds': give one of phrase, expression"):
        TrainConfig(skip_kinds=("crowds",))
    with pytest.raises(ValueError, match="skip kind 'caption': no segment's text is a caption"):  # (taken, did nothing)
        TrainConfig(skip_kinds=("caption",))
    run = root / "run"
    only_crowd = ["train", str(root / "ds"), "--run-dir", str(run), "--skip-kind", "crowd", "--skip-kind", "category"]
    result = CliRunner().invoke(app, only_crowd)
    said = " ".join(result.output.split())
    assert result.exit_code != 0 and f"{root / 'ds'} holds no segment with a text (other than category, crowd" in said
    assert not run.exists()  # refused before a run folder is made
    kinds_seen: set[str] = set()  # a kind the data does not hold (mistaken for another): said, as it leaves nothing out
    assert texts(load_samples([root / "ds"], ("crowd", "region"), kinds_seen)) == {"cat.jpg": [["cat"]]}
    assert kinds_seen == {"category", "crowd"}
    result = CliRunner().invoke(app, [*only_crowd, "--skip-kind", "region"])
    said = " ".join(result.output.split())
    assert "--skip-kind region: the data holds no text of that kind; it leaves nothing out" in said, said
    assert "--skip-kind crowd:" not in said and "--skip-kind category:" not in said


def test_a_full_disk_says_which_dataset_and_that_the_run_resumes(coco, monkeypatch):
    """It said only "disk full: [Errno 28] No space left on device": no folder, no next step."""
    import errno

    from usesearch.curation.dataset import DatasetWriter

    root, images, ann = coco
    real, calls = DatasetWriter.write, []

    def full_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "write", full_on_second)
    args = ["curate", "run", str(ann), "--input-format", "coco-instances", "--images", str(images)]
    result = CliRunner().invoke(app, [*args, "--dataset-dir", str(root / "ds")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"disk full: cannot write the dataset in {root / 'ds'}; free space and run the same command again" in said
    monkeypatch.setattr(DatasetWriter, "write", real)
    again = CliRunner().invoke(app, [*args, "--dataset-dir", str(root / "ds"), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 1, again.output  # the first photo kept
