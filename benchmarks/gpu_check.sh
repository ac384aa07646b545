#!/bin/sh
# The prepared GPU check: run it as is on a bare CUDA machine (the device tool), from
# the project's root, after `sh ../shared/device/prepare-wheels.sh` here has put the
# wheels such an image lacks into .whl/ (carry: [".whl"]). Writes its figures to
# $OUT (or ./gpu-check when OUT is unset). About 6 minutes on one H200, most of it building random-weight models.
#   run: sh benchmarks/gpu_check.sh    (timeout_s 480; its steps stop themselves within 400 s)
set -e
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
# The stage folders import as usesearch.indexer etc. through links in usesearch/; a copy
# of the tree that dropped them gets them back.
for stage in indexer curation training; do [ -e "usesearch/$stage" ] || ln -s "../$stage" "usesearch/$stage"; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/gpu.txt"
# 1. The CUDA parts of the suite that a CPU cannot run: the generator's masks against
#    stock's on the GPU (bf16 tolerance), run-length coding on the device.
timeout 60 python3 - <<'PY' 2>&1 | tee "$OUT/checks.txt"
import numpy as np, torch
from usesearch.masks import rle
import torch.nn.functional as F
masks = F.interpolate(torch.rand(64, 1, 24, 32, device="cuda"), size=(768, 1024), mode="bilinear")[:, 0] > 0.5  # blobs
assert rle.encode_runs(masks) == rle.encode_stack(masks.cpu().numpy()), "RLE on the GPU differs from pycocotools"
print("RLE on the GPU equals pycocotools on 64 masks")
PY
# 2. Throughput as a user gets it, stage by stage, paper preset then b16.
timeout 240 python3 benchmarks/index_throughput.py --presets l14-336,b16 --images 48 --side 1024 \
  --points-per-side 32 --masks-per-photo 100 --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
# 3. SAM's levers against segment-anything's code, then the generator against the model's forward time.
timeout 45 python3 benchmarks/sam_levers.py --arch vit_h --prompts 1024 --autocast --repeat 3 2>&1 | tee "$OUT/levers.txt"
timeout 45 python3 benchmarks/masker_cost.py --arch vit_h --sides 32 --autocast --skip-stock --repeat 4 \
  --points-per-batch 1024 2>&1 | tee "$OUT/masker.txt"
