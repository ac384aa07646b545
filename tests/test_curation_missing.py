"""``curate run`` of an annotation file whose photos are missing from --images: each
one a photo failed, and a run that finds none of them refused in one line before any
model loads, as `index --coco` refuses such a folder (a wrong --images read as
"0 curated", exit 0, was taken for success)."""

import json

import pytest
from typer.testing import CliRunner

from usesearch.cli.app import app

SQUARE = [[10, 10, 30, 10, 30, 30, 10, 30]]


def _source(tmp_path, input_format):
    """An annotation file of ``input_format`` naming cat.png (the ``photos`` fixture
    has it) and gone.png (nowhere), and the extra flags its run takes."""
    images = [{"id": 1, "file_name": "cat.png", "height": 75, "width": 113}]
    images.append({"id": 2, "file_name": "gone.png", "height": 9, "width": 9})
    if input_format == "coco-instances":
        annotations = [{"id": i, "image_id": i, "category_id": 1, "segmentation": SQUARE} for i in (1, 2)]
        content: object = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}
        flags = []
    elif input_format == "coco-captions":
        content = {"images": images, "annotations": [{"id": i, "image_id": i, "caption": "a cat"} for i in (1, 2)]}
        flags = ["--grounder", "tiny"]
    else:  # vg: photos named by their id
        box = {"x": 10, "y": 10, "width": 20, "height": 20, "phrase": "a cat"}
        content = [{"id": i, "regions": [{"image_id": i, **box}]} for i in ("cat", "gone")]
        flags = []
    path = tmp_path / f"{input_format}.json"
    path.write_text(json.dumps(content))
    return path, ["--input-format", input_format, *flags, "--preset", "tiny"]


@pytest.mark.parametrize("input_format", ["coco-instances", "coco-captions", "vg"])
def test_a_source_whose_every_photo_is_missing_is_refused_naming_the_cause(tmp_path, input_format):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    path, flags = _source(tmp_path, input_format)
    result = CliRunner().invoke(
        app, ["curate", "run", str(path), *flags, "--images", str(wrong), "--dataset-dir", str(tmp_path / "ds")]
    )
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: none of the 2 photos {path} names (") and "..." in line, line
    assert line.endswith(f") is under --images {wrong}; nothing is curated"), line
    assert "0 failed" not in result.output and not (tmp_path / "ds").exists()  # refused before any model loads


def test_a_source_with_some_photos_missing_counts_them_failed_and_exits_0(tmp_path, photos):
    path, flags = _source(tmp_path, "coco-instances")
    run = ["curate", "run", str(path), *flags, "--images", str(photos), "--dataset-dir", str(tmp_path / "ds")]
    first = CliRunner().invoke(app, [*run, "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert (report["done"], report["failed"], report["missing"]) == (1, 1, 1), report
    assert "1 image curated, 0 skipped, 1 failed (1 missing under --images)" in first.stderr
    assert f"failed: {photos / 'gone.png'}: photo missing: no gone.png under {photos}" in first.stderr
    again = CliRunner().invoke(app, run)  # the cat skipped as curated before: no failed run
    assert again.exit_code == 0 and "0 images curated, 1 skipped, 1 failed" in again.output, again.output
    # The photo put in place is curated, and its "photo missing" line goes (it stayed, as a fault of the file's).
    import numpy as np
    from PIL import Image

    content = json.loads(path.read_text())
    content["images"][1].update(height=75, width=113)
    path.write_text(json.dumps(content))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (75, 113, 3), dtype=np.uint8)).save(photos / "gone.png")
    failures = tmp_path / "ds" / "failures.jsonl"
    assert "photo missing" in failures.read_text()
    third = CliRunner().invoke(app, run)
    assert third.exit_code == 0 and "1 image curated, 1 skipped, 0 failed" in third.output, third.output
    assert "photo missing" not in failures.read_text(), failures.read_text()


@pytest.mark.parametrize("kept", [1000, 1])
def test_missing_photos_before_the_first_present_one_are_held_or_read_again(tmp_path, photos, monkeypatch, kept):
    """The items before the first photo found are held (to refuse a file none of whose
    photos is there before any model loads) up to ``AHEAD_KEPT``; past it the source is
    read again from its start (a file whose photos all come last held every missing
    one): the same run either way."""
    import usesearch.cli.curate

    monkeypatch.setattr(usesearch.cli.curate, "AHEAD_KEPT", kept)
    path, flags = _source(tmp_path, "coco-instances")
    content = json.loads(path.read_text())
    content["images"].reverse()  # gone.png first
    path.write_text(json.dumps(content))
    run = ["curate", "run", str(path), *flags, "--images", str(photos), "--dataset-dir", str(tmp_path / "ds"), "--json"]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["done"], report["failed"], report["missing"]) == (1, 1, 1), report
