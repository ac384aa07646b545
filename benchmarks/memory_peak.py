"""Peak memory of the two paths that used to grow with photo size and concurrency.

* Indexing one 16-megapixel photo with 64 masks (tiny preset, Felzenszwalb masker):
  peak RSS of a fresh process, and the size of one mask stack for comparison.
  Goal: within 3 GB, a small multiple of the mask stack.
* The web app's picture path: 24 concurrent requests for one 48-megapixel photo
  through ``ImageCache`` (what ``tile.png`` does first). Goal: one decode, peak
  about one decoded image above the baseline, not 24.

Each measurement runs in its own process, so the peaks do not mix.

    python benchmarks/memory_peak.py [--megapixels 16] [--serve-megapixels 48]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

INDEX_ONE = """
import resource, sys, time
from usesearch.indexer import IndexOptions, index_paths
start = time.perf_counter()
report = index_paths([sys.argv[1]], sys.argv[2], IndexOptions(preset="tiny", masker="felzenszwalb"))
print(report.done, report.segments, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

DECODE_CONCURRENTLY = """
import resource, sys, threading, time
import numpy as np
from usesearch.io.files import read_bytes
from usesearch.indexer.web.render import ImageCache
from types import SimpleNamespace
path = sys.argv[1]
data, sha = read_bytes(path)
from PIL import Image
w, h = Image.open(path).size
from usesearch.indexer.known_images import file_stat
record = SimpleNamespace(  # the fields of an ImageRecord the cache reads
    id=1, fs_path=path.encode(), path=path, sha256=sha, width=w, height=h, file_stat=file_stat(path)
)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = ImageCache(max_bytes=2**40)
failed = []
def decode():
    try:
        cache.rgb(record)
    except BaseException as exc:  # a thread's error would only be printed: this run measured nothing
        failed.append(repr(exc))
start = time.perf_counter()
threads = [threading.Thread(target=decode) for _ in range(24)]
for t in threads: t.start()
for t in threads: t.join()
if failed:
    sys.exit(f"{len(failed)} of 24 decodes failed: {failed[0]}")
print(cache.decoded, time.perf_counter() - start, baseline, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def photo(path: str, megapixels: float) -> tuple[int, int]:
    from PIL import Image
    from skimage import data

    side = (megapixels * 1e6 / 12) ** 0.5
    w, h = int(side * 4), int(side * 3)
    Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC).save(path, quality=90)
    return w, h


def run(code: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"memory_peak: a measuring process failed (exit {out.returncode}): {out.stderr.strip()[-1500:]}")
    return out.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=16)
    parser.add_argument("--serve-megapixels", type=float, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "photos")
        os.mkdir(folder)
        w, h = photo(os.path.join(folder, "big.jpg"), args.megapixels)
        done, segments, seconds, peak_kb = run(INDEX_ONE, folder, os.path.join(tmp, "db"))
        stack = int(segments) * w * h
        print(
            f"index one {w}x{h} photo ({w * h / 1e6:.1f} MP), {segments} masks: peak RSS {int(peak_kb) / 2**20:.2f} GB "
            f"in {float(seconds):.1f} s; one mask stack is {stack / 2**30:.2f} GB"
        )
        big = os.path.join(tmp, "huge.jpg")
        w, h = photo(big, args.serve_megapixels)
        decoded, seconds, base_kb, peak_kb = run(DECODE_CONCURRENTLY, big)
        print(
            f"24 concurrent picture requests for one {w}x{h} photo "
            f"({w * h / 1e6:.1f} MP, {w * h * 3 / 2**30:.2f} GB decoded): "
            f"{decoded} decode(s), {float(seconds):.1f} s, peak RSS {int(peak_kb) / 2**20:.2f} GB "
            f"({(int(peak_kb) - int(base_kb)) / 2**20:.2f} GB above the baseline)"
        )


if __name__ == "__main__":
    main()
