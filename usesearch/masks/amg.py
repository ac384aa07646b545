"""SAM's automatic mask generator at the cost of its model.

Gives the masks segment-anything's ``SamAutomaticMaskGenerator`` gives for the same
settings (grid point prompts per crop, predicted-IoU and stability filters, box NMS
per crop and across crops, small-region clean-up), built on its model and its cheap
tensor helpers (``segment_anything.utils.amg``). What differs is where the time
goes: the stock generator turns every surviving mask into a Python RLE per batch
and deep-copies the growing lists at every step; here candidates stay tensors on
the model's device (their 256x256 low-resolution logits, scores and boxes) until
NMS has chosen the kept set, and only the kept masks are upscaled again, thresholded
and RLE-encoded, once, by pycocotools. The upscaled logits of a mask are a fixed
function of its low-resolution logits, so recomputing them gives the same mask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batch_iterator,
    batched_mask_to_box,
    build_all_layer_point_grids,
    uncrop_masks,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops import box_area

from usesearch.devices import uses_bf16
from usesearch.masks import rle
from usesearch.masks.amg_encoding import SamEncoding
from usesearch.masks.amg_utils import (
    CPU_POINTS_PER_BATCH,
    Candidates,
    cpu_encode_chunk,
    indices_of,
    nms,
    prompt_batch,
    remove_small_regions_each,
    top_up,
    upscale_logits,
)
from usesearch.masks.candidate_scoring import CandidateScoring
from usesearch.masks.crop_geometry import off_crop_edge, to_input_frame, uncropped_boxes, uncropped_points
from usesearch.masks.sam_compile import CompiledDecoder, compiled_within, decoder_finite, decoder_for
from usesearch.masks.sam_fast import upscales_kept
from usesearch.side_stream import SideStream, release_work_aside

ENCODE_CHUNK = 16  # kept masks upscaled and encoded at a time on a CPU, at most (``cpu_encode_chunk``)
GPU_ENCODE_PIXELS = 1 << 28  # on a GPU: mask pixels materialised at a time (~2.4 GB with their logits)
GRIDS_KEPT = 64  # crop shapes whose prompt points stay on the device (a few KB each)


@dataclass
class MaskRecord:
    """One generated mask: COCO RLE (str counts) and the stock generator's fields."""

    rle: dict
    area: int
    box_xyxy: tuple[int, int, int, int]  # inclusive max, as segment-anything's boxes
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    crop_box: tuple[int, int, int, int]  # XYXY


