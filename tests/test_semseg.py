"""Paper §4.3: softmax per mask, probabilities summed per pixel, argmax; mIoU checked
against a reference written separately here."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from usesearch.cli.app import app
from usesearch.io.atomic import save_picture
from usesearch.tasks.label_maps import UNLABELLED
from usesearch.tasks.semseg import confusion, miou, pixel_labels
from usesearch.training.synthetic import semseg_classes, write_semseg


def test_pixels_sum_probabilities_over_covering_masks():
    masks = np.zeros((3, 2, 3), bool)
    masks[:, 0, 0] = True  # one pixel under all three masks
    masks[0, 1, 1] = True  # one pixel under the confident mask only
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
    labels = pixel_labels(masks, probs)
    assert labels[0, 0] == 1  # summed: 1.3 vs 1.7 (the single most confident mask would say 0)
    assert labels[1, 1] == 0
    assert labels[0, 2] == UNLABELLED and labels[1, 2] == UNLABELLED  # no mask covers it


def reference_miou(pred, gt, num_classes, ignore=255):
    """Over the classes the ground truth has (detectron2's rule)."""
    ious = []
    for c in range(num_classes):
        p, g = (pred == c) & (gt != ignore), (gt == c)
        if g.any():
            ious.append((p & g).sum() / (p | g).sum())
    return float(np.mean(ious))


def test_a_class_predicted_but_never_labelled_does_not_count():
    """detectron2's SemSegEvaluator gives 0.75 here (classes 0 and 1); counting class 2,
    which only the prediction has, as an IoU of 0 gave 0.5."""
    gt, pred = np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 2]])
    mean, per_class = miou(confusion(pred, gt, 3))
    assert mean == pytest.approx(0.75) and np.isnan(per_class[2])


def test_miou_matches_a_direct_reference():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (40, 50))
    gt[:5] = 255  # ignored rows
    pred = np.where(rng.random((40, 50)) < 0.6, gt, rng.integers(0, 5, (40, 50)))
    pred[pred == 255] = 0
    pred[-3:, :] = UNLABELLED  # unlabelled predictions are misses
    mean, per_class = miou(confusion(pred, gt, 5))
    assert mean == pytest.approx(reference_miou(pred, gt, 5), abs=1e-12)
    assert per_class.shape == (5,)


