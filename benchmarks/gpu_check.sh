#!/bin/sh
# The prepared GPU check: run it as is on a bare CUDA machine (the device tool), from
# the project's root, after `sh ../shared/device/prepare-wheels.sh tenacity filelock ijson regex`
# here has put the wheels such an image lacks into .whl/ (carry: [".whl"]): the script's
# own list lacks four dependencies usesearch added since (the catalog's retry, the writer's
# lock, the COCO reader, open_clip's tokenizer), and the first is imported by every
# indexing run. Step 0 names any module still missing. Writes its figures to
# $OUT (or ./gpu-check when OUT is unset).
#
# A session's device time is 15 minutes, the machine's start (1-2 min) included, so the
# call has a budget: BUDGET seconds from the script's start (450 by default, 240 for
# `mid`), each step's timeout cut to what is left, a step with under 30 s left skipped
# and named, one stopped at such a cut limit named as cut (not failed). The steps run in the order of what a run must bring back: the CUDA-only
# checks, then the paper's preset's throughput, then b16's, then the diagnostics.
#   run: sh benchmarks/gpu_check.sh        (timeout_s 500)
#   then, where >= 4.5 min of device time are left: sh benchmarks/gpu_check.sh mid   (timeout_s 270)
set -e
START=$(date +%s)
if [ "${1:-}" = mid ]; then BUDGET=${BUDGET:-240}; else BUDGET=${BUDGET:-450}; fi
LEAST=${LEAST:-30}  # seconds a step needs at least to start
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
# Without .whl/ (not carried, or empty) the image's own packages are tried: step 0 names
# what is missing, instead of set -e ending the run here with no step written.
if [ "$BUDGET" -lt "$LEAST" ]; then
  echo "budget ${BUDGET} s: nothing installed, every step skipped"
