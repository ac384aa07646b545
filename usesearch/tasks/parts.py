"""Open-vocabulary part segmentation evaluation (paper §4.4, PartImageNet).

Grid-prompted masks mostly cover whole objects or background, so each mask is
classified against the part classes *plus* background classes (the 91 COCO-stuff
classes and PartImageNet's 11 super-categories); only masks whose top class is a
part become detections, scored by pycocotools' mask mAP@[0.5:0.95].
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from usesearch.masks.rle import encode

DATA = Path(__file__).parent / "data"


def check_ground_truth(coco_file: Path, images: Path) -> None:
    """Every photo the file names under ``images``, of the size its entry says, and every
    annotation a mask COCOeval can score, checked before any model runs: a photo missing
    at the end lost every result before it, a wrong size scored 0 without a word, and a
    NaN in a polygon took pycocotools to all the machine's memory, then a crash."""
    from usesearch.errors import ImageReadError, UsesearchError, first_few
    from usesearch.io.coco_dataset import CATEGORY_NAME, fault_line, read_coco
    from usesearch.io.coco_masks import checked_masks
    from usesearch.io.images import displayed_size

    dataset = read_coco(coco_file)
    if not any(entry.annotations for entry in dataset.images):  # COCOeval's -1 was shown as mAP -100.00
        why = f" ({dataset.first_fault()})" if dataset.problems else ""
        raise UsesearchError(f"{coco_file} holds no annotation of its photos{why}: there is nothing to score against")
    # (Categories of one name are no fault here: COCOeval scores by category id, and a part
    # dataset names "head" under each of its objects, ``_category_keys``.)
    faults = [fault_line(coco_file, *problem) for problem in dataset.problems if problem[2].kind != CATEGORY_NAME]
    missing = []
    for entry in dataset.images:
        try:
            hw = displayed_size(images / entry.file_name)
        except (OSError, ImageReadError):
            missing.append(entry.file_name)
            continue
        faults += [fault_line(coco_file, *problem) for problem in checked_masks(entry, hw)[1]]
    if missing:
        raise UsesearchError(
            f"{len(missing)} photo(s) {coco_file} names are not readable under {images}: {first_few(missing)}"
        )
    if faults:
        raise UsesearchError(
            f"{len(faults)} annotation fault(s) in {coco_file}, which COCOeval cannot score; the first: {faults[0]} "
            "(`usesearch index IMAGES --coco FILE --db DIR`, then `usesearch failures --db DIR`, lists each)"
        )


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


def mask_map(coco_gt, results: list[dict], image_ids: list[int] | None = None) -> tuple[float, dict]:
    """mAP_mask@[0.5:0.95] over all part categories, and per-category AP, over
    ``image_ids`` (all: None; an evaluation cut short counts the images it did)."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # COCOeval takes none; each category then scores as it would: 0, or no AP without annotations
        annotated = {a["category_id"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids or []))}
        cat_ids = sorted(coco_gt.getCatIds())
        return 0.0, {key: 0.0 if cat_id in annotated else None for key, cat_id in _category_keys(coco_gt, cat_ids)}
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_category = {}
    for k, (key, _) in enumerate(_category_keys(coco_gt, evaluator.params.catIds)):
        p = precision[:, :, k, 0, -1]
        # None (JSON null): a category with no annotation has no AP (NaN is not JSON)
        per_category[key] = float(p[p > -1].mean()) if (p > -1).any() else None
    return float(evaluator.stats[0]), per_category


def _category_keys(coco_gt, cat_ids: list[int]) -> list[tuple[str, int]]:
    """Each category's name as reported, with its id: two "head"s of two supercategories both kept."""
    names = Counter(coco_gt.cats[cat_id]["name"] for cat_id in cat_ids)
    keys = []
    for cat_id in cat_ids:
        name = coco_gt.cats[cat_id]["name"]
        keys.append((name if names[name] == 1 else f"{name} [{cat_id}]", cat_id))
    return keys