class SamMaskGenerator(SamEncoding):
    """Drop-in for ``SamAutomaticMaskGenerator``: same arguments, same masks.

    ``autocast``: run the image encoder and mask decoder in bfloat16 (None: on for
    CUDA devices that support bfloat16, off elsewhere; masks are then close to, not
    identical with, float32 ones). Scores, upscaling and thresholds stay float32.

    ``encoder_batch``: crops (photos, when there are no crop layers) per image-encoder
    call in ``generate_batch``; 1 on a CPU, where batching gains nothing.

    ``points_per_batch`` None: 64 on a CPU; on a GPU as many as fit in
    ``GPU_MEMORY_SHARE`` of its free memory (all 1,024 of a 32x32 grid on an H200).
    The batch size changes no mask: filters and NMS run on all of a crop's candidates.

    ``compiled_scores``: stability scores and boxes by ``CompiledScores``, one fused
    pass that never writes the full-size logits. Off, the stock helpers over
    materialised logits (or cells, with their bits). The same numbers on a CPU at or
    under the canvas's size but for a rare candidate a pixel apart (~1 in 1,000);
    else within float rounding (~1e-5, a pixel in a box). None: on for CUDA; on a CPU
    as ``candidate_scoring`` says (``self.scoring``).

    ``compiled_decoder``: the mask decoder by ``sam_compile.CompiledDecoder`` (within
    float rounding). None: on for CUDA; off elsewhere (on a CPU ~20% of the decoder
    for ~30 s of compiling, which ``--compile`` opts into).

    ``masks_per_photo`` (benchmarks only): keep exactly this many of each photo's
    candidates, NMS's survivors first, then the best it suppressed, through the same
    post-processing. Random weights leave ~1 mask per photo after NMS; real ones
    ~50-150, and the per-segment work must be timed at that count."""

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int | None = None,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",  # accepted for compatibility: records always carry RLE
        autocast: bool | None = None,
        encoder_batch: int = 1,
        masks_per_photo: int | None = None,
        compiled_scores: bool | None = None,
        compiled_decoder: bool | None = None,
    ):
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        self.point_grids = point_grids or build_all_layer_point_grids(
            points_per_side, crop_n_layers, crop_n_points_downscale_factor
        )
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(f"point_grids has {len(self.point_grids)} grids for {crop_n_layers + 1} crop layers")
        self.transform = ResizeLongestSide(model.image_encoder.img_size)  # SamPredictor's
        self.model = model
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        if encoder_batch < 1:
            raise ValueError(f"encoder_batch must be at least 1, got {encoder_batch}")
        self.encoder_batch = encoder_batch
        self.masks_per_photo = masks_per_photo
        self._prompt_batches: dict = {}  # (crop size, prompts) -> prompts per decoder batch on this GPU
        self._grids: dict[tuple[int, int, int], torch.Tensor] = {}  # (layer, crop size) -> points on the device
        self._encode_cap: int | None = None  # masks encoded at a time, halved where the card ran out of memory
        device = model.device
        if autocast is None:
            autocast = uses_bf16(device)
        self.autocast = bool(autocast)
        side, threshold = model.image_encoder.img_size, model.mask_threshold
        self.scoring = CandidateScoring(side, threshold, stability_score_offset, device, compiled_scores)
        self.decoder = decoder_for(model, device.type == "cuda" if compiled_decoder is None else compiled_decoder)
        gate = pred_iou_thresh > 0.0 and upscales_kept(model.mask_decoder)
        self._upscale_above = {"upscale_above": pred_iou_thresh} if gate else {}
        # Wall seconds, for benchmarks: image encoder, prompt encoder + mask decoder, RLE (with
        # the kept masks' one transfer), all of generate() (the rest is post-processing).
        self.seconds = {"encoder": 0.0, "decoder": 0.0, "rle": 0.0, "total": 0.0}
        self.ahead = SideStream[dict](device, "usesearch-encoder", self.seconds, "encoder ahead")  # a GPU's

    def run_eagerly(self) -> None:
        """Nothing compiled from here on: the decoder and candidate scoring that a GPU
        compiles by default, and a CPU's scoring of large photos (``devices.compiles``
        chooses this for a short GPU run and for ``--no-compile``)."""
        self.decoder = decoder_for(self.model, compiled=False)
        scoring = self.scoring
        self.scoring = CandidateScoring(scoring.side, scoring.threshold, scoring.offset, scoring.device, False)

    # -- candidates ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[MaskRecord]:
        return self.generate_batch([image])[0]

    @torch.no_grad()
    def generate_batch(self, images: list[np.ndarray]) -> list[list[MaskRecord]]:
        """Masks of several photos, their crops through the image encoder
        ``encoder_batch`` at a time (a GPU is busier with a batch; the masks are
        those of ``generate`` on each photo)."""
        start = time.perf_counter()
        try:
            features = self.ahead.take(images)  # where encode_ahead started them: the wait for them
            self.seconds["encoder"] += time.perf_counter() - start
            if features is None:
                features = self._encode_photos(images, "encoder")
                self.ahead.ran_in_line(images)  # (compiled here: groups of this size may now go aside)
            return [self._generate(image, features[n]) for n, image in enumerate(images)]
        finally:
            self.seconds["total"] += time.perf_counter() - start

    def _generate(self, image: np.ndarray, crop_features: list) -> list[MaskRecord]:
        orig_size = image.shape[:2]
        crops = []  # (crop box, model input size, crop size) per crop
        parts = []
        for index, (crop_box, layer, feats, input_size) in enumerate(crop_features):
            part, crop_hw = self._crop_candidates(feats, input_size, crop_box, layer, index, orig_size)
            crops.append((crop_box, input_size, crop_hw))
            parts.append(part)
        cands = Candidates.cat(parts, self.model.device)
        if len(crop_features) > 1 and len(cands):
            crop_xyxy = torch.tensor([c[0] for c in crops], device=cands.boxes.device)[cands.crop]
            scores = 1 / box_area(crop_xyxy)
            cands = cands[top_up(nms(cands.boxes, scores, self.crop_nms_thresh), scores, self.masks_per_photo)]
        return self._materialise(cands, crops, orig_size)

    def _crop_candidates(self, features, input_size, crop_box, layer, index, orig_size):
        x0, y0, x1, y1 = crop_box
        crop_hw = (y1 - y0, x1 - x0)
        points_for_image = self._grid_on_device(layer, crop_hw)
        key = self._batch_key(crop_hw, len(points_for_image))
        while True:
            per_batch = self.points_per_batch or self._points_that_fit(key)
            try:
                parts = [
                    self._batch_candidates(features, points, crop_hw, crop_box, orig_size, input_size)
                    for (points,) in batch_iterator(per_batch, points_for_image)
                ]
                break
            except torch.cuda.OutOfMemoryError:  # something took memory since it was sized
                if release_work_aside():  # the encoder's work ahead or the backbones', beside the decoder's: first
                    continue
                if self.points_per_batch or per_batch == 1:
                    raise
                self._prompt_batches[key] = per_batch // 2  # another process's: halved, for good
            torch.cuda.empty_cache()  # (past the handler: its traceback held the failed batch's tensors)
        cands = Candidates.cat(parts, self.model.device)
        cands = cands[top_up(nms(cands.boxes, cands.iou, self.box_nms_thresh), cands.iou, self.masks_per_photo)]
        cands.boxes = uncropped_boxes(cands.boxes, crop_box)
        cands.points = uncropped_points(cands.points, crop_box)
        cands.crop = torch.full((len(cands),), index, dtype=torch.long, device=cands.iou.device)
        return cands, crop_hw

    def _grid_on_device(self, layer: int, crop_hw: tuple[int, int]) -> torch.Tensor:
        """The layer's prompt points in the crop's pixels (float64, as stock's numpy), on
        the model's device once a crop shape: copied a batch, each copy from pageable
        memory waited for the GPU's work before it (a stall a photo)."""
        key = (layer, int(crop_hw[0]), int(crop_hw[1]))
        if key not in self._grids:
            if len(self._grids) >= GRIDS_KEPT:  # (an archive of many shapes: the oldest go)
                del self._grids[next(iter(self._grids))]
            points = self.point_grids[layer] * np.array(crop_hw)[None, ::-1]
            self._grids[key] = torch.as_tensor(points, device=self.model.device)
        return self._grids[key]

    def _batch_key(self, crop_hw: tuple[int, int], points: int) -> tuple[tuple[int, int], int]:
        """What a prompt batch is sized for: the crop's size and its prompts. A compiled
        scoring upscales no prompt's logits to the crop, so the canvas alone bounds its
        batch, sized once (a size a crop shape gave other batches, and recompiles)."""
        return ((0, 0) if self.scoring.compiled is not None else (int(crop_hw[0]), int(crop_hw[1])), points)

    def _points_that_fit(self, key: tuple[tuple[int, int], int]) -> int:
        """``prompt_batch`` for this card, once per (crop size, prompts) (stable shapes:
        no recompiles under ``--compile``, and no shrinking as the allocator caches);
        halved for good where it ran out of memory."""
        if key not in self._prompt_batches:
            if self.model.device.type != "cuda":
                self._prompt_batches[key] = CPU_POINTS_PER_BATCH
            else:
                free, _ = torch.cuda.mem_get_info(self.model.device)
                free += torch.cuda.memory_reserved(self.model.device) - torch.cuda.memory_allocated(self.model.device)
                crop_hw, points = key
                self._prompt_batches[key] = prompt_batch(free, self.model.image_encoder.img_size, crop_hw, points)
        return self._prompt_batches[key]

    def _batch_candidates(self, features, points, crop_hw, crop_box, orig_size, input_size) -> Candidates:
        device = self.model.device
        grid = points  # (on the device: ``_grid_on_device``)
        in_points = to_input_frame(grid, crop_hw, self.transform.target_length)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=device)
        start = time.perf_counter()
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(
                points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
            )
            low_res, iou = self.decoder(
                image_embeddings=features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                **self._upscale_above,  # prompts the IoU filter drops whole are not upscaled
            )
        self._sync()
        self.seconds["decoder"] += time.perf_counter() - start
        # The IoUs (the transformer's) and the mask logits' sum (NaN or infinite wherever any
        # logit is: one reduction, ~1.5 ms a 64-prompt batch on a CPU against ~60 for each
        # logit's check), else NaN logits made every mask empty and the photo "had none";
        # one read-back for both (a GPU waits for each).
        checked = isinstance(self.decoder, CompiledDecoder) and self.decoder.returned_finite()  # (checked there)
        if not (checked or decoder_finite((low_res, iou))):
            # (a CompiledDecoder hands on NaN only where the eager decoder gave it too: not the compiler's)
            raise self._nan("SAM's mask decoder gave", compiled_within(self.model.mask_decoder))
        per_point = low_res.shape[1]
        low_res = low_res.float().flatten(0, 1)[:, None]
        iou = iou.float().flatten(0, 1)
        points = grid.repeat_interleave(per_point, 0)
        # The IoU filter needs no mask: apply it before anything is upscaled.
        if self.pred_iou_thresh > 0.0:
            keep = indices_of(iou > self.pred_iou_thresh)
            low_res, iou, points = low_res[keep], iou[keep], points[keep]
        keep, stability, boxes = self.scoring(low_res, input_size, crop_hw, self.stability_score_thresh)
        if keep is not None:  # (indices)
            low_res, iou, points = low_res[keep], iou[keep], points[keep]
        empty = torch.zeros(len(iou), dtype=torch.long, device=device)  # the crop's index, set by the caller
        return off_crop_edge(Candidates(low_res, iou, stability, boxes, points, empty), crop_box, orig_size)

    # -- the kept masks -------------------------------------------------------------------
    def _masks(self, cands: Candidates, crops, orig_size) -> torch.Tensor:
        """Full-image bool masks [n, H, W] of a few candidates, from their logits."""
        indices = (
            [0] if len(crops) == 1 and len(cands) else torch.unique(cands.crop).tolist()
        )  # (one crop: no read-back)
        if len(indices) == 1:  # one crop (the whole photo, without crop layers): no copy into a zeroed stack
            return self._crop_masks(cands.low_res, crops[indices[0]], orig_size)
        out = torch.zeros(len(cands), *orig_size, dtype=torch.bool, device=cands.iou.device)
        for index in indices:
            rows = cands.crop == index
            out[rows] = self._crop_masks(cands.low_res[rows], crops[index], orig_size)
        return out

    def _crop_masks(self, low_res: torch.Tensor, crop, orig_size) -> torch.Tensor:
        """One crop's candidates' masks on the whole photo, from their low-res logits."""
        crop_box, input_size, crop_hw = crop
        logits = upscale_logits(low_res, self.model.image_encoder.img_size, input_size, crop_hw)
        return uncrop_masks(logits > self.model.mask_threshold, crop_box, *orig_size)

    def _encode_chunk(self, cands: Candidates, orig_size) -> int:
        """Masks encoded at a time. A CPU a few (memory); a GPU as many as
        GPU_ENCODE_PIXELS allows (each mask is float32 logits at the model's canvas and at
        the photo's size, then bool: every mask of a 1 MP photo at once), their runs then
        read in one transfer."""
        side = self.model.image_encoder.img_size
        chunk = (
            cpu_encode_chunk(orig_size, ENCODE_CHUNK)
            if cands.iou.device.type == "cpu"
            else max(1, GPU_ENCODE_PIXELS // max(orig_size[0] * orig_size[1], side * side))
        )
        return min(chunk, self._encode_cap or chunk)

    def _encoded(self, cands: Candidates, crops, orig_size, boxes: torch.Tensor) -> tuple[list[dict], list]:
        """The candidates' masks as RLEs, a chunk at a time, cleaned of small regions
        where asked (their ``boxes`` then redrawn, and whether each was left alone)."""
        rles: list[dict] = []
        unchanged: list = []
        chunk = self._encode_chunk(cands, orig_size)
        for start in range(0, len(cands), chunk):
            masks = self._masks(cands[start : start + chunk], crops, orig_size)
            if self.min_mask_region_area > 0:
                masks, flags = remove_small_regions_each(masks, self.min_mask_region_area)
                unchanged += flags
                boxes[start : start + len(masks)] = batched_mask_to_box(masks)
            rle_start = time.perf_counter()
            rles += rle.encode_stack(masks)
            self.seconds["rle"] += time.perf_counter() - rle_start
        return rles, unchanged

    def _materialise(self, cands: Candidates, crops, orig_size) -> list[MaskRecord]:
        # The kept candidates' scores, boxes and prompts in one transfer.
        fields = torch.cat(
            [
                cands.iou[:, None].double(),
                cands.stability[:, None].double(),
                cands.points.double(),
                cands.crop[:, None].double(),
                cands.boxes.double(),
            ],
            dim=1,
        ).cpu()
        iou, stability, points = fields[:, 0], fields[:, 1], fields[:, 2:4]
        crop, boxes = fields[:, 4].long(), fields[:, 5:].long()
        while True:
            try:
                rles, unchanged = self._encoded(cands, crops, orig_size, boxes)
                break
            except torch.cuda.OutOfMemoryError:  # something took memory since it was sized
                if release_work_aside():  # the work ahead's, beside this: first
                    continue
                chunk = min(self._encode_chunk(cands, orig_size), len(cands))  # (what it tried at once)
                if chunk <= 1:
                    raise
                self._encode_cap = chunk // 2  # another process's: halved, for good
            torch.cuda.empty_cache()  # (past the handler: its traceback held the failed chunk's tensors)
        order = torch.arange(len(cands))
        if self.min_mask_region_area > 0 and len(cands):
            # As segment-anything: a mask the clean-up changed loses NMS ties to any that it left alone.
            order = nms(
                boxes, torch.tensor(unchanged, dtype=torch.float32), max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return [
            MaskRecord(
                rle=rles[i],
                area=rle.area(rles[i]),
                box_xyxy=tuple(boxes[i].tolist()),
                predicted_iou=float(iou[i]),
                stability_score=float(stability[i]),
                point=tuple(points[i].tolist()),
                crop_box=tuple(crops[int(crop[i])][0]),
            )
            for i in order.tolist()
        ]