def test_segment_and_eval_semseg_cli_on_synthetic_data(tmp_path):
    root = write_semseg(tmp_path / "semseg", 3, seed=4)
    runner = CliRunner()
    names = semseg_classes()
    out, overlay = tmp_path / "labels.png", tmp_path / "overlay.png"
    result = runner.invoke(
        app,
        [
            "segment",
            str(root / "images" / "00000.png"),
            "--classes",
            ",".join(names),
            "--out",
            str(out),
            "--overlay",
            str(overlay),
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    labels = np.asarray(Image.open(out))
    assert labels.shape == (128, 128) and set(np.unique(labels)) <= set(range(len(names))) | {UNLABELLED}
    assert Image.open(overlay).size[1] >= 128
    report = tmp_path / "miou.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "semseg",
            "--images",
            str(root / "images"),
            "--labels",
            str(root / "labels"),
            "--classes-file",
            str(root / "classes.txt"),
            "--out",
            str(report),
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["images"] == 3 and 0 <= data["mIoU"] <= 1 and set(data["per_class"]) == set(names)


@pytest.mark.parametrize("at", [3, 1], ids=["on the third", "on the first"])
@pytest.mark.parametrize("task", ["semseg", "parts"])
def test_ctrl_c_in_an_evaluation_reports_the_images_done(tmp_path, monkeypatch, task, at):
    """An evaluation runs for hours; Ctrl-C lost all of it. Now the result covers the
    images evaluated whole, says it was interrupted, is written, and the exit is 130.
    Before the first image: no score (null), where semseg wrote NaN (no JSON) and parts 0.0."""
    from usesearch.tasks import semseg
    from usesearch.training.synthetic import write_parts_coco, write_semseg

    step = "segment_image" if task == "semseg" else "class_probabilities"
    real, calls = getattr(semseg, step), []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(semseg, step, interrupted_on_the_third)
    if task == "semseg":
        root = write_semseg(tmp_path / "data", 4, seed=4)
        args = ["--labels", str(root / "labels"), "--classes-file", str(root / "classes.txt")]
    else:
        args = ["--coco", str(write_parts_coco(tmp_path / "data", 4, seed=5))]
    out = tmp_path / "result.json"
    command = ["eval", task, "--images", str(tmp_path / "data" / "images"), *args, "--out", str(out), "-p", "tiny"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 130 and f"interrupted: {at - 1} of 4 images" in result.output, result.output

    def no_nan(constant):
        raise ValueError(f"{constant} is no JSON")

    data = json.loads(out.read_text(), parse_constant=no_nan)
    assert data["interrupted"] == {"done": at - 1, "of": 4} and (task == "parts" or data["images"] == at - 1)
    score = data["mIoU" if task == "semseg" else "mAP"]
    assert (score is None) == (at == 1)


def test_an_evaluation_whose_file_cannot_be_written_prints_its_result_first(tmp_path, monkeypatch):
    """`--out` checked writable at the start, then unwritable at the end (a full disk, a
    mount gone read-only): the result was lost, one error line alone after the whole run."""
    import errno

    from usesearch.cli import eval_report
    from usesearch.training.synthetic import write_semseg

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eval_report, "write_atomic", disk_full)
    root = write_semseg(tmp_path / "data", 2, seed=4)
    args = ["--labels", str(root / "labels"), "--classes-file", str(root / "classes.txt"), "-p", "tiny"]
    command = ["eval", "semseg", "--images", str(root / "images"), *args, "--out", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, [*command, "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["images"] == 2  # the result, whole, on stdout
    assert f"cannot write {tmp_path / 'r.json'}: disk full (the result is printed above)" in result.stderr
    table = CliRunner().invoke(app, command)
    assert table.exit_code == 2 and "mIoU" in table.stdout and "disk full" in table.stderr, table.output


def test_pictures_segment_wrote_among_the_photos_are_no_photos_to_evaluate(tmp_path):
    """A label map `segment` wrote into the images folder counted as an image with no label
    PNG ("1 of 4 images have no label PNG"); `index` already leaves such pictures out."""
    from usesearch.errors import UsesearchError
    from usesearch.io.atomic import save_picture
    from usesearch.tasks.semseg import ground_truth_pairs
    from usesearch.training.synthetic import write_semseg

    root = write_semseg(tmp_path / "data", 3, seed=4)
    save_picture(Image.fromarray(np.zeros((8, 8), np.uint8)), root / "images" / "seg.png")
    assert [image.name for image, _ in ground_truth_pairs(root / "images", root / "labels")] == [
        p.name for p in sorted((root / "images").iterdir()) if p.name != "seg.png"
    ]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "photo.png")  # not ours: still said
    with pytest.raises(UsesearchError, match="1 of 4 images have no label PNG .* .first: photo.png"):
        ground_truth_pairs(root / "images", root / "labels")


def test_only_masks_whose_top_class_is_a_part_are_scored():
    from usesearch.tasks.parts import background_classes, part_detections

    assert len(background_classes()) == 91 + 11  # COCO-stuff classes + PartImageNet super-categories
    probs = np.array([[0.7, 0.1, 0.2], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])  # 2 parts, 1 background class
    assert part_detections(probs, num_parts=2) == [(0, 0, 0.7), (2, 1, 0.5)]


def test_eval_parts_cli_on_synthetic_parts(tmp_path):
    from usesearch.training.synthetic import write_parts_coco

    coco_json = write_parts_coco(tmp_path / "parts", 3, seed=5)
    report = tmp_path / "parts.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "parts",
            "--images",
            str(tmp_path / "parts" / "images"),
            "--coco",
            str(coco_json),
            "--out",
            str(report),
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert 0.0 <= data["mAP"] <= 1.0 and "mAP_mask@[0.5:0.95]" in result.output


def _photos_one_folder_down(root):
    (root / "images" / "sub").mkdir()
    for photo in sorted((root / "images").glob("*.*")):
        photo.rename(root / "images" / "sub" / photo.name)


def _label(path, value, shape=(128, 128)):
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda root: [p.unlink() for p in (root / "images").iterdir()], "holds no image"),
        (_photos_one_folder_down, "its subfolders are not searched"),  # (as the walk does not go there)
        (lambda root: (root / "labels" / "00001.png").unlink(), "1 of 3 images have no label PNG"),
        (lambda root: _label(root / "labels" / "00002.png", 0, (64, 128)), "is 128x64 but its image is 128x128"),
        (lambda root: _label(root / "labels" / "00002.png", 200), "holds class id 200, past the"),
        (lambda root: [_label(p, 255) for p in (root / "labels").iterdir()], "no pixel of"),
        (lambda root: _label(root / "images" / "00001.jpg", 0), "share a name: one label PNG"),
        (lambda root: _label(root / "images" / "00001.png", 0), "one folder"),
        (  # class 255 of 300 would be skipped as unlabelled: a wrong mIoU without a word
            lambda root: (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(300))),
            "--ignore-index 255 is the id of a class among the 300 given",
        ),
    ],
)
def test_eval_semseg_refuses_ground_truth_that_cannot_be_scored_in_one_line(tmp_path, spoil, why, monkeypatch):
    """An empty folder, a missing or misfit label map, a class id past the class list, or
    no labelled pixel would give a nan, a traceback or a wrong mIoU: each is one line,
    said before any model is built."""
    from usesearch.cli import eval as eval_cli

    monkeypatch.setattr(eval_cli.Segmenter, "build", lambda *a: pytest.fail("models built before the check"))
    root = write_semseg(tmp_path / "semseg", 3, seed=4)
    spoil(root)
    labels = root / ("images" if why == "one folder" else "labels")
    args = ["eval", "semseg", "--images", str(root / "images"), "--labels", str(labels)]
    result = CliRunner().invoke(app, [*args, "--classes-file", str(root / "classes.txt"), "--preset", "tiny"])
    assert result.exit_code == 2, result.output
    assert why in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_class_lists_keep_every_id_in_its_place(tmp_path, monkeypatch):
    """A class's id is its place in the list: a blank line inside the file, or both
    ways at once, is refused; a name given twice keeps both scores."""
    from usesearch.cli.class_lists import class_list, report_names
    from usesearch.errors import UsesearchError

    gapped = tmp_path / "gapped.txt"
    gapped.write_text("cat\n\ncup\n")
    with pytest.raises(UsesearchError, match="line 2 is blank"):
        class_list(None, gapped)
    trailing = tmp_path / "trailing.txt"
    trailing.write_text("cat\ncup\n\n")
    assert class_list(None, trailing) == ["cat", "cup"]
    with pytest.raises(UsesearchError, match="not both"):
        class_list("cat,cup", trailing)
    with pytest.raises(UsesearchError, match="an empty name at place 2"):
        class_list("cat,,cup", None)
    with pytest.raises(UsesearchError, match="an empty name at place 1 .a name with a comma: --classes-file"):
        class_list(",", None)  # (it said "give class names", not why, nor how to name "red, white and blue")
    assert report_names(["cat", "dog", "cat"]) == ["cat [0]", "dog", "cat [2]"]
    with pytest.raises(UsesearchError, match="66000 classes do not fit a 16-bit label map"):  # before any embedding
        class_list(",".join(f"c{i}" for i in range(66000)), None)
    # A file given to --classes was segmented against one class named after it.
    with pytest.raises(UsesearchError, match=f"--classes {trailing} names a file: give it with --classes-file"):
        class_list(str(trailing), None)
    (tmp_path / "sky").write_text("a file named like a class")  # a name, not a path: still a class
    monkeypatch.chdir(tmp_path)
    assert class_list("sky", None) == ["sky"]


