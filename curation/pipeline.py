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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from usesearch.errors import AnnotationsChangedError, CurationConfigError, ImageShapeError
from usesearch.io.atomic import write_atomic
from usesearch.io.coco_dataset import PHOTO_MISSING, SIZE_MISMATCH
from usesearch.io.files import decode, read_bytes, refuse_own_picture
from usesearch.reports import RunReport

from .cache import StageCache
from .dataset import DatasetWriter, json_line, read_manifest
from .masks import NMS_IOU, BoxMaskConfig, mask_nms, masks_from_boxes
from .records import BoxText, ImageItem, TextRef
from .sources import annotation_segments

if TYPE_CHECKING:
    from usesearch.io.coco_dataset import ImageEntry, Problem


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
    problems: int = 0  # faults in the source's annotations, recorded in failures.jsonl
    missing: int = 0  # photos the source names and --images lacks: each a fault above and a photo failed
    copies: list[tuple[str, str]] = field(
        default_factory=list
    )  # (path, the path curated with its bytes, now or before)
    # Photos skipped as done that were curated before the dataset had a captioner, which this
    # run has: their records keep no MLLM caption (a record is never rewritten).
    uncaptioned: int = 0
    boxes: int = 0  # boxes SAM was prompted with (none: no region given and none grounded, whatever its thresholds)


