"""What ``query --refine sam3`` costs: SAM 3's image step and phrase step (the real
architecture, 840.5 M parameters, at random weights: the cost is the architecture's,
not the weights'), and the latency of a refined query at N = 10 and 20 photos, cold
(no image step cached) and cached (a second phrase over the same photos).

    python benchmarks/refine_cost.py                      # CPU: 2 photos x 2 phrases, queries with the tiny SAM 3
    python benchmarks/refine_cost.py --photos 4 --query-model sam3   # the real architecture end to end (slow on a CPU)
    python benchmarks/refine_cost.py --check-builder      # our composition == sam3's build_sam3_image_model

On a GPU (``--device``, default as every command: CUDA when torch sees one) the
queries use the real architecture by default, in bfloat16 as ``query --refine`` runs
it. On a CPU, where one image step takes half a minute, the query figures default to
the tiny SAM 3 (what they then measure is everything around SAM 3: the USE search,
the cache, RLE and overlaps) and the real architecture's query cost is projected from
its measured steps: N x (image step + phrase step) cold, N x phrase step cached.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usesearch.devices import resolve_device  # noqa: E402
from usesearch.masks.sam3 import SAM3_MODELS, Sam3Model, load_sam3  # noqa: E402
from usesearch.masks.sam3_build import build_sam3, fill_uninitialised  # noqa: E402
from usesearch.models.backbones import seeded  # noqa: E402

PHRASES = ["a cat's face", "a red rocket", "a cup of coffee", "the astronaut's helmet"]


def random_weights_sam3(device: torch.device) -> Sam3Model:
    """SAM 3's real architecture with seeded random weights, as the refiner runs it."""
    cfg = SAM3_MODELS["sam3"]
    with seeded(0):
        model = build_sam3(cfg.architecture)
        fill_uninitialised(model)
    return Sam3Model(cfg, model.to(device), device, f"sam3-random-{device.type}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def photos(count: int, side: int = 640) -> list[np.ndarray]:
    """Distinct photos from scikit-image's bundled ones (mirrored and rotated variants)."""
    from PIL import Image
    from skimage import data

    base = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for i in range(count):
        image = Image.fromarray(base[i % len(base)]).rotate(7 * (i // len(base)), expand=True)
        if (i // len(base)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.thumbnail((side, side))
        out.append(np.asarray(image.convert("RGB")))
    return out


def steps(device: torch.device, n_photos: int, n_phrases: int) -> tuple[float, float, float]:
    """The real architecture's image step, text encoding and phrase step (seconds, medians)."""
    started = time.perf_counter()
    sam3 = random_weights_sam3(device)
    params = sum(p.numel() for p in sam3.model.parameters()) / 1e6
    print(
        f"SAM 3 architecture at random weights: {params:.1f} M parameters, "
        f"built in {time.perf_counter() - started:.1f} s"
    )
    image_s, text_s, phrase_s = [], [], []
    for rgb in photos(n_photos):
        sync(device)
        t = time.perf_counter()
        features = sam3.encode_image(rgb)
        sync(device)
        image_s.append(time.perf_counter() - t)
        for phrase in PHRASES[:n_phrases]:
            t = time.perf_counter()
            text = sam3.encode_text(phrase)
            sync(device)
            text_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            found = sam3.segment(features, text, rgb.shape[:2], threshold=0.5)
            sync(device)
            phrase_s.append(time.perf_counter() - t)
        size = sum(f.numel() * f.element_size() for f in features) / 2**20
    print(
        f"  image step: {np.median(image_s):.2f} s per photo (median of {len(image_s)}; "
        f"its cached features: {size:.0f} MB)"
    )
    print(f"  text encoder: {np.median(text_s):.2f} s per phrase (once per query)")
    print(f"  phrase step: {np.median(phrase_s):.2f} s per photo and phrase (median of {len(phrase_s)})")
    print(f"  instances above 0.5 at random weights: {len(found.scores)} (the figure is the cost, not the masks)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"  peak RSS so far: {peak:.1f} GB"
        + (f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GB" if device.type == "cuda" else "")
    )
    return float(np.median(image_s)), float(np.median(text_s)), float(np.median(phrase_s))


def query_latency(device: torch.device, model: str, tops: list[int]) -> None:
    """A refined query as the CLI and the server run it, over an index of max(tops) photos."""
    from PIL import Image

    from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
    from usesearch.indexer.refine import RefineOptions, Refiner

    sam3 = random_weights_sam3(device) if model == "sam3" else load_sam3("tiny", device=device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, rgb in enumerate(photos(max(tops))):
            Image.fromarray(rgb).save(folder / f"photo-{i:03d}.jpg", quality=92)
        options = IndexOptions(
            preset="tiny", masker="felzenszwalb", masker_options={"max_masks": 30}, device=str(device)
        )
        index_paths([folder], Path(tmp) / "db", options)
        index = SegmentIndex.open(Path(tmp) / "db", device=str(device))
        index.query("warm up", k=1)  # the USE model loads once, as a server's does
        print(
            f"query --refine sam3 latency "
            f"({'real architecture, random weights' if model == 'sam3' else 'tiny SAM 3'}, {device}):"
        )
        for top in tops:
            refiner = Refiner(index, RefineOptions(top=top), sam3=sam3)  # an empty cache: cold
            for label, phrase in (("cold", PHRASES[0]), ("cached", PHRASES[1]), ("cached", PHRASES[2])):
                sync(device)
                t = time.perf_counter()
                hits = refiner.query(phrase, k=20)
                sync(device)
                took = (time.perf_counter() - t) * 1000
                r = refiner.last
                print(
                    f"  N={top:3d} {label:6s}: {took:8.1f} ms  (USE {r.ms['use']:.0f}, text {r.ms['text']:.0f}, "
                    f"SAM 3 {r.ms['sam3']:.0f} ms; image steps {r.image_steps}, cached {r.cached}; {len(hits)} hits)"
                )
            refiner.close()
        index.close()


def check_builder() -> None:
    """Our composition against sam3's own builder (its hard-coded CUDA tensors sent to
    the CPU for this check only): the same weights, names and shapes, and with the same
    weights the same image features and detections."""
    from usesearch.masks.sam3_build import bpe_vocabulary, pinning_is_a_no_op

    zeros = torch.zeros
    torch.zeros = lambda *a, **k: zeros(*a, **{key: v for key, v in k.items() if key != "device"})  # type: ignore[assignment]
    try:
        from sam3.model.decoder import TransformerDecoder
        from sam3.model_builder import build_sam3_image_model

        coords = TransformerDecoder._get_coords
        TransformerDecoder._get_coords = staticmethod(lambda h, w, device: coords(h, w, "cpu"))  # type: ignore[method-assign]
        reference = build_sam3_image_model(bpe_path=bpe_vocabulary(), device="cpu", load_from_HF=False)
        TransformerDecoder._get_coords = staticmethod(coords)  # type: ignore[method-assign]
    finally:
        torch.zeros = zeros  # type: ignore[assignment]
    ours = random_weights_sam3(torch.device("cpu"))
    with seeded(1):
        fill_uninitialised(reference)  # NaN otherwise: no checkpoint fills them
    a, b = reference.state_dict(), ours.model.state_dict()
    print(
        f"same weight names: {a.keys() == b.keys()} ({len(a)}); same shapes: {all(a[k].shape == b[k].shape for k in a)}"
    )
    ours.model.load_state_dict(a)
    rgb = photos(1)[0]
    mine = ours.encode_image(rgb)
    theirs = Sam3Model(SAM3_MODELS["sam3"], reference, torch.device("cpu"), "reference")
    other = theirs.encode_image(rgb)
    print(f"image features max |difference|: {max((x - y).abs().max().item() for x, y in zip(mine, other)):.2e}")
    text = ours.encode_text(PHRASES[0])
    found = ours.segment(mine, text, rgb.shape[:2], -1.0)  # every query, kept or not
    with pinning_is_a_no_op():  # sam3's own geometry encoder pins memory, which needs a CUDA driver
        expected = theirs.segment(other, text, rgb.shape[:2], -1.0)
    print(f"detections: {len(found.scores)} and {len(expected.scores)}")
    print(f"  max |score difference|: {(found.scores - expected.scores).abs().max().item():.2e}")
    print(f"  masks equal: {torch.equal(found.masks, expected.masks)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when torch sees a GPU)")
    parser.add_argument("--photos", type=int, default=2, help="photos for the step timings (default 2)")
    parser.add_argument("--phrases", type=int, default=2, help="phrases per photo for the step timings (default 2)")
    parser.add_argument("--tops", default="10,20", help="N photos refined per query (default 10,20)")
    parser.add_argument(
        "--query-model", choices=("sam3", "tiny"), default=None, help="default: sam3 on a GPU, tiny on a CPU"
    )
    parser.add_argument("--skip-steps", action="store_true", help="only the query latencies")
    parser.add_argument("--check-builder", action="store_true", help="only compare with sam3's own builder")
    args = parser.parse_args()
    if args.check_builder:
        check_builder()
        return
    device = resolve_device(args.device)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other work on the machine skews CPU figures
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, load average: {load}")
    tops = [int(t) for t in args.tops.split(",")]
    query_model = args.query_model or ("sam3" if device.type == "cuda" else "tiny")
    if not args.skip_steps:
        image_s, text_s, phrase_s = steps(device, args.photos, args.phrases)
        if query_model != "sam3":
            for top in tops:
                print(
                    f"  projected query --refine at N={top}, real architecture on {device.type} (text once, then "
                    f"per photo): cold ~{text_s + top * (image_s + phrase_s):.0f} s, "
                    f"cached ~{text_s + top * phrase_s:.1f} s"
                )
    query_latency(device, query_model, tops)


if __name__ == "__main__":
    main()