def test_parts_of_the_same_name_keep_a_score_each(tmp_path):
    """Two categories named 'head' (of two supercategories) made one key of the report."""
    from pycocotools.coco import COCO

    from usesearch.masks import rle
    from usesearch.tasks.parts import mask_map
    from usesearch.training.synthetic import write_parts_coco

    coco_json = write_parts_coco(tmp_path / "parts", 2, seed=5)
    coco = json.loads(coco_json.read_text())
    coco["categories"] = [{"id": 1, "name": "head"}, {"id": 2, "name": "head"}]
    coco_json.write_text(json.dumps(coco))
    gt = COCO(str(coco_json))
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "segmentation": rle.encode(m)}
        for a in gt.dataset["annotations"]
        for m in [gt.annToMask(a).astype(bool)]
    ]
    _, per_category = mask_map(gt, results)
    assert sorted(per_category) == ["head [1]", "head [2]"] and set(per_category.values()) == {1.0}
    from usesearch.tasks.parts import check_ground_truth

    check_ground_truth(coco_json, tmp_path / "parts" / "images")  # (one name twice was refused as a fault)
    # No detection at all: every category still reported, at 0 (it reported none, where one
    # detection anywhere gave every category its 0.0), and one with no annotation at None.
    coco["categories"].append({"id": 3, "name": "tail"})
    coco_json.write_text(json.dumps(coco))
    overall, none_found = mask_map(COCO(str(coco_json)), [])
    assert overall == 0.0 and none_found == {"head [1]": 0.0, "head [2]": 0.0, "tail": None}, none_found


