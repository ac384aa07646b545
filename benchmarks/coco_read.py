"""Reading a large COCO file for ``index --coco``: time and peak memory of
``io.coco_dataset.read_coco`` over a synthetic file shaped like COCO's instances (polygons
of ~25 points, a few compressed RLE crowds, categories listed last as COCO does).
Each read runs in a fresh process, so its peak is its own.

    python benchmarks/coco_read.py [--annotations 1000000] [--folder /tmp/coco-read]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PER_PHOTO = 7  # COCO train2017: 860k annotations over 118k photos


def write_coco(path: Path, annotations: int, seed: int = 0) -> None:
    """Written in pieces, so the writing itself holds little."""
    rng = np.random.default_rng(seed)
    photos = max(1, -(-annotations // PER_PHOTO))
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic"}, "images": [')
        f.write(
            ",".join(
                json.dumps({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": 480, "width": 640})
                for i in range(photos)
            )
        )
        f.write('], "annotations": [')
        for start in range(0, annotations, 10_000):
            items = []
            for i in range(start, min(annotations, start + 10_000)):
                crowd = i % 100 == 0
                if crowd:
                    segmentation: object = {"size": [480, 640], "counts": "PPYo0" + "1O" * 40}
                else:
                    points = rng.integers(8, 40)
                    segmentation = [np.round(rng.uniform(0, 480, 2 * points), 2).tolist()]
                items.append(
                    json.dumps(
                        {
                            "id": i + 1,
                            "image_id": i // PER_PHOTO + 1,
                            "category_id": int(rng.integers(1, 81)),
                            "segmentation": segmentation,
                            "area": 1000.0,
                            "bbox": [10.0, 10.0, 50.0, 50.0],
                            "iscrowd": int(crowd),
                        }
                    )
                )
            f.write(("," if start else "") + ",".join(items))
        f.write('], "categories": [')
        f.write(",".join(json.dumps({"id": c, "name": f"class{c}", "supercategory": "x"}) for c in range(1, 81)))
        f.write("]}")


READ = """
import resource, sys, time
from usesearch.io.coco_dataset import read_coco
start = time.perf_counter()
dataset = read_coco(sys.argv[1])
seconds = time.perf_counter() - start
n = sum(len(e.annotations) for e in dataset.images)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{n} annotations of {len(dataset.images)} photos read in {seconds:.1f} s, peak RSS {peak:.0f} MiB, "
      f"{len(dataset.problems)} problems")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/coco-read"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    path = args.folder / f"instances-{args.annotations}.json"
    if not path.exists():
        start = time.perf_counter()
        write_coco(path, args.annotations)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    print(f"file: {path.stat().st_size / 2**20:.0f} MiB")
    subprocess.run([sys.executable, "-c", READ, str(path)], check=True)


if __name__ == "__main__":
    main()
