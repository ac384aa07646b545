"""``curate``: image records -> segment-text pairs on disk, resumable per image.

Stages per image: (MLLM caption, captions -> referring expressions -> grounding boxes), human boxes
-> SAM box prompts -> masks, human masks as they are, then mask NMS. The captioning
and grounding stages take pluggable objects (``Captioner``, ``Grounder``); without a
grounder, captioned sources are refused rather than silently skipped. Model outputs
are cached per image, so a re-run after a crash recomputes none of them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from usesearch.errors import CurationConfigError
from usesearch.io.files import decode, read_bytes
from usesearch.reports import RunReport

from .cache import StageCache
from .dataset import DatasetWriter
from .masks import NMS_IOU, BoxMaskConfig, mask_nms, masks_from_boxes
from .records import BoxText, ImageItem, TextRef


class Grounder(Protocol):
    """Caption -> boxes with the phrase/expression texts they ground (paper §3.1)."""

    def __call__(self, rgb: np.ndarray, caption: TextRef) -> list[BoxText]: ...


class Captioner(Protocol):
    name: str

    def __call__(self, rgb: np.ndarray) -> TextRef: ...


@dataclass
class CurateReport(RunReport):
    pairs: int = 0
    pairs_after_nms: int = 0


def curate(
    items: Iterable[ImageItem],
    out_dir: str | os.PathLike,
    predictor=None,
    *,
    grounder: Grounder | None = None,
    captioner: Captioner | None = None,
    mask_config: BoxMaskConfig = BoxMaskConfig(),
    nms_iou: float = NMS_IOU,
    progress: Callable[[CurateReport], None] | None = None,
) -> CurateReport:
    """``predictor``: a segment_anything SamPredictor, needed for box sources."""
    writer = DatasetWriter(out_dir)
    report = CurateReport()
    start = time.perf_counter()
    failures_path = Path(out_dir) / "failures.jsonl"
    caption_cache = StageCache(Path(out_dir) / "cache" / "captions.jsonl")
    box_cache = StageCache(Path(out_dir) / "cache" / "boxes.jsonl")
    try:
        for item in items:
            try:
                data, sha256 = read_bytes(item.path)
                if sha256 in writer.done:
                    report.skipped += 1
                    continue
                rgb = decode(data, item.path)
                boxes = list(item.boxes)
                captions = list(item.captions)
                if item.mllm_caption and captioner is not None:
                    key = f"{sha256}:{captioner.name}"
                    if caption_cache.get(key) is None:
                        caption_cache.put(key, asdict(captioner(rgb)))
                    captions.append(TextRef(**caption_cache.get(key)))
                for caption in captions:
                    if grounder is None:
                        raise CurationConfigError(
                            "this source has captions to ground, and no grounding model was given"
                        )
                    key = f"{sha256}:{caption.source}:{caption.text}"
                    if box_cache.get(key) is None:
                        box_cache.put(key, [asdict(b) for b in grounder(rgb, caption)])
                    boxes.extend(
                        BoxText(tuple(b["bbox"]), [TextRef(**t) for t in b["texts"]], b["score"])
                        for b in box_cache.get(key)
                    )
                segments = list(item.segments)
                if boxes:
                    if predictor is None:
                        raise CurationConfigError("box sources need SAM: pass a SamPredictor")
                    segments.extend(masks_from_boxes(predictor, rgb, boxes, mask_config))
                pairs = sum(len(s.texts) for s in segments)
                kept = mask_nms(segments, nms_iou)
            except CurationConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing image is recorded and skipped
                _record_failure(failures_path, item.path, exc, report)
                continue
            writer.write(item.path, sha256, rgb.shape[:2], kept, pairs)
            report.done += 1
            report.pairs += pairs
            report.pairs_after_nms += sum(len(s.texts) for s in kept)
            if progress:
                progress(report)
    finally:
        writer.close({"mask_config": mask_config.__dict__, "nms_iou": nms_iou})
        report.seconds = time.perf_counter() - start
    return report


def _record_failure(path: Path, image: str, exc: BaseException, report: CurateReport) -> None:
    report.record_failure(image, exc)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"path": image, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