def test_reduce_zero_label_keeps_the_ignored_value_ignored(tmp_path):
    """ADE20K's layout: 0 is 'other' and ignored, 1.. are the classes; a pixel already
    at the ignored value stays ignored (255 - 1 would have made it class 254)."""
    from usesearch.tasks.semseg import read_ground_truth

    gt = np.array([[0, 1, 2, 255]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "l.png")
    read = read_ground_truth(tmp_path / "l.png", (1, 4), num_classes=2, ignore_index=255, reduce_zero_label=True)
    assert read.tolist() == [[255, 0, 1, 255]]


def test_segment_writes_its_overlay_as_any_picture_and_says_so(tmp_path):
    """The label map must be a PNG (exact values); the overlay is a picture for people."""
    root = write_semseg(tmp_path / "semseg", 1, seed=5)
    image, out, overlay = root / "images" / "00000.png", tmp_path / "l.png", tmp_path / "o.jpg"
    args = ["segment", str(image), "--classes", "red circle,blue square", "--out", str(out), "--overlay", str(overlay)]
    result = CliRunner().invoke(app, [*args, "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} and {overlay}" in result.output and Image.open(overlay).format == "JPEG"


def test_labels_made_a_band_of_rows_at_a_time_equal_the_whole_image_at_once(monkeypatch):
    """The banded pixel_labels against the whole-image computation it replaced (which
    held [classes, pixels] float32 scores: 29 GB for 300 classes at 24 megapixels)."""
    import torch

    import usesearch.tasks.semseg as semseg

    rng = np.random.default_rng(0)
    masks = rng.random((70, 37, 29)) < 0.3  # more masks than one chunk of 64
    probs = rng.random((70, 5)).astype(np.float32)
    scores = torch.zeros(5, 37 * 29)
    for start in range(0, 70, 64):
        block = torch.from_numpy(masks[start : start + 64].reshape(-1, 37 * 29)).float()
        scores += torch.from_numpy(probs[start : start + 64]).T @ block
    whole = scores.argmax(0).numpy().astype(np.uint8).reshape(37, 29)
    whole[~masks.any(0)] = UNLABELLED
    monkeypatch.setattr(semseg, "BAND_VALUES", 29 * 64 * 3)  # three rows a band: 13 bands, the last short
    np.testing.assert_array_equal(pixel_labels(masks, probs), whole)


def test_segment_and_evaluations_never_write_over_their_inputs_and_segment_refuses_a_class_named_twice(tmp_path):
    """`segment photo.png --out photo.png` replaced the photo with its label map; `eval
    parts --out` its COCO file, `eval semseg --out` a ground-truth label. Each is refused
    before any work, the input left as it was."""
    from usesearch.training.synthetic import write_parts_coco

    root = write_semseg(tmp_path / "semseg", 1, seed=5)
    photo = root / "images" / "00000.png"
    before = photo.read_bytes()
    names = ",".join(semseg_classes())
    runner = CliRunner()
    ours = tmp_path / "labels.png"  # a picture usesearch wrote, which an output may replace, segmented
    save_picture(Image.open(photo), ours)
    was = ours.read_bytes()
    segment = ["segment", str(photo), "--classes", names, "--preset", "tiny"]
    for args, said in (
        ([*segment, "--out", str(photo)], "is no picture usesearch wrote"),  # a photo: refused as any
        ([*segment, "--out", str(tmp_path / "a.png"), "--overlay", str(photo)], "is no picture usesearch wrote"),
        (["segment", str(ours), *segment[2:], "--out", str(ours)], "is the image input"),
        (["segment", str(ours), *segment[2:], "--out", str(tmp_path / "a.png"), "--overlay", str(ours)], "image input"),
        ([*segment, "--out", str(tmp_path / "a.png"), "--overlay", str(tmp_path / "a.png")], "name the same file"),
        # Its own picture as the photo (arguments swapped): segmented, as index and curate refuse it.
        (["segment", str(ours), *segment[2:], "--out", str(tmp_path / "a.png")], "a picture usesearch wrote"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and said in " ".join(result.output.replace("│", " ").split()), (
            args,
            result.output,
        )
    assert photo.read_bytes() == before and not (tmp_path / "a.png").exists() and ours.read_bytes() == was
    label = sorted((root / "labels").iterdir())[0]
    semseg = ["eval", "semseg", "--images", str(root / "images"), "--labels", str(root / "labels")]
    for out, said in ((label, "is no picture usesearch wrote"), (label.with_name("new.png"), "lies in --labels")):
        result = runner.invoke(app, [*semseg, "--classes", names, "--out", str(out), "--preset", "tiny"])
        assert result.exit_code == 2 and said in " ".join(result.output.replace("│", " ").split()), result.output
    assert not label.with_name("new.png").exists()
    beside = root / "images" / "report.json"  # no picture: never read as one, so allowed
    result = runner.invoke(app, [*semseg, "--classes", names, "--out", str(beside), "--preset", "tiny"])
    assert result.exit_code == 0 and json.loads(beside.read_text())["images"] == 1, result.output
    again = runner.invoke(app, [*semseg, "--classes", names, "--out", str(beside), "--preset", "tiny"])
    assert again.exit_code == 0, again.output  # a result of ours: replaced by the re-run
    precious = tmp_path / "precious.json"  # any other file: it was replaced without a word
    precious.write_text('{"mine": 1}')
    result = runner.invoke(app, [*semseg, "--classes", names, "--out", str(precious), "--preset", "tiny"])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "exists and is no result usesearch wrote: it would be replaced" in said, said
    assert precious.read_text() == '{"mine": 1}'
    coco = write_parts_coco(tmp_path / "parts", 1, seed=5)
    images = ["--images", str(coco.parent / "images")]
    result = runner.invoke(app, ["eval", "parts", *images, "--coco", str(coco), "--out", str(coco), "--preset", "tiny"])
    said = " ".join(result.output.replace("│", " ").split())  # (refused as any file that is no result of ours)
    assert result.exit_code == 2 and "exists and is no result usesearch wrote" in said, result.output
    twice = runner.invoke(app, ["segment", str(photo), "--classes", "sky, cat,Cat", "--out", str(tmp_path / "b.png")])
    said = " ".join(twice.output.split())
    assert twice.exit_code == 2 and "'cat' and 'Cat' are one class to CLIP" in said and "(places 2 and 3)" in said, said
    again = runner.invoke(app, ["segment", str(photo), "--classes", "sky,cat,cat", "--out", str(tmp_path / "b.png")])
    assert again.exit_code == 2 and "'cat' is named twice (places 2 and 3)" in again.output, again.output


def test_segment_with_no_mask_names_the_masker_that_found_none(tmp_path):
    """The tiny preset's SAM 2 found nothing and the hint named SAM; "0 masks", "1 mask"."""
    from skimage import data

    Image.fromarray(np.ascontiguousarray(data.coffee()[::8, ::8])).save(tmp_path / "c.png")
    args = ["segment", str(tmp_path / "c.png"), "--classes", "cup,table", "--preset", "tiny", "--masker", "sam2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "l.png")])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "0 masks;" in said and "the tiny preset's SAM 2 has random weights" in said, said
