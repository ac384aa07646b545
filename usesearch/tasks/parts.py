"""Open-vocabulary part segmentation evaluation (paper §4.4, PartImageNet).

Grid-prompted masks mostly cover whole objects or background, so each mask is
classified against the part classes *plus* background classes (the 91 COCO-stuff
classes and PartImageNet's 11 super-categories); only masks whose top class is a
part become detections, scored by pycocotools' mask mAP@[0.5:0.95].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usesearch.masks.rle import encode

DATA = Path(__file__).parent / "data"


def background_classes() -> list[str]:
    stuff = (DATA / "coco_stuff_91.txt").read_text().split()
    supers = (DATA / "partimagenet_supercategories.txt").read_text().split()
    return [s.replace("-other", "").replace("-", " ") for s in stuff] + supers


def part_detections(probabilities: np.ndarray, num_parts: int) -> list[tuple[int, int, float]]:
    """[N masks, parts + background] -> (mask index, part index, score) for the masks
    whose most probable class is a part."""
    top = probabilities.argmax(1)
    return [(i, int(top[i]), float(probabilities[i, top[i]])) for i in range(len(top)) if top[i] < num_parts]


def to_results(image_id: int, masks: np.ndarray, detections, category_ids: list[int]) -> list[dict]:
    out = []
    for i, part, score in detections:
        rle = encode(masks[i])
        out.append({"image_id": image_id, "category_id": category_ids[part], "segmentation": rle, "score": score})
    return out


def mask_map(coco_gt, results: list[dict]) -> tuple[float, dict]:
    """mAP_mask@[0.5:0.95] over all part categories, and per-category AP."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0, {}
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_category = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        # None (JSON null): a category with no annotation has no AP (NaN is not JSON)
        per_category[coco_gt.cats[cat_id]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else None
    return float(evaluator.stats[0]), per_category