def curate(
    items: Iterable[ImageItem],
    out_dir: str | os.PathLike,
    predictor=None,
    *,
    grounder: Grounder | None = None,
    captioner: Captioner | None = None,
    mask_config: BoxMaskConfig | None = None,
    nms_iou: float = NMS_IOU,
    source: str = "",
    progress: Callable[[CurateReport], None] | None = None,
    sam: str | None = None,
    run: str = "",
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> CurateReport:
    """``predictor``: a segment_anything SamPredictor, needed for box sources; ``sam``:
    its weights' identity (``masks.sam.sam_identity``), recorded and compared as the
    grounder's and captioner's are: a dataset's masks and texts come from one model each.
    ``progress(report)`` after each photo curated or skipped as done.
    ``source`` names the items' source: a photo is done once per source. ``run``: what
    this run curates (its source and input, as the CLI gives them): one cut short keeps
    the dataset unfinished until that run ends (default: the source).
    ``mask_config``: SAM's settings for box prompts (default: ``BoxMaskConfig()`` where a
    predictor is given); recorded only where SAM runs, so a given-mask source records none.
    ``max_bytes``, ``max_pixels``: how large a photo is read (None: the defaults); one
    past them is a failure, tried again by a run that raises them."""
    if mask_config is None and predictor is not None:
        mask_config = BoxMaskConfig()
    settings: dict = {"nms_iou": nms_iou} | ({"mask_config": asdict(mask_config)} if mask_config else {})
    used = {
        "sam": sam if predictor is not None else None,
        "grounder": stage_identity(grounder) if grounder is not None else None,
        "captioner": stage_identity(captioner) if captioner is not None else None,
    }
    settings["models"] = {stage: identity for stage, identity in used.items() if identity is not None}
    captioned_before = "captioner" in ((read_manifest(Path(out_dir)) or {}).get("models") or {})
    settings["models"] = check_same_settings(out_dir, settings)  # with the models of earlier runs
    writer = DatasetWriter(out_dir, source=source, settings=settings, run=run)
    report = CurateReport()
    start = time.perf_counter()
    failures = FailureLog(Path(out_dir) / "failures.jsonl")
    caption_cache = StageCache(Path(out_dir) / "cache" / "captions.jsonl")
    box_cache = StageCache(Path(out_dir) / "cache" / "boxes.jsonl")
    finished = False
    try:
        for item in items:
            problems = list(item.problems)
            try:
                if item.error is not None:
                    raise item.error
                if not item.photo:
                    if item.missing:  # failed as an unreadable photo of a folder fails: none is curated
                        report.missing += 1
                        report.failed += 1
                        report.failures.append((item.path, f"{problems[0][2].kind}: {problems[0][2]}"))
                    continue
                data, sha256 = read_bytes(item.path, max_bytes)
                refuse_own_picture(data, item.path, "curate")  # (`curate show --out` into the photos' folder)
                digest = source_digest(item)
                if writer.annotations_changed(sha256, digest):  # records are never rewritten: said, not skipped
                    first, what = writer.written_now.get(sha256), _made_of(item)
                    if first is not None:  # the file lists this photo twice (same bytes), with other annotations
                        raise AnnotationsChangedError(
                            f"the same photo as {first} (the same content), listed again with other {what}: "
                            "a photo is curated once; merge its entries in the source to curate them all"
                        )
                    raise AnnotationsChangedError(
                        f"its {what} in the source changed since it was curated (a fault fixed, a text added?); "
                        "this dataset keeps the record made before: curate into a new --dataset-dir to take the change"
                    )
                if writer.is_done(sha256):
                    report.skipped += 1
                    earlier = sha256 not in writer.written_now  # (curated by this run: captioned, if it captions)
                    report.uncaptioned += (
                        captioner is not None
                        and item.mllm_caption
                        and not captioned_before
                        and earlier
                        # (its caption in the cache: captioned, a manifest deleted and written anew since)
                        and caption_cache.get(f"{sha256}:{stage_identity(captioner)}") is None
                    )
                    first = writer.curated_at.get(sha256)  # (by this run or an earlier one: a resumed run says it too)
                    if first and first != item.path and _another_file(first, item.path):  # the same bytes, two files
                        report.copies.append((item.path, first))
                    problems = []  # counted by the run that curated it
                    failures.clear(item.path)
                    if progress:
                        progress(report)
                    continue
                rgb = decode(data, item.path, max_pixels)
                boxes = list(item.boxes)
                captions = list(item.captions)
                captioning = captioner if item.mllm_caption else None
                if captioning is not None or captions:  # only the captioner and grounder shrink a photo to fit
                    check_shape(rgb.shape[:2])
                if captioning is not None:
                    key = f"{sha256}:{stage_identity(captioning)}"
                    # Keyed by the captioner's name alone before: such a caption is reused,
                    # not sampled again at an MLLM's cost.
                    cached = caption_cache.get(key) or caption_cache.get(f"{sha256}:{captioning.name}")
                    if cached is None:
                        cached = asdict(captioning(rgb))
                        caption_cache.put(key, cached)
                    captions.append(TextRef(**cached))
                for caption in captions:
                    if grounder is None:
                        raise CurationConfigError(
                            "this source has captions to ground, and no grounding model was given"
                        )
                    key = f"{sha256}:{stage_identity(grounder)}:{caption.source}:{caption.text}"
                    if box_cache.get(key) is None:
                        box_cache.put(key, [asdict(b) for b in grounder(rgb, caption)])
                    boxes.extend(
                        BoxText(tuple(b["bbox"]), [TextRef(**t) for t in b["texts"]], b["score"])
                        for b in box_cache.get(key)
                    )
                segments = list(item.segments)
                if item.annotations is not None:
                    found, faults = annotation_segments(item.annotations, rgb.shape[:2])
                    segments += found
                    problems += faults
                    sized = [error for _, _, error in faults if error.kind == SIZE_MISMATCH]
                    if sized:  # no mask sits on its pixels: failed, as a missing photo, not curated with none
                        report.failed += 1  # (recorded, it was "done": the file fixed, it was refused as changed)
                        report.failures.append((item.path, f"{sized[0].kind}: {sized[0]}"))
                        continue
                if boxes:
                    if predictor is None:
                        raise CurationConfigError("box sources need SAM: pass a SamPredictor")
                    segments.extend(masks_from_boxes(predictor, rgb, boxes, mask_config or BoxMaskConfig()))
                    report.boxes += len(boxes)
                pairs = sum(len(s.texts) for s in segments)
                kept = mask_nms(segments, nms_iou)
            except CurationConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing image is recorded and skipped
                failures.failure(item.path, exc, report)
                continue
            finally:
                failures.problems(item.path, problems, report)
            writer.write(item.path, sha256, rgb.shape[:2], kept, pairs, digest)
            failures.clear(item.path)
            report.done += 1
            report.pairs += pairs
            report.pairs_after_nms += sum(len(s.texts) for s in kept)
            if progress:
                progress(report)
        finished = True
    finally:
        writer.close(finished)
        if writer.dir.exists():  # not a folder the run took back
            failures.close()
        report.seconds = time.perf_counter() - start
    return report


def source_digest(item: ImageItem) -> str | None:
    """What a photo's record is made from in its source, as SHA-256: a COCO entry's
    annotations, a caption file's captions, Visual Genome's regions (None: a folder's
    photo, made of its pixels alone). A rerun whose source changed them is told so."""
    import hashlib

    if item.annotations is not None:
        return annotations_digest(item.annotations)
    if not (item.captions or item.boxes):
        return None
    texts = lambda refs: sorted([t.text, t.source, t.kind] for t in refs)  # noqa: E731 - (another order: the same)
    made_of = [texts(item.captions), sorted([[float(v) for v in b.bbox], texts(b.texts)] for b in item.boxes)]
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()


def _made_of(item: ImageItem) -> str:
    return "annotations" if item.annotations is not None else "captions" if item.captions else "regions"


def annotations_digest(entry: ImageEntry) -> str:
    """What a COCO entry's record is made from: its size and its annotations that passed
    the file's checks, as SHA-256 (a fault fixed in the file changes it)."""
    import hashlib

    annotations = sorted(entry.annotations, key=lambda a: a.id)  # a re-export in another order is the same file
    made_of = [entry.height, entry.width, [[a.id, a.category, a.iscrowd, a.mask_source()] for a in annotations]]
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()


def stage_identity(stage: object) -> str:
    """A model stage as its cached outputs are keyed: its ``identity`` (model, commit,
    settings) where it has one, else its name."""
    return str(getattr(stage, "identity", None) or getattr(stage, "name", None) or type(stage).__name__)


def check_same_settings(out_dir: str | os.PathLike, settings: dict) -> dict:
    """A dataset is curated with one SAM, grounder and captioner and one set of mask
    settings, finished or not: a run with others would mix their outputs silently and
    leave the manifest describing records it did not make. Only what both runs used is
    compared (a source with given masks runs no SAM). Returns the models the manifest
    records once this run is in: the earlier runs' and this one's."""
    before = read_manifest(Path(out_dir)) or {}
    changed = [
        f"{name} {before['mask_config'][name]} (now {value})"
        for name, value in (settings.get("mask_config") or {}).items()
        if name in (before.get("mask_config") or {}) and before["mask_config"][name] != value
    ]
    if "nms_iou" in before and before["nms_iou"] != settings["nms_iou"]:
        changed.append(f"nms_iou {before['nms_iou']} (now {settings['nms_iou']})")
    recorded = before.get("models")
    models_before: dict = recorded if isinstance(recorded, dict) else {}
    changed += [
        f"{stage} {models_before[stage]} (now {identity})"
        for stage, identity in (settings.get("models") or {}).items()
        if stage in models_before and models_before[stage] != identity
    ]
    if changed:
        raise CurationConfigError(
            f"{out_dir} was curated with other models or mask settings: {', '.join(changed)}; "
            "give the same, or curate into another --dataset-dir"
        )
    return {**models_before, **(settings.get("models") or {})}


class FailureLog:
    """``failures.jsonl``: a photo that failed, or a fault in a source's annotations,
    one line each; a re-run that meets the same fault again does not repeat its line,
    and a photo curated since it failed loses its line when the run ends (``close``)."""

    def __init__(self, path: Path):
        self.path = path
        self.seen = set(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else set()
        self.cleared: set[str] = set()

    def clear(self, image: str) -> None:
        """``image`` is curated: a failure recorded for it is out of date."""
        self.cleared.add(image)

    def close(self) -> None:
        def stale(line: str) -> bool:
            try:
                entry = json.loads(line)
            except ValueError:
                return False
            if not (isinstance(entry, dict) and entry.get("path") in self.cleared):
                return False
            # A photo's own failure, or the source's photo it lacked (its only annotation fault not in the source)
            return "annotation" not in entry or str(entry.get("error", "")).startswith(f"{PHOTO_MISSING}:")

        dropped = {line for line in self.seen if stale(line)}
        if dropped:  # the source's annotation faults stay: they are still in the source
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line not in dropped]
            write_atomic(self.path, "".join(line + "\n" for line in kept))
            self.seen -= dropped

    def add(self, line: dict) -> None:
        text = json_line(line)[:-1]
        if text in self.seen:
            return
        self.seen.add(text)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def failure(self, image: str, exc: BaseException, report: CurateReport) -> None:
        report.record_failure(image, exc)
        self.add({"path": image, "error": f"{type(exc).__name__}: {exc}"})

    def problems(self, image: str, problems: list[Problem], report: CurateReport) -> None:
        report.problems += len(problems)
        for file_name, annotation, error in problems:
            self.add({"path": file_name or image, "annotation": annotation, "error": f"{error.kind}: {error}"})


MIN_SIDE = 16  # px: a grounder shrinks a photo to fit its input, and a thinner side reaches 0 rows
MAX_ASPECT = 20  # longer side over shorter: past that the grounder's shorter side is a few patches


def check_shape(hw: tuple[int, int]) -> None:
    """A photo the curation models can take, or an ``ImageShapeError`` saying why not (a
    strip 3 px tall failed deep in the grounder: "selected index k out of range")."""
    h, w = hw
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_ASPECT * min(h, w):
        raise ImageShapeError(
            f"a photo of {w}x{h} px is too small or too narrow to curate "
            f"(each side {MIN_SIDE} px or more, at most {MAX_ASPECT}:1)"
        )


def _another_file(first: str, path: str) -> bool:
    """Whether ``path`` is a file other than ``first``, the one curated with its bytes:
    not the same file reached another way (a symlinked folder, another mount) nor the
    same photo moved since (``first`` gone): each was said as a copy of itself."""
    try:
        return not os.path.samefile(first, path)
    except OSError:  # (``first`` gone: moved, not copied)
        return False