elif ls .whl/*.whl >/dev/null 2>&1; then
  timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl ||
    echo "installing .whl/ failed ($?): step 0 names what is missing"
else
  echo "no .whl/ carried: trying the image's own packages (step 0 names any missing)"
fi
# The stage folders import as usesearch.indexer etc. through links in usesearch/; a copy
# of the tree that dropped them gets them back.
for stage in indexer curation training; do [ -e "usesearch/$stage" ] || ln -s "../$stage" "usesearch/$stage"; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Each step's output to its file and the console; a failing step (a crash, a failed
# check, a timeout's 124) is named and fails the script at the end, after the other
# steps had their turn: no pipe into tee, whose status would hide it (sh has no pipefail).
#   step FILE SECONDS command...   (SECONDS: the step's own limit, cut to the budget left)
FAILED=""
SKIPPED=""
step() {
  file=$1; limit=$2; shift 2
  left=$((BUDGET - $(date +%s) + START))
  if [ "$left" -lt "$LEAST" ]; then
    echo "SKIPPED: $file (${left} s of the call's ${BUDGET} s budget left)"; SKIPPED="$SKIPPED $file"; return 0
  fi
  cut=""
  [ "$limit" -le "$left" ] || { limit=$left; cut=yes; }
  rc=0; timeout -k 5 "$limit" "$@" > "$OUT/$file" 2>&1 || rc=$?
  cat "$OUT/$file"
  if [ -n "$cut" ] && { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }; then  # the budget's doing, not the step's
    echo "CUT: $file (its ${limit} s were what was left of the budget)"; SKIPPED="$SKIPPED $file(cut)"
  elif [ "$rc" -ne 0 ]; then echo "FAILED ($rc): $file"; FAILED="$FAILED $file($rc)"; fi
  echo "[$file: $(($(date +%s) - START)) s into the call]"
}
finish() {  # a failed step: 1; none failed but some skipped: 3 (what ran is in $OUT)
  if [ -n "$FAILED" ]; then echo "gpu_check$1: failed steps:$FAILED${SKIPPED:+; skipped:$SKIPPED}"; exit 1; fi
  if [ -n "$SKIPPED" ]; then echo "gpu_check$1: none failed; skipped (budget):$SKIPPED; figures in $OUT"; exit 3; fi
  echo "gpu_check$1: every step passed; figures in $OUT"; exit 0
}
step gpu.txt 20 nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
# `sh benchmarks/gpu_check.sh mid` (a second call, timeout_s 270, where the device time
# allows): first the archive's run of step 2 without side streams (SAM's encoder and the
# backbones in line, as before 2026-12-05) against step 2's, which runs them on streams
# of their own; then the paper's preset as a run of 500 photos compiles it (SAM's decoder
# and scoring, not its encoder nor the towers: the H100 table's first column).
if [ "${1:-}" = mid ]; then
  step in-line.txt 130 python3 benchmarks/index_throughput.py --presets l14-336 --images 32 --side 1024 \
    --points-per-side 32 --masks-per-photo 100 --no-side-streams --json "$OUT/in-line.json"
  step mid.txt 105 python3 benchmarks/index_throughput.py --presets l14-336 --images 32 --side 1024 \
    --points-per-side 32 --masks-per-photo 100 --run-photos 500 --json "$OUT/mid.json"
  finish " mid"
fi
# 0. Everything the steps import, named where missing (else step 2 dies at its imports);
#    and the torch, with the compiler settings the generator's scoring relies on (checked
#    on the CPU's torch only: where one is missing, scoring runs eagerly, said here first).
step imports.txt 90 python3 -c "
import importlib
import torch, torch._dynamo
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')
absent = [k for k in ('specialize_float', 'recompile_limit', 'fail_on_recompile_limit_hit') if not hasattr(torch._dynamo.config, k)]
absent += [] if hasattr(torch._dynamo.exc, 'FailOnRecompileLimitHit') else ['FailOnRecompileLimitHit']
print('compiler settings: ' + ('all here' if not absent else 'missing in this torch: ' + ', '.join(absent)))
missing = []
for name in ('open_clip', 'segment_anything', 'faiss', 'sqlalchemy', 'pycocotools', 'tenacity', 'filelock', 'ijson', 'skimage',
             'regex', 'usesearch.indexer.pipeline', 'usesearch.masks.amg'):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f'{name} ({exc})')
assert not missing, 'missing: ' + '; '.join(missing)
print('every module the steps import is here')
"
# 1. The CUDA parts of the suite that a CPU cannot run: run-length coding on the device,
#    and the generator's masks against stock's on the GPU (the bfloat16 tolerance).
#    150 s: on a card's cold compile cache its three compiles, a decoder compiled again
#    for the blob model and two model builds add up to an estimated 75-110 s.
step checks.txt 150 python3 - <<'PY'
import numpy as np, torch
from usesearch.masks import rle
import torch.nn.functional as F
masks = F.interpolate(torch.rand(64, 1, 24, 32, device="cuda"), size=(768, 1024), mode="bilinear")[:, 0] > 0.5  # blobs
assert rle.encode_runs(masks) == rle.encode_stack(masks.cpu().numpy()), "RLE on the GPU differs from pycocotools"
print("RLE on the GPU equals pycocotools on 64 masks")
from usesearch.models import head
stack = rle.RleStack(rle.encode_stack(masks.cpu().numpy()), (768, 1024))
cell = (1024 / 24, 1024 / 24)
on_gpu, on_host = head.rle_cell_coverage(stack, (24, 24), cell, "cuda").cpu(), head.rle_cell_coverage(stack, (24, 24), cell)
assert torch.allclose(on_gpu, on_host, atol=1e-6), "pooling weights on the GPU differ from the host's"
print("pooling weights from RLE runs on the GPU equal the host's on 64 masks")
import usesearch
for kind in ("use", "crop"):  # dense masks handed over on the GPU, as a Python caller with its own SAM may
    model = usesearch.load_model("tiny", embedder=kind, device="cuda")
    rgb = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8))
    dense = masks[:8]
    assert np.allclose(model.embed_segments(rgb, dense), model.embed_segments(rgb, dense.cpu().numpy()), atol=1e-4)
print("embed_segments takes dense masks on the GPU as it takes them from the host (use, crop)")
# The generator under the GPU's bfloat16 autocast (its decoder compiled) against stock's
# float32 masks, on the tests' blob SAM (tests/helpers.py), within the README's tolerance.
from segment_anything import SamAutomaticMaskGenerator
from skimage import data
from tests.helpers import BF16_COUNT, BF16_MATCHED, LOW, bf16_agreement, blob_sam
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.sam_compile import compile_encoder
sam = blob_sam("cuda")
images = {name: np.ascontiguousarray(getattr(data, name)()[::3, ::3]) for name in ("coffee", "astronaut")}
stocks = {name: SamAutomaticMaskGenerator(sam, points_per_side=8, **LOW).generate(image) for name, image in images.items()}
# The generator's eager GPU path (a run under 100 photos, `segment`, --no-compile: cell scoring
# inside the generator), in bfloat16 and with --precision float32, never yet run on a card.
for autocast in (True, False):
    for name, image in images.items():
        eager = SamMaskGenerator(sam, points_per_side=8, compiled_decoder=False, compiled_scores=False,
                                 autocast=autocast, **LOW)
        matched, gap = bf16_agreement(stocks[name], eager.generate(image))
        print(f"{name}: eager decoder and scoring, autocast {autocast}: {matched:.1%} of stock's matched, counts off by {gap:.1%}")
        assert matched >= BF16_MATCHED and gap <= BF16_COUNT, "the eager GPU path is outside the tolerance"
compile_encoder(sam.image_encoder)  # as a GPU archive's run does by default (after stock's masks: in place)
not_compiled = []
for name, image in images.items():
    stock = stocks[name]
    generator = SamMaskGenerator(sam, points_per_side=8, **LOW)
    ours = generator.generate(image)
    matched, gap = bf16_agreement(stock, ours)
    compiled = not getattr(generator.decoder, "failed", True)  # CompiledDecoder, and it compiled
    print(f"{name}: {len(ours)} masks (autocast {generator.autocast}, decoder compiled {compiled}) against "
          f"stock's {len(stock)}, encoder compiled, {matched:.1%} of stock's matched at IoU >= 0.95")
    assert matched >= BF16_MATCHED and gap <= BF16_COUNT, "outside the bfloat16 tolerance"
    if not compiled:
        not_compiled.append(name)
# The decoder's attentions over the image tokens (one 256-wide head) in fused kernels
# only: a fall-back to the unfused product would raise here rather than cost silently.
from torch.nn.attention import SDPBackend, sdpa_kernel
from usesearch.masks.sam import build_sam
from usesearch.masks.sam_fast import share_image_tokens
sam = share_image_tokens(build_sam("vit_b").eval()).to("cuda")
fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(fused):
    points = torch.rand(1024, 1, 2, device="cuda") * 1024
    sparse, dense = sam.prompt_encoder(points=(points, torch.ones(1024, 1, dtype=torch.int, device="cuda")), boxes=None, masks=None)
    low_res, _ = sam.mask_decoder(image_embeddings=torch.randn(1, 256, 64, 64, device="cuda"),
                                  image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                  dense_prompt_embeddings=dense, multimask_output=True)
assert low_res.shape == (1024, 3, 256, 256) and torch.isfinite(low_res).all()
print("the decoder's attentions ran in fused kernels (1,024 prompts, bf16)")
# The decoder's upscaling as per-pixel products (a GPU's since 2026-12-05, never yet run on
# one) against its transposed convolutions, in float32 (cuDNN's convolutions may round
# as TF32: a relative tolerance).
from usesearch.masks import sam_fast
dec = sam.mask_decoder
hs, keys = torch.randn(64, 5, 256, device="cuda"), torch.randn(64, 4096, 256, device="cuda")
with torch.no_grad():
    products = sam_fast.mask_logits(dec, hs, keys, 64, 64)
    sam_fast.PIXELWISE_ON.discard("cuda")
    convolutions = sam_fast.mask_logits(dec, hs, keys, 64, 64)
    sam_fast.PIXELWISE_ON.add("cuda")
gap, scale = (products - convolutions).abs().max().item(), convolutions.abs().max().item()
print(f"the upscaling as per-pixel products against transposed convolutions: largest gap {gap:.2e} of {scale:.2e}")
assert products.shape == convolutions.shape == (64, 4, 256, 256) and gap <= 1e-2 * scale
# The backbones beside SAM, on a stream of their own (a GPU's default since 2026-12-05, never
# yet run on one), against the same group's call after SAM on the model thread's stream:
# each photo pooled at once, while the card may still run the group, so a missing wait
# between the streams reads unwritten features here.
import sys
from unittest import mock
sys.path.insert(0, "benchmarks")
from index_throughput import random_weights
from usesearch.models import presets
with mock.patch.dict(presets.PRESETS, {"b16": random_weights(presets.PRESETS["b16"])}):
    model = usesearch.load_model("b16", device="cuda")
assert model.beside.on and model.batch_backbones, "not a GPU's defaults"
group = [np.ascontiguousarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]
boxes = [np.zeros((8, *p.shape[:2]), bool) for p in group]
for m in boxes:
    for i in range(8):
        m[i, 20 * i : 20 * i + 120, 30 * i : 30 * i + 200] = True
def pooled(beside):
    model.beside.on = beside
    model.prepare(group)
    model.features_ahead(group)
    return [model.embed_segments(p, m) for p, m in zip(group, boxes)]
after = pooled(False)
gap = max(float(np.abs(a - b).max()) for _ in range(4) for a, b in zip(after, pooled(True)))  # memory reused
print(f"the backbones beside SAM on their own stream against after SAM: largest gap {gap:.2e} (4 groups of 4 photos)")
assert gap <= 1e-3 and model.beside.on, "the streams' hand-over lost the features"
# SAM's encoder a group ahead on its own stream (the same, never yet on a card), on the
# tests' blob SAM: the masks of the group encoded in line, then ahead.
generator = SamMaskGenerator(blob_sam("cuda"), points_per_side=8, encoder_batch=2, **LOW)
pair = list(images.values())
in_line = generator.generate_batch(pair)  # (the first group of its size: in line)
assert generator.ahead.on, "not a GPU's default"
for _ in range(3):
    generator.encode_ahead(pair)
    ahead = generator.generate_batch(pair)
    assert [[r.rle["counts"] for r in p] for p in ahead] == [[r.rle["counts"] for r in p] for p in in_line]
assert generator.seconds["encoder ahead"] > 0 and generator.ahead.on
print(f"SAM's encoder a group ahead on its own stream gives the in-line masks ({sum(map(len, in_line))} masks, 3 groups)")
# Last, so the checks above had their turn: the tolerance held for compiled masks only if it compiled.
assert not not_compiled, f"the generator's decoder did not compile on this GPU ({', '.join(not_compiled)}): see the warning"
PY
# 2. Throughput as a user gets it, stage by stage, the paper's preset (mask logits shaped
#    into blobs, so RLE and pooling see real masks' run counts), compiled as a GPU
#    archive's run is by default now (index --compile unset, 1,000 photos or more): the
#    warm-up pays the compiles. 3. The same for b16 (compiled: never yet on a GPU).
step throughput.txt 170 python3 benchmarks/index_throughput.py --presets l14-336 --images 32 \
  --side 1024 --points-per-side 32 --masks-per-photo 100 --json "$OUT/throughput.json"
step throughput-b16.txt 110 python3 benchmarks/index_throughput.py --presets b16 --images 32 \
  --side 1024 --points-per-side 32 --masks-per-photo 100 --json "$OUT/throughput-b16.json"
# 4. SAM's levers against segment-anything's code (encoder SDPA; decoder shared tokens + SDPA;
#    the decoder compiled, as the generator runs it on a GPU; half the prompts upscaled, as
#    the IoU filter's gate does where half fail it, eager and compiled); then the upscaling alone each way,
#    transposed convolutions (cuDNN's dgrad kernels, 4.4 ms a call in the H100 profile)
#    against per-pixel products (a GPU's default since then, never yet run on one).
step levers.txt 80 python3 benchmarks/sam_levers.py --arch vit_h --prompts 1024 --autocast --repeat 3 \
  --compiled-decoder --upscaled 0.5 --upscaling-ways
# 5. Candidate scoring compiled against segment-anything's helpers on this GPU: time,
#    agreement, and whether inductor's Triton code writes the full-size logits after all.
#    3000x4000 is scored through the separable resize (separable_resize.py): never yet run on a GPU.
step scores.txt 60 python3 benchmarks/candidate_scores.py --photos 768x1024,3000x4000
# 6. Where SAM's GPU time goes, kernel by kernel (torch's profiler, one photo at a time),
#    its encoder compiled as index compiles it now; then the paper's backbones, a group of
#    4 photos a call; each with the share of the wall time the device was busy.
step profile.txt 80 python3 benchmarks/gpu_profile.py --arch vit_h --points-per-side 32 --rows 30 \
  --compile --backbones l14-336
# (the run without side streams, and the preset as a 500-photo run compiles it, have a
# call of their own: sh benchmarks/gpu_check.sh mid)
finish ""
