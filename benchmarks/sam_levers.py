"""SAM as ``load_sam`` hands it out (SDPA attention in the encoder, image tokens
shared across prompts in the decoder) against segment-anything's own code: time of
the image encoder and of the mask decoder for N point prompts, and the largest
difference of their outputs; then the bytes each decoder's ops write (at their own
dtypes: under ``--autocast`` what stays float32 counts 4 bytes an element), a proxy
for its time on a GPU, where the decoder is memory-bound.

With ``--compiled-decoder``, a third row: our decoder through ``CompiledDecoder`` (the
generator's default on a GPU), timed after its compile, its outputs against stock's.
With ``--upscaled 0.5``, our decoder with only that share of the prompts upscaled (the
IoU filter's gate, its threshold at that quantile of each prompt's best predicted IoU).
With ``--upscaling-ways``, the decoder's upscaling alone (``sam_fast.mask_logits``) for
that many prompts, as transposed convolutions and as per-pixel products
(``sam_fast.PIXELWISE_ON``), eager and compiled (as a compiled decoder runs it).

    python benchmarks/sam_levers.py [--arch vit_b] [--prompts 64] [--device cpu|cuda] [--autocast]
        [--compiled-decoder] [--upscaled 0.5] [--upscaling-ways]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from stage_floor import WrittenBytes  # noqa: E402  (a benchmark beside this one)

from usesearch.masks import sam_fast  # noqa: E402
from usesearch.masks.sam import build_sam  # noqa: E402
from usesearch.masks.sam_compile import decoder_for
from usesearch.masks.sam_fast import speed_up  # noqa: E402


def timed(fn, device: str, repeat: int, warm_up: bool = True):
    if warm_up:
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", action="store_true", help="bfloat16, as the generator runs on a GPU")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compiled-decoder", action="store_true", help="also time CompiledDecoder")
    parser.add_argument(
        "--upscaled", type=float, default=None, help="also time the IoU filter's gate upscaling this share of prompts"
    )
    parser.add_argument("--upscaling-ways", action="store_true", help="also time the upscaling each way")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stock = build_sam(args.arch).to(args.device).eval()
    fast = speed_up(copy.deepcopy(stock))
    side = stock.image_encoder.img_size
    pixels = torch.randn(1, 3, side, side, device=args.device)
    points = torch.rand(args.prompts, 1, 2, device=args.device) * side
    labels = torch.ones(args.prompts, 1, dtype=torch.int, device=args.device)
    print(f"SAM {args.arch}, {args.device}, {args.prompts} prompts, autocast={args.autocast}, {args.threads} threads")
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.autocast):
        results = {}
        for name, sam in (("segment-anything", stock), ("usesearch", fast)):
            encoder_s, features = timed(lambda sam=sam: sam.image_encoder(pixels), args.device, args.repeat)
            sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)

            def decode(sam=sam, features=features, sparse=sparse, dense=dense, decoder=None, **gate):
                return (decoder or sam.mask_decoder)(
                    image_embeddings=features,
                    image_pe=sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                    **gate,
                )

            decoder_s, (low_res, _) = timed(decode, args.device, args.repeat)
            results[name] = (encoder_s, decoder_s, features.float(), low_res.float())
            with WrittenBytes(itemsize=None) as written:
                decode()
            print(
                f"  {name:<17} encoder {encoder_s:8.3f} s   decoder ({args.prompts} prompts) {decoder_s:8.3f} s, "
                f"writing {written.total / 1e9:.2f} GB",
                flush=True,
            )
        if args.compiled_decoder:  # the same features and prompts as the usesearch row
            compiled = decoder_for(fast, compiled=True)
            compile_s, _ = timed(lambda: decode(decoder=compiled), args.device, repeat=1, warm_up=False)
            compiled_s, (compiled_logits, _) = timed(lambda: decode(decoder=compiled), args.device, args.repeat)
            print(
                f"  {'compiled decoder':<17} {'':17} decoder ({args.prompts} prompts) {compiled_s:8.3f} s "
                f"(compiling {compile_s:.1f} s{', FAILED: eager' if compiled.failed else ''})"
            )
        if args.upscaled is not None:  # the IoU filter's gate: a threshold at that share of the prompts' best IoUs

            def gated(upscale_above=None, decoder=None):
                return decode(decoder=decoder, **({} if upscale_above is None else {"upscale_above": upscale_above}))

            best = gated()[1].float().amax(dim=1)
            threshold = float(best.quantile(1.0 - args.upscaled)) if args.upscaled < 1.0 else float(best.min()) - 1.0
            kept = int((best > threshold).sum())
            # Eager, then compiled as a GPU's generator runs it (the gate between its two graphs).
            ways = [("IoU gate", None)] + ([("IoU gate, compiled", compiled)] if args.compiled_decoder else [])
            for label, decoder in ways:
                gated_s, _ = timed(lambda decoder=decoder: gated(threshold, decoder), args.device, args.repeat)
                with WrittenBytes(itemsize=None) as written:
                    gated(threshold, decoder)
                print(
                    f"  {label:<18} {'':16} decoder, {kept} of {args.prompts} prompts upscaled {gated_s:8.3f} s, "
                    f"writing {written.total / 1e9:.2f} GB"
                )
        if args.upscaling_ways:
            upscaling_ways(fast.mask_decoder, args)
    (enc0, dec0, f0, m0), (enc1, dec1, f1, m1) = results.values()
    print(
        f"  speed-up: encoder {enc0 / enc1:.2f}x, decoder {dec0 / dec1:.2f}x; largest difference: "
        f"features {(f0 - f1).abs().max():.2e} (of {f0.abs().max():.2e}), mask logits {(m0 - m1).abs().max():.2e}"
    )
    if args.compiled_decoder:
        gap = (m0 - compiled_logits.float()).abs().max()
        print(
            f"  compiled decoder: {dec0 / compiled_s:.2f}x stock's, {dec1 / compiled_s:.2f}x eager's; "
            f"mask logits {gap:.2e} from stock's"
        )


def upscaling_ways(decoder, args) -> None:
    """``mask_logits`` for ``--upscaled`` of ``--prompts`` (all without it), each way,
    eager then compiled (dynamic in the batch, as ``CompiledDecoder`` compiles it)."""
    prompts = max(1, round(args.prompts * (args.upscaled or 1.0)))
    dtype = torch.bfloat16 if args.autocast else torch.float32
    hs = torch.randn(prompts, decoder.num_mask_tokens + 1, 256, device=args.device, dtype=dtype)
    keys = torch.randn(prompts, 64 * 64, 256, device=args.device, dtype=dtype)
    was = set(sam_fast.PIXELWISE_ON)
    out = {}
    try:
        for way, on in (("transposed convolutions", set()), ("per-pixel products", {args.device})):
            sam_fast.PIXELWISE_ON.clear()
            sam_fast.PIXELWISE_ON.update(on)
            eager_s, out[way] = timed(lambda: sam_fast.mask_logits(decoder, hs, keys, 64, 64), args.device, args.repeat)
            compiled = torch.compile(sam_fast.mask_logits, dynamic=True)
            compile_s, _ = timed(lambda: compiled(decoder, hs, keys, 64, 64), args.device, repeat=1, warm_up=False)
            compiled_s, _ = timed(lambda: compiled(decoder, hs, keys, 64, 64), args.device, args.repeat)
            print(
                f"  upscaling, {prompts} prompts, {way:<23} eager {eager_s * 1000:7.1f} ms, "
                f"compiled {compiled_s * 1000:7.1f} ms (compiling {compile_s:.1f} s)",
                flush=True,
            )
    finally:
        sam_fast.PIXELWISE_ON.clear()
        sam_fast.PIXELWISE_ON.update(was)
    gap = (out["transposed convolutions"].float() - out["per-pixel products"].float()).abs().max()
    print(f"  upscaling: largest difference between the two ways {gap:.2e}")


if __name__ == "__main__":
    main()
