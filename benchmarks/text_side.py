"""What a query by text costs to load: the whole model (``load_model``) against its text
side alone (``load_text_model``, what ``query``, ``serve``, ``audit`` and calibration load
now), each in a process of its own: wall time to the first text vector and peak memory.

The presets' real architectures with random weights, written where the real files go
(``USESEARCH_HOME/weights``; a head checkpoint of the preset beside them), so every byte
a real run reads is read: the cost does not depend on the values. Then each backbone's
build for its file alone, with its random init skipped (``weights_to_come``) and drawn.

    python benchmarks/text_side.py [--presets l14-336,b16] [--repeat 2] [--loaders load_model]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The child: load, embed one text, print the seconds (imports included) and the memory
# then held (resident pages: what a server keeps while it waits for the next query).
CHILD = (
    "import os, sys, time; start = time.perf_counter(); import usesearch; "
    "model = getattr(usesearch, sys.argv[1])(sys.argv[2], head=sys.argv[3], device='cpu'); "
    "model.embed_text(['a red apple behind the rabbit']); seconds = time.perf_counter() - start; "
    "pages = int(open('/proc/self/statm').read().split()[1]); "
    "print(seconds, pages * os.sysconf('SC_PAGE_SIZE') / 2**20)"
)


def write_weights(preset_name: str, home: Path) -> Path:
    """Random weights at each backbone's trained size where the loaders look, and a
    head checkpoint built on them; the head's path."""
    import open_clip
    import timm
    from safetensors.torch import save_file

    import usesearch
    from usesearch.models.weights import clip_status, dino_status

    preset = usesearch.get_preset(preset_name)
    clip_file, dino_file = Path(clip_status(preset.clip).expected), Path(dino_status(preset.dino).expected)
    clip_file.parent.mkdir(parents=True, exist_ok=True)
    clip = open_clip.create_model(preset.clip.model_name, pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    dino = timm.create_model(preset.dino.timm_name, pretrained=False, num_classes=0, **preset.dino.overrides)
    save_file({k: v.contiguous() for k, v in dino.state_dict().items()}, str(dino_file))
    del clip, dino
    use = usesearch.create_use(preset)
    return usesearch.save_head(home / f"head-{preset_name}", use.trainable_state_dict(), preset, {"step": 0})


def build_times(preset_name: str, repeat: int) -> None:
    """Seconds to build CLIP and DINOv2 for their files, the init skipped and drawn (best
    of ``repeat``, the files in the page cache)."""
    import contextlib

    import usesearch
    from usesearch.models import backbones

    preset = usesearch.get_preset(preset_name)
    skipping = backbones.weights_to_come
    for name, build in (
        ("CLIP", lambda: backbones.build_clip(preset.clip, preset_name)),
        ("DINOv2", lambda: backbones.build_dino(preset.dino, preset_name)),
    ):
        seconds = {}
        for way, context in (("skipped", skipping), ("drawn", lambda coming=True: contextlib.nullcontext())):
            backbones.weights_to_come = context
            runs = []
            for _ in range(repeat + 1):  # the first reads the file into the page cache
                start = time.perf_counter()
                build()
                runs.append(time.perf_counter() - start)
            seconds[way] = min(runs[1:])
        backbones.weights_to_come = skipping
        print(
            f"{preset_name:8} {name:7} built for its file: init skipped {seconds['skipped']:.2f} s, "
            f"drawn {seconds['drawn']:.2f} s",
            flush=True,
        )


def measure(loader: str, preset: str, head: Path, env: dict) -> tuple[float, float, float]:
    """(seconds to the first text vector, MiB held then, peak MiB) of one process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, loader, preset, str(head)], stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{loader} {preset} failed")
    seconds, held = out.split()[-2:]
    return float(seconds), float(held), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="l14-336,b16")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--loaders", default="load_model,load_text_model", help="(an older tree has only the first)")
    parser.add_argument("--write-weights", metavar="PRESET", help=argparse.SUPPRESS)  # the child that writes them
    parser.add_argument("--build-times", metavar="PRESET", help=argparse.SUPPRESS)  # the child that builds them
    args = parser.parse_args()
    if "tiny" in args.presets.split(","):  # its weights are seeded in code: no file to load, nothing to time
        parser.error("--presets: tiny has no weight files to load; time l14-336 or b16 (random weights written)")
    if args.write_weights:
        print(write_weights(args.write_weights, Path(os.environ["USESEARCH_HOME"])))
        return
    if args.build_times:
        build_times(args.build_times, args.repeat)
        return
    with tempfile.TemporaryDirectory() as home:
        os.environ.update(USESEARCH_HOME=home, HF_HUB_OFFLINE="1")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print(f"{'preset':8} {'loader':16} {'seconds':>8} {'held MiB':>9} {'peak MiB':>9}")
        for preset in args.presets.split(","):
            # In a process of its own: a child's peak memory counts its parent's at the fork.
            written = subprocess.run(
                [sys.executable, __file__, "--write-weights", preset], env=env, stdout=subprocess.PIPE, check=True
            )
            head = Path(written.stdout.decode().split()[-1])
            for loader in args.loaders.split(","):
                runs = [measure(loader, preset, head, env) for _ in range(args.repeat)]
                seconds, held, peak = (min(r[i] for r in runs) for i in range(3))
                print(f"{preset:8} {loader:16} {seconds:8.2f} {held:9.0f} {peak:9.0f}", flush=True)
            subprocess.run(
                [sys.executable, __file__, "--build-times", preset, "--repeat", str(args.repeat)], env=env, check=True
            )


if __name__ == "__main__":
    main()
