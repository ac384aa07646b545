"""The host waits of the GPU path, counted on a CPU: each place where a CUDA run would
wait for the card (a tensor read back to Python, an op whose output size is data, an
explicit stream sync for a stage's clock) per photo, by source line.

A GPU idles while its host waits and then launches the next kernels; the H100 run saw
a third of SAM's clock so. Without a card this counts those waits on the CPU: every
tensor is tracked as a GPU run would hold it (``.cpu()``'s results, tensors built from
Python or NumPy without a device and what is computed from them alone are the host's;
the rest the card's), and a read of a card tensor is a wait. Branches a CPU takes and a
GPU does not (NumPy's stability counts, RLE by pycocotools) show as such in the list:
read it with the code beside it, as a tensor made by ``torch.from_numpy`` (unseen: it
takes no tensor) counts as the card's. torchvision's NMS counts one (its CUDA kernel
copies its suppression mask to the host).

    python benchmarks/read_backs.py [--arch tiny] [--points-per-side 16] [--masks-per-photo 50]
        [--pred-iou-thresh 0] [--photos 2] [--preset tiny]
"""

from __future__ import annotations

import argparse
import collections
import traceback
import weakref
from pathlib import Path

import torch
from skimage import data
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from usesearch.masks import amg_encoding
from usesearch.masks.maskers import SamMasker
from usesearch.masks.proposals import proposal_masks
from usesearch.masks.sam import SAM_TYPES, build_sam
from usesearch.masks.sam_fast import speed_up
from usesearch.models import ahead, model

Tensor = torch.Tensor
ROOT = str(Path(__file__).resolve().parents[1]) + "/"
READS = {  # their result is on the host, or its size is: a GPU run waits for the card
    Tensor.item, Tensor.tolist, Tensor.cpu, Tensor.numpy, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
    Tensor.__index__, Tensor.__repr__, Tensor.__format__, Tensor.nonzero, Tensor.unique, Tensor.unique_consecutive,
    Tensor.masked_select, Tensor.argwhere, torch.nonzero, torch.unique, torch.unique_consecutive,
    torch.masked_select, torch.argwhere,
}  # fmt: skip
MADE = {torch.tensor, torch.as_tensor, torch.from_numpy}  # on the host unless given a device


class HostWaits(TorchFunctionMode):
    """Counts, by (what, file:line), the reads of tensors a GPU run would hold on the card."""

    def __init__(self) -> None:
        super().__init__()
        self.host: set[int] = set()  # ids of tensors a GPU run holds on the host (dropped as each is freed)
        self.sites: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, Tensor)]
        on_card = [t for t in tensors if id(t) not in self.host]
        name = getattr(func, "__name__", str(func))
        if on_card and (
            func in READS
            or "nms" in name
            or (func is Tensor.__getitem__ and any(i.dtype == torch.bool for i in tensors[1:]))
            or (func in (Tensor.repeat_interleave, torch.repeat_interleave) and "output_size" not in kwargs and
                any(t.dim() > 0 for t in tensors[1:]))
            or (func is torch.where and len(args) == 1)
        ):  # fmt: skip
            self.note(name)
        out = func(*args, **kwargs)
        if func in (Tensor.cpu, Tensor.numpy) or func in MADE:
            host = func not in MADE or kwargs.get("device") is None
        elif func is Tensor.to:
            targets = [a for a in [*args[1:], kwargs.get("device")] if isinstance(a, (str, torch.device))]
            host = targets[0] == "cpu" if targets else not on_card  # (.to(device): an upload)
        else:
            host = not on_card if tensors else kwargs.get("device") is None
        for t in tree_flatten(out)[0] if host else ():
            if isinstance(t, Tensor) and id(t) not in self.host:
                self.host.add(id(t))
                weakref.finalize(t, self.host.discard, id(t))
        return out

    def note(self, what: str) -> None:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if frame.filename.startswith(ROOT) and not any(
                part in frame.filename for part in ("/benchmarks/", "/.venv/")
            ):
                self.sites[(what, f"{frame.filename[len(ROOT) :]}:{frame.lineno}")] += 1
                return
        self.sites[(what, "outside usesearch")] += 1


def count_syncs(waits: HostWaits) -> None:
    """The stage clocks' stream syncs (``devices.synchronize``: nothing on a CPU) counted as waits."""
    for module in (amg_encoding, model, ahead):
        real = module.synchronize

        def counted(device, real=real):
            waits.note("synchronize")
            return real(device)

        module.synchronize = counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", choices=SAM_TYPES)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--masks-per-photo", type=int, default=50)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0, help="0: random weights keep masks")
    parser.add_argument("--photos", type=int, default=2, choices=(1, 2, 3), help="timed after one warm-up photo")
    parser.add_argument("--preset", default="tiny", help="the embedder's (its backbones and head)")
    args = parser.parse_args()
    torch.manual_seed(0)
    sam = speed_up(build_sam(args.arch).eval())
    prompts = args.points_per_side**2
    masker = SamMasker(  # one prompt batch a photo, as on a large card
        sam, args.points_per_side, points_per_batch=prompts, masks_per_photo=args.masks_per_photo,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=0.0,
    )  # fmt: skip
    from usesearch.models.factory import load_model

    embedder = load_model(args.preset, device="cpu")
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()][: args.photos + 1]
    masks = proposal_masks(masker(photos[0]), photos[0].shape[:2])  # warm-up: caches, first shapes
    embedder.embed_segments(photos[0], masks)
    waits = HostWaits()
    count_syncs(waits)
    with torch.inference_mode(), waits:
        proposals = [masker(photo) for photo in photos[1:]]
    stages = {"SAM's generator": dict(waits.sites)}
    waits.sites.clear()
    masks = [proposal_masks(found, photo.shape[:2]) for found, photo in zip(proposals, photos[1:], strict=True)]
    with torch.inference_mode(), waits:
        for photo, its_masks in zip(photos[1:], masks, strict=True):
            embedder.embed_segments(photo, its_masks)
    stages["embedding (backbones, pooling, head)"] = dict(waits.sites)
    n = len(photos) - 1
    print(f"SAM {args.arch}, {prompts} prompts in one batch, {args.masks_per_photo} masks a photo, {n} photos")
    for stage, sites in stages.items():
        print(f"{stage}: {sum(sites.values()) / n:.1f} host waits a photo")
        for (what, where), count in sorted(sites.items(), key=lambda item: -item[1]):
            print(f"  {count / n:6.1f}  {what:<18} {where}")


if __name__ == "__main__":
    main()
