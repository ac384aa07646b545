"""Indexing throughput as a user runs it: photos/s from disk to committed index, and
where the time goes, stage by stage.

Runs ``index_paths`` on the default device (CUDA when torch sees it, FAISS where the
installed faiss can run it), with the real architectures and random weights
(compute does not depend on weight values), so it runs offline. Random-weight SAM
keeps ~1 mask per photo; ``--masks-per-photo N`` has the generator keep N
candidates through the same post-processing (default 100: what real weights give
on everyday photos), so pooling, RLE, the store and FAISS are timed at a real
count. Random weights also draw masks unlike real ones: their 256x256 logits are
noise, so each mask is tens of thousands of specks (35k-85k runs a mask on a
1024x768 photo), where a real mask is a few blobs (hundreds to a few thousand runs).
RLE and pooling cost by the run, so ``--mask-shape blobs`` (default) hands the
generator each mask's logits smoothed into blobs (its own logits averaged to 8x8
cells, standardised, upsampled, ~12% of the photo above the threshold): the same
tensors, the same post-processing; the median runs a stored mask has are printed.
``--mask-shape drawn`` keeps the specks. A few warm-up photos go first (CUDA context, cuDNN autotuning), into an
index of their own.

Stages: read + hash and decode run in worker threads ahead of the models ("waiting
for photos" is what they cost the loop); SAM encoder, decoder (prompt encoder + mask
decoder), post-processing (upscaling, scores, NMS, the kept masks) and RLE (with its
transfer) are the generator's own clocks; backbones (CLIP + DINOv2 + LLNs) and
pooling (+ projection) the embedder's; store and FAISS the commit's. On a GPU the
backbones run beside SAM and SAM's encoder a group ahead, each on a stream of its
own (``usesearch/side_stream.py``): "backbones" and "SAM encoder" are then the loop's
wait for them, their own threads' clocks printed apart (``--no-side-streams`` runs
them in line, as before).

    python benchmarks/index_throughput.py [--presets l14-336,b16] [--images 32] [--side 1024]
        [--points-per-side 32] [--masks-per-photo 100] [--device cpu|cuda] [--precision bfloat16]
        [--no-side-streams] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling.mask_decoder import MaskDecoder
from skimage import data

from usesearch import side_stream
from usesearch.devices import synchronize
from usesearch.indexer import IndexOptions, index_paths, pipeline
from usesearch.masks import rle, sam_compile, sam_fast
from usesearch.models import presets

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "coins")
STAGES = (
    "waiting for photos",
    "SAM encoder",
    "SAM decoder",
    "SAM post-processing",
    "RLE",
    "backbones",
    "pooling",
    "store",
    "FAISS",
)


def random_weights(preset):
    """Same architecture, weights not loaded (SAM included), a seeded random head so
    the 'use' path (the product's) is what is timed."""
    return replace(
        preset,
        clip=replace(preset.clip, pretrained=None),
        dino=replace(preset.dino, pretrained=False),
        sam=replace(preset.sam, checkpoint=None),
        head=replace(preset.head, seeded_random=True),
    )


BLOB_CELLS = 8  # a blob field's cells a side: blobs ~ a photo's side / 8 across
BLOB_LEVEL = 1.2  # standard deviations above which a pixel is in the mask (~12% of the photo)


def blob_logits(low_res: torch.Tensor, valid: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """[B, M, h, w] mask logits -> the same shape, each mask its own logits averaged to
    BLOB_CELLS x BLOB_CELLS cells, standardised and upsampled: a few smooth blobs in
    place of random weights' specks, still different for every prompt. ``valid``: the
    share of the canvas's rows and columns that the photo fills (the rest is SAM's
    padding); each mask's level is lowered where needed so that its highest point on
    the photo is in it, and no mask comes out empty (the pipeline drops empty masks)."""
    b, m, h, w = low_res.shape
    coarse = F.adaptive_avg_pool2d(low_res.float().reshape(b * m, 1, h, w), BLOB_CELLS)
    coarse = (coarse - coarse.mean((2, 3), keepdim=True)) / (coarse.std((2, 3), keepdim=True) + 1e-6)
    smooth = F.interpolate(coarse, (h, w), mode="bicubic", align_corners=False)
    rows, cols = max(1, int(h * valid[0]) - 1), max(1, int(w * valid[1]) - 1)
    highest = smooth[:, :, :rows, :cols].amax((2, 3), keepdim=True)
    level = torch.minimum(torch.full_like(highest, BLOB_LEVEL), highest - 0.05)
    return (8.0 * (smooth - level)).reshape(b, m, h, w).to(low_res.dtype)


BLOB_SECONDS = [0.0]  # time spent shaping blobs (the benchmark's own work), taken off the decoder's


def blob_decoder(valid: tuple[float, float] = (1.0, 1.0)):
    """SAM's decoder patched to return ``blob_logits`` of its masks, whichever path it
    takes (segment-anything's forward, or the mask logits of ``sam_fast``'s shared-token
    path, which ``load_sam`` routes each decoder through, and which shapes only the
    prompts it upscales); the time the shaping takes is added to ``BLOB_SECONDS``. The shaping
    stays out of a compiled decoder's graph (a GPU's default): compiled, it would be
    fused into the decoder's time, its clock and synchronisations breaking the graph
    at unknown places."""

    @torch.compiler.disable
    def shape(masks: torch.Tensor) -> torch.Tensor:
        # This thread's stream only, as SAM's clocks wait: a whole-device wait would wait
        # for the side streams' work too (charged to the decoder, and their overlap lost).
        synchronize(masks.device)
        start = time.perf_counter()
        shaped = blob_logits(masks, valid)
        synchronize(masks.device)
        BLOB_SECONDS[0] += time.perf_counter() - start
        return shaped

    forward, masks_of = MaskDecoder.forward, sam_fast.mask_logits

    def stock(self, *args, **kwargs):
        masks, iou = forward(self, *args, **kwargs)
        return shape(masks), iou

    def shared(*args):
        return shape(masks_of(*args))

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(MaskDecoder, "forward", stock))
    stack.enter_context(mock.patch.object(sam_fast, "mask_logits", shared))  # looked up at each call
    # The compiled decoder's gated upscaling calls the name imported into sam_compile.
    stack.enter_context(mock.patch.object(sam_compile, "mask_logits", shared))
    return stack


def stored_runs(db: Path) -> dict:
    """Median runs and area share of the stored masks (up to 500), read back."""
    files = [f for f in db.rglob("*") if f.suffix in (".db", ".sqlite", ".sqlite3")]
    if not files:
        return {}
    with sqlite3.connect(files[0]) as con:
        rows = con.execute("SELECT rle_counts, area FROM segments LIMIT 500").fetchall()
        sizes = con.execute("SELECT width, height FROM images WHERE width IS NOT NULL LIMIT 1").fetchall()
    if not rows:
        return {}
    runs = [len(rle.run_lengths({"size": [1, 1], "counts": counts})) for counts, _ in rows]
    out = {"median_runs": float(np.median(runs))}
    if sizes:
        out["median_area_share"] = float(np.median([a for _, a in rows])) / (sizes[0][0] * sizes[0][1])
    return out


def write_photos(folder: Path, n: int, side: int, first: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        photo = Image.fromarray(getattr(data, NAMES[i % len(NAMES)])()).convert("RGB")
        photo = photo.resize((side, side * 3 // 4)).rotate(7 * i)  # distinct contents
        photo.save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def run(name: str, photos: Path, db: Path, args) -> dict:
    patched = {**presets.PRESETS, name: random_weights(presets.PRESETS[name])}
    masker_options = {}
    if args.masker == "sam":
        # Random-weight masks never pass SAM's quality thresholds: thresholds off, and
        # the count set by --masks-per-photo.
        masker_options = {
            "points_per_side": args.points_per_side,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
        }
        if args.masks_per_photo:
            masker_options["masks_per_photo"] = args.masks_per_photo
        if args.points_per_batch:
            masker_options["points_per_batch"] = args.points_per_batch
        if args.encoder_batch:
            masker_options["encoder_batch"] = args.encoder_batch
    blobs = args.masker == "sam" and args.mask_shape == "blobs"
    shaped = blob_decoder(valid=(0.75, 1.0)) if blobs else contextlib.nullcontext()  # write_photos' 4:3 photos
    # What the run compiles goes by the photos it has to index: here those of the run these
    # stand for (--run-photos: an archive's by default), as index_paths counts them.
    standing_for = mock.patch.object(pipeline, "photos_to_index", lambda *_: args.run_photos)
    beside = contextlib.nullcontext()
    if args.side_streams is not None:
        beside = mock.patch.object(side_stream, "used_on", lambda _device: args.side_streams)
    with mock.patch.dict(presets.PRESETS, patched), shaped, standing_for, beside:
        options = IndexOptions(
            preset=name,
            embedder="use",
            masker=args.masker,
            masker_options=masker_options,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
        )
        BLOB_SECONDS[0] = 0.0
        report = index_paths([photos], db, options)
    stages = dict(report.stages)
    if "SAM decoder" in stages:  # the benchmark's blob shaping is not the decoder's work
        stages["SAM decoder"] -= BLOB_SECONDS[0]
    return {
        "preset": name,
        "photos": report.done,
        "failed": report.failed,
        "failures": report.failures[:3],  # (path, "Error: message"): the first few, to see why
        "segments": report.segments,
        "loop_s": report.loop_seconds,
        "photos_per_s": report.done / report.loop_seconds,
        # What real weights would give: blob shaping is this benchmark's own work, in the loop.
        "photos_per_s_unshaped": report.done / max(report.loop_seconds - BLOB_SECONDS[0], 1e-9),
        "segments_per_s": report.segments / report.loop_seconds,
        "devices": report.devices,
        "stages_s": stages,
        "blob_shaping_s": BLOB_SECONDS[0],
        **stored_runs(db),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,b16")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="photos indexed first, untimed (default: a group, 4, on a GPU; 0 on a CPU)",
    )
    parser.add_argument("--side", type=int, default=640)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument(
        "--points-per-batch", type=int, default=None, help="default: the generator's (64 on a CPU, sized to a GPU)"
    )
    parser.add_argument("--encoder-batch", type=int, default=None)
    parser.add_argument("--masks-per-photo", type=int, default=100, help="0: as the generator leaves them")
    parser.add_argument(
        "--mask-shape",
        choices=("blobs", "drawn"),
        default="blobs",
        help="blobs: random weights' mask logits smoothed into blobs, as real masks' run counts; drawn: as drawn",
    )
    parser.add_argument("--masker", default="sam", help="sam (the paper's) or felzenszwalb")
    parser.add_argument("--device", default=None, help="the models' device (default: as a user gets it)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the models (index --compile/--no-compile); default: as an archive's run would (on a GPU)",
    )
    parser.add_argument(
        "--run-photos",
        type=int,
        default=10**6,
        help="the photos of the run these stand for, which what it compiles goes by (default: an archive's)",
    )
    parser.add_argument(
        "--side-streams",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SAM's encoder a group ahead and the backbones beside SAM, each on a stream of its own "
        "(default: as a user gets it, on a GPU)",
    )
    parser.add_argument("--precision", default="auto", help="auto, float32 or bfloat16 (index --precision)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    # On a GPU a whole encoder group (4 photos), so --compile compiles for the batch the
    # timed photos come in, not again inside the timed loop.
    warmup = args.warmup if args.warmup is not None else ((args.encoder_batch or 4) if cuda else 0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp) / "photos", args.images, args.side, first=warmup)
        print(
            f"{args.images} photos of {args.side}x{args.side * 3 // 4}, masker {args.masker}, "
            f"{args.points_per_side}x{args.points_per_side} points, "
            f"masks per photo {args.masks_per_photo or 'as kept'} ({args.mask_shape}), "
            f"{args.threads} threads, torch {torch.__version__}"
            + (f", {torch.cuda.get_device_name()}" if cuda else ", no GPU"),
            flush=True,
        )
        broken = []  # a run where photos failed times the failures, not the pipeline: it fails the benchmark
        for name in args.presets.split(","):
            if warmup:
                warm_start = time.perf_counter()
                warm = run(
                    name,
                    write_photos(Path(tmp) / f"warmup-{name}", warmup, args.side),
                    Path(tmp) / f"warm-{name}",
                    args,
                )
                # Printed at once: under --compile this is the compile time, which a
                # timeout would otherwise swallow with the rest of the output.
                print(
                    f"{name}: warm-up of {warmup} photos, models built: {time.perf_counter() - warm_start:.1f} s",
                    flush=True,
                )
                if warm["failed"]:
                    print_failures(f"{name} (warm-up)", warm)
                    broken.append(f"{name} warm-up")
            result = run(name, photos, Path(tmp) / f"db-{name}", args)
            results.append(result)
            print_result(result)
            if args.json:  # after each preset: a timeout in the next (compiling cold) keeps this one's figures
                args.json.write_text(
                    json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
                )
            if result["failed"] or not result["photos"]:
                print_failures(name, result)
                broken.append(name)
            # SAM's --masks-per-photo keeps that many of each photo's candidates (as many as
            # its grid makes, three a point; blobs are never empty): fewer means masks came
            # out empty (a model's NaN once gave photos with none).
            made = 3 * args.points_per_side**2
            blobs = args.masker == "sam" and args.mask_shape == "blobs"
            wanted = result["photos"] * min(args.masks_per_photo, made) if blobs else 0
            if result["segments"] < wanted:
                print(f"\n{name}: {result['segments']} segments stored, {wanted} asked (--masks-per-photo)")
                broken.append(f"{name} segments")
    if broken:
        raise SystemExit(f"index_throughput: photos failed, none indexed or too few segments in: {', '.join(broken)}")


def print_failures(name: str, r: dict) -> None:
    print(f"\n{name}: {r['failed']} of {r['photos'] + r['failed']} photos failed; the first:")
    for path, why in r["failures"]:
        print(f"  {Path(path).name}: {why}")


def print_result(r: dict) -> None:
    unshaped = f" ({r['photos_per_s_unshaped']:.3f} without the blob shaping)" if r.get("blob_shaping_s") else ""
    print(
        f"\n{r['preset']}: {r['photos_per_s']:.3f} photos/s{unshaped}, {r['segments_per_s']:.1f} segments/s "
        f"({r['photos']} photos, {r['segments']} segments, {r['failed']} failed, loop {r['loop_s']:.2f} s)"
    )
    if "median_runs" in r:
        print(f"  stored masks: median {r['median_runs']:.0f} runs, {r.get('median_area_share', 0):.1%} of the photo")
    for line in r["devices"]:
        print(f"  {line}")
    per_photo = max(r["photos"], 1)
    accounted = 0.0
    for stage in STAGES:
        seconds = r["stages_s"].get(stage, 0.0)
        accounted += seconds
        print(f"  {stage:<22} {1000 * seconds / per_photo:9.2f} ms/photo {seconds / r['loop_s']:7.1%}")
    blobs = r.get("blob_shaping_s", 0.0)
    if blobs:
        accounted += blobs
        print(f"  {'(blob shaping, bench)':<22} {1000 * blobs / per_photo:9.2f} ms/photo {blobs / r['loop_s']:7.1%}")
    other = r["loop_s"] - accounted
    print(f"  {'other (loop, sync)':<22} {1000 * other / per_photo:9.2f} ms/photo {other / r['loop_s']:7.1%}")
    for stage in ("read + hash (workers)", "decode (workers)"):
        print(f"  {stage:<22} {1000 * r['stages_s'].get(stage, 0.0) / per_photo:9.2f} ms/photo (in worker threads)")
    for stage in ("SAM encoder ahead (own thread)", "backbones beside SAM (own thread)"):
        seconds = r["stages_s"].get(stage, 0.0)
        if seconds:  # side streams' clocks, beside the loop's, which has the wait for them above
            print(f"  {stage.split(' (')[0]:<22} {1000 * seconds / per_photo:9.2f} ms/photo (its own thread)")


if __name__ == "__main__":
    main()
