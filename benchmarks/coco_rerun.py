"""A re-run of ``index --coco`` over unchanged photos: how long, and that none is read
(each photo's stat is the one recorded when it was last read whole).

    python benchmarks/coco_rerun.py [--photos N]     (default 300 photos of 640x480)
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

import usesearch.indexer.coco_index as coco_index
from usesearch.indexer import IndexOptions, known_images
from usesearch.indexer.coco_index import index_coco
from usesearch.masks import rle

known_images.RACY_NS = 0  # the photos are written just now: their stats trusted all the same
root = Path(tempfile.mkdtemp())
photos = root / "photos"
photos.mkdir()
base = np.array(Image.fromarray(data.astronaut()).resize((640, 480)))
images, anns = [], []
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--photos", type=int, default=300, help="photos of 640x480 in the labelled dataset")
n = parser.parse_args().photos
for i in range(n):
    Image.fromarray(np.roll(base, i, axis=1)).save(photos / f"{i:05d}.jpg", quality=90)
    m = np.zeros((480, 640), bool)
    m[100:200, 100 + i % 300 : 200 + i % 300] = True
    images.append({"id": i + 1, "file_name": f"{i:05d}.jpg", "height": 480, "width": 640})
    anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle.encode(m), "iscrowd": 0})
coco = root / "val.json"
coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
index_coco([photos], coco, root / "db", IndexOptions(preset="tiny"))
read_bytes, real = [], coco_index.read_bytes
coco_index.read_bytes = lambda path, *a: (lambda got: read_bytes.append(len(got[0])) or got)(real(path, *a))
for run in ("re-run", "again"):
    start = time.perf_counter()
    report = index_coco([photos], coco, root / "db", IndexOptions(preset="tiny"))
    print(
        f"{run} over {n} unchanged photos: {time.perf_counter() - start:.2f} s, {report.skipped} skipped, "
        f"{len(read_bytes)} read ({sum(read_bytes) / 1e6:.1f} MB)"
    )
    read_bytes.clear()
shutil.rmtree(root)
