"""Mask proposers: weight-free superpixels and SAM's automatic mask generator."""

import numpy as np
from typer.testing import CliRunner

import usesearch
from usesearch.cli import app
from usesearch.maskers import FelzenszwalbMasker, SamMasker
from usesearch.sam import load_sam


def test_felzenszwalb_proposals_are_consistent_records(photo):
    proposals = FelzenszwalbMasker(max_masks=20)(photo)
    assert 0 < len(proposals) <= 20
    for p in proposals:
        ys, xs = np.nonzero(p.mask)
        assert p.area == p.mask.sum() > 0
        assert p.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    areas = [p.area for p in proposals]
    assert areas == sorted(areas, reverse=True)


def test_sam_masker_runs_tiny_sam_with_grid_prompts(photo):
    sam = load_sam(usesearch.get_preset("tiny").sam, "tiny")
    masker = SamMasker(sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    proposals = masker(photo)
    assert masker.params()["points_per_side"] == 4
    for p in proposals:
        assert p.mask.shape == photo.shape[:2] and p.predicted_iou is not None


def test_cli_embed_ranks_segments_for_each_text(tmp_path, photo):
    from PIL import Image

    image = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(image)
    result = CliRunner().invoke(app, ["embed", str(image), "a face", "a flag", "-k", "2", "--preset", "tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "a face" in result.output and "a flag" in result.output and "use-tiny-" in result.output
