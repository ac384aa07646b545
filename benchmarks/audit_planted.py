"""The audit against planted errors, side by side with cleanlab, and at 10^6 annotations.

Planted (default): trains the tiny head on the synthetic world (or takes ``--head``),
writes a labelled dataset of that world into an index with each kind of error
planted at a known rate (``indexer/audit/planted.py``: classes swapped, annotations
removed, masks eroded or shifted, train photos copied into val re-encoded and resized,
annotations over background), runs ``usesearch audit``'s engine and prints, per list,
precision@k (k = the number planted) and AUROC against the clean items; and the same
for cleanlab's object-detection label issues (``cleanlab.object_detection``: the
swap, bad-location and overlooked box scores that ``find_label_issues`` pools, and
its image-level flags) given the same model predictions: each proposal's box with the
class the head gives it and that class's probability.

    pip install cleanlab   # 2.9; only this benchmark needs it
    python benchmarks/audit_planted.py [--photos 400] [--steps 300] [--head runs/tiny/head]

Scale: ``--annotations 1000000`` writes that many synthetic annotations (5 a photo,
with as many proposals, 768-d clustered embeddings, 20% in val and 1% of photos copied
across) straight into an index folder, then audits it in a fresh process limited to
``--threads`` cores, and prints the audit's time and peak memory (RSS).

    python benchmarks/audit_planted.py --annotations 1000000 [--folder DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def auroc(scores: dict, positives: set, universe: set) -> tuple[float, float]:
    """(precision@k with k = |positives|, AUROC) of a ranking over ``universe``; items
    without a score rank last. AUROC as the Mann-Whitney U of the positives' ranks (ties
    share their rank)."""
    from scipy.stats import rankdata

    items = sorted(universe, key=str)
    y = np.array([i in positives for i in items])
    s = np.array([scores.get(i, -np.inf) for i in items], np.float64)
    s[~np.isfinite(s)] = np.nanmin(s[np.isfinite(s)]) - 1 if np.isfinite(s).any() else 0
    top = np.argsort(-s, kind="stable")[: int(y.sum())]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan"), float("nan")
    u = rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2
    return float(y[top].mean()), float(u / (n_pos * n_neg))


def planted_run(args) -> None:
    import torch

    import usesearch
    from usesearch.indexer.audit import AuditConfig, audit_index
    from usesearch.indexer.audit.planted import PlantedConfig, load_truth, save_truth, write_planted

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.folder or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        saved = tmp / "planted.npz"  # the truth, for --reuse
        start = time.perf_counter()
        if args.reuse and saved.is_file():
            planted, world = load_truth(saved)
            shutil.rmtree(tmp / "db" / "audit", ignore_errors=True)
        else:
            head = args.head or train_head(tmp, args.steps)
            config = PlantedConfig(photos=args.photos, seed=args.seed)
            planted, world = write_planted(tmp / "db", tmp / "photos", usesearch.load_model(head), config, head)
            save_truth(saved, planted, world)
        print(
            f"planted world: {len(world)} photos (copies included), {len(planted.annotations)} annotations, "
            f"{len(planted.proposals)} proposals, written in {time.perf_counter() - start:.0f} s; planted: "
            + ", ".join(f"{k} {len(v)}" for k, v in planted.errors.items())
        )
        start = time.perf_counter()
        result = audit_index(tmp / "db", config=AuditConfig(keep=10**9))
        print(f"audit: {time.perf_counter() - start:.1f} s")
        ours = {
            kind: {i["item"]: i["score"] for i in result["lists"][kind]}
            for kind in ("swapped", "badly_located", "outliers")
        }
        ours["overlooked"] = {i["segment_id"]: i["score"] for i in result["lists"]["overlooked"]}
        leak_score: dict = {}
        for group in result["lists"]["leaks"]:
            for image_id in group["images"]:
                leak_score[image_id] = max(leak_score.get(image_id, 0.0), group["score"])
        ours["leaks"] = leak_score
        wrong = set().union(*(planted.errors[k] for k in ("swapped", "badly_located", "outliers")))
        clean_annotations = planted.annotations - wrong
        universes = {
            "swapped": clean_annotations | planted.errors["swapped"],
            "badly_located": clean_annotations | planted.errors["badly_located"],
            "outliers": clean_annotations | planted.errors["outliers"],
            "overlooked": planted.proposals,
            "leaks": planted.val_photos,
        }
        theirs = cleanlab_scores(planted, world, result["classes"], tmp / "db")
        tuned = cleanlab_scores(planted, world, result["classes"], tmp / "db", tuned=True) if theirs else {}
        head_row = f"\n{'list':>14} {'planted':>8} {'items':>6}   {'usesearch P@k':>13} {'AUROC':>6}"
        if theirs:
            head_row += (
                f"   {'cleanlab P@k':>12} {'AUROC':>6}   {'at p>' + format(tuned['threshold'], '.2f'):>12} {'AUROC':>6}"
            )
        print(head_row)
        for kind in ("swapped", "overlooked", "badly_located", "leaks", "outliers"):
            positives = planted.errors[kind] & universes[kind]
            p, a = auroc(ours[kind], positives, universes[kind])
            line = f"{kind:>14} {len(positives):>8} {len(universes[kind]):>6}   {p:>13.3f} {a:>6.3f}"
            for other in (theirs, tuned) if theirs else ():
                if kind in other:
                    cp, ca = auroc(other[kind], positives, universes[kind])
                    line += f"   {cp:>12.3f} {ca:>6.3f}"
                else:
                    line += f"   {'(no such list)':>19}"
            print(line)
        if "images" in theirs:
            flagged, erroneous = theirs["images"]
            print(
                f"\ncleanlab find_label_issues: {len(flagged)} photos flagged, "
                f"{len(flagged & erroneous)} of the {len(erroneous)} photos with a planted annotation error"
            )


def train_head(tmp: Path, steps: int) -> Path:
    from usesearch.training.config import TrainConfig
    from usesearch.training.data import load_samples
    from usesearch.training.synthetic import write_dataset
    from usesearch.training.train import Trainer

    start = time.perf_counter()
    cfg = TrainConfig(preset="tiny", batch_images=8, crop=128, max_steps=steps, lr=2e-3, checkpoint_every=10**9)
    Trainer(load_samples([write_dataset(tmp / "train", 96, seed=1)]), tmp / "run", cfg).run()
    print(f"trained the tiny head {steps} steps in {time.perf_counter() - start:.0f} s")
    return tmp / "run" / "head"


def xyxy(rows, ids) -> np.ndarray:
    """cleanlab's boxes (x1, y1, x2, y2) of these segments."""
    boxes = np.array([rows[i].bbox for i in ids], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def cleanlab_scores(planted, world, classes: list[str], db: Path, tuned: bool = False) -> dict:
    """cleanlab's per-box scores (1 - score: higher is more suspect) for the same photos,
    its predictions the proposals' classes and probabilities from the same stored
    embeddings and class texts the audit used."""
    try:
        from cleanlab.object_detection import filter as cl_filter
        from cleanlab.object_detection import rank as cl_rank
    except ImportError:
        print("cleanlab is not installed (pip install cleanlab): its columns are left out")
        return {}
    import torch

    import usesearch
    from usesearch.indexer.audit.scores import class_probabilities, prototypes
    from usesearch.indexer.folder import open_store
    from usesearch.tasks.semseg import LOGIT_SCALE

    store = open_store(db, read_only=True)
    info = store.info()
    texts = usesearch.load_model(Path(info.head) if info.head else info.preset).embed_classes(classes)
    everything = [s for _, anns, props in world.values() for s in [a[0] for a in anns] + list(props)]
    rows = store.rows(everything)
    vectors = {int(i): v for ids, block in store.embeddings(everything) for i, v in zip(ids, block)}
    # The classifier the audit's lists use: the text classifier averaged with the dataset's own class means.
    annotated = [a[0] for _, anns, _ in world.values() for a in anns]
    labels_of = np.array([classes.index(rows[i].category) for i in annotated])
    sums = np.zeros((len(classes), info.dim))
    np.add.at(sums, labels_of, np.array([vectors[i] for i in annotated], np.float64))
    protos = prototypes(sums)

    def probabilities(ids: list[int]) -> np.ndarray:
        e = np.array([vectors[i] for i in ids], np.float32).reshape(-1, info.dim)
        own = torch.softmax(torch.from_numpy(LOGIT_SCALE * e @ protos.T), dim=1).numpy()
        return (class_probabilities(e, texts) + own) / 2

    labels, predictions, order = [], [], []
    for image_id, (_, anns, props) in sorted(world.items()):
        ann_ids = [a[0] for a in anns]
        labels.append(
            {
                "bboxes": xyxy(rows, ann_ids),
                "labels": np.array([classes.index(c) for c in [rows[i].category for i in ann_ids]], np.int64),
                "image_name": str(image_id),
            }
        )
        by_id = dict(zip(props, range(len(props))))
        probs = probabilities(list(props))
        per_class, pred_order = [], []
        for k in range(len(classes)):
            members = [p for p in props if probs[by_id[p]].argmax() == k]
            per_class.append(
                np.hstack([xyxy(rows, members), probs[[by_id[p] for p in members], k][:, None]])
                if members
                else np.zeros((0, 5))
            )
            pred_order += members
        boxes_by_class = np.empty(len(classes), dtype=object)  # one [M, 5] array per class, whatever the shapes
        for k, found in enumerate(per_class):
            boxes_by_class[k] = found
        predictions.append(boxes_by_class)
        order.append((image_id, ann_ids, pred_order))
    # cleanlab counts only predictions above 0.95 (HIGH_PROBABILITY_THRESHOLD); a small
    # head is rarely that sure, so its scores are also given at the median confidence.
    confidences = np.concatenate([b[:, 4] for p in predictions for b in p]) if predictions else np.zeros(1)
    threshold = float(np.median(confidences)) if tuned else cl_rank.HIGH_PROBABILITY_THRESHOLD
    low = min(cl_rank.LOW_PROBABILITY_THRESHOLD, threshold)
    given = dict(labels=labels, predictions=predictions)
    swap = cl_rank.compute_swap_box_scores(**given, high_probability_threshold=threshold)
    badloc = cl_rank.compute_badloc_box_scores(**given, low_probability_threshold=low)
    overlooked = cl_rank.compute_overlooked_box_scores(**given, high_probability_threshold=threshold)
    out: dict = {"swapped": {}, "badly_located": {}, "overlooked": {}, "threshold": threshold}
    for (image_id, ann_ids, pred_order), s, b, o in zip(order, swap, badloc, overlooked):
        for sid, vs, vb in zip(ann_ids, s, b):
            key = f"{rows[sid].split}:{rows[sid].annotation_id}"
            out["swapped"][key], out["badly_located"][key] = 1 - vs, 1 - vb
        for sid, vo in zip(pred_order, o):
            if np.isfinite(vo):
                out["overlooked"][sid] = 1 - vo
    flags = cl_filter.find_label_issues(labels, predictions)
    erroneous = {
        image_id
        for image_id, (_, anns, props) in world.items()
        if any(
            f"{rows[a[0]].split}:{rows[a[0]].annotation_id}" in planted.errors[k]
            for a in anns
            for k in ("swapped", "badly_located", "outliers")
        )
        or any(p in planted.errors["overlooked"] for p in props)
    }
    out["images"] = ({o[0] for o, f in zip(order, flags) if f}, erroneous)
    store.close()
    return out


SCALE_DIM, SCALE_CLASSES, PER_PHOTO, BATCH = 768, 80, 5, 50_000


def scale_masks(per_photo: int = PER_PHOTO) -> list[str]:
    """RLE counts of ``per_photo`` + 1 boxes on a 480x640 photo: the annotations' places and
    one of background (what IoU and coverage are computed on); past 6, the places again."""
    from usesearch.masks import rle

    out = []
    for j in range(per_photo + 1):
        mask = np.zeros((480, 640), bool)
        k = j % 6
        mask[40 + 70 * k : 100 + 70 * k, 50 + 90 * k : 140 + 90 * k] = True
        out.append(rle.encode(mask)["counts"])
    return out


def build_scale(folder: Path, n: int, seed: int = 0, per_photo: int = PER_PHOTO) -> np.ndarray:
    """An index of ``n`` annotations (``per_photo`` a photo) and as many proposals + 1 a
    photo, written as the indexer commits them; returns the classes' vectors."""
    from sqlalchemy import insert

    from usesearch.indexer.folder import db_url_for
    from usesearch.indexer.records import ANNOTATION, PROPOSAL, ImageRecord, IndexInfo, SegmentRecord
    from usesearch.indexer.store import Store

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(SCALE_CLASSES, SCALE_DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    store = Store(db_url_for(folder, None), folder=folder)
    store.claim()
    info = dict(preset="bench", embedder="use", fingerprint="bench", head=None, dim=SCALE_DIM, masker="none")
    store.set_info(IndexInfo(**info, masker_params={}, factory="IDMap2,Flat", index_mode="auto"))
    masks, photos, start = scale_masks(per_photo), n // per_photo, time.perf_counter()
    copies = set(rng.choice(photos, photos // 100, replace=False).tolist())
    per_batch = BATCH // per_photo
    segment_id, image_id = 0, 0
    for lo in range(0, photos, per_batch):
        hi = min(photos, lo + per_batch)
        count, d = hi - lo, SCALE_DIM
        labels = rng.integers(SCALE_CLASSES, size=(count, per_photo))
        base = centres[labels] + rng.normal(0, 0.9 / np.sqrt(d), (count, per_photo, d)).astype(np.float32)
        splits = np.where(rng.random(count) < 0.2, "val", "train")
        copied = np.array([p in copies for p in range(lo, hi)])
        # Every photo, then the copies of some into the other split: (which photo, its split).
        which = np.concatenate([np.arange(count), np.flatnonzero(copied)])
        split_of = np.concatenate([splits, np.where(splits[copied] == "train", "val", "train")])
        noisy = base[which] + rng.normal(0, 0.02 / np.sqrt(d), (len(which), per_photo, d)).astype(np.float32)
        props = noisy + rng.normal(0, 0.3 / np.sqrt(d), noisy.shape).astype(np.float32)
        stray = rng.normal(size=(len(which), 1, d)).astype(np.float32)
        vectors = np.concatenate([noisy, props, stray], axis=1)  # [photos, 2 * per_photo + 1, d]
        vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
        vectors = vectors.reshape(-1, d)
        images, segments = [], []
        for n, (photo, split) in enumerate(zip(which.tolist(), split_of.tolist())):
            image_id += 1
            name = f"/archive/{image_id // 1000:04d}/img{image_id:08d}.jpg"
            images.append(
                dict(id=image_id, path=name, fs_path=name.encode(), sha256=f"{image_id:064x}", width=640, height=480)
                | dict(status="done")
            )
            for j in range(2 * per_photo + 1):
                segment_id += 1
                labelled = j < per_photo
                segments.append(
                    dict(id=segment_id, image_id=image_id, x=0, y=0, w=1, h=1, area=5400, vec_chunk=0, vec_row=0)
                    | dict(
                        rle_counts=masks[j if labelled else j - per_photo], source=ANNOTATION if labelled else PROPOSAL
                    )
                    | dict(
                        annotation_id=segment_id if labelled else None,
                        category=f"class {labels[photo, j]:02d}" if labelled else None,
                        iscrowd=False if labelled else None,
                        split=split if labelled else None,
                    )
                )
        chunks, rows = store.files().append(vectors)
        for seg, c, r in zip(segments, chunks.tolist(), rows.tolist()):
            seg["vec_chunk"], seg["vec_row"] = c, r
        with store.sessions.begin() as s:
            s.execute(insert(ImageRecord), images)
            s.execute(insert(SegmentRecord), segments)
        print(f"  stored {hi * per_photo} annotations ({time.perf_counter() - start:.0f} s)", flush=True)
    store.close()
    names = sorted(f"class {c:02d}" for c in range(SCALE_CLASSES))
    return centres[[int(name.split()[1]) for name in names]]


AUDIT_CHILD = """
import sys, threading, time, resource
import numpy as np, torch, faiss
torch.set_num_threads(int(sys.argv[3])); faiss.omp_set_num_threads(int(sys.argv[3]))
from usesearch.indexer.audit import AuditConfig, audit_index
peak_anon = [0]
def sample():  # the process's own memory, without the file pages it maps (the page cache's)
    while True:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
        peak_anon[0] = max(peak_anon[0], kb)
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
result = audit_index(sys.argv[1], class_vectors=np.load(sys.argv[2]), say=lambda line: print(line, flush=True))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"audit: {time.perf_counter() - start:.1f} s; peak RSS {peak:.2f} GB (anonymous {peak_anon[0] / 2**20:.2f} GB)")
print({k: len(v) for k, v in result["lists"].items()})
"""


def scale_run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "scale"
        folder.mkdir(parents=True, exist_ok=True)
        vectors = folder / "class_vectors.npy"
        if not args.reuse:
            start = time.perf_counter()
            np.save(vectors, build_scale(folder, args.annotations, args.seed, args.per_photo))
            print(f"built {args.annotations} annotations in {time.perf_counter() - start:.0f} s")
        shutil.rmtree(folder / "audit", ignore_errors=True)  # a finished audit's checkpoint would be reused
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.getcwd()}
        cores = ",".join(str(c) for c in range(args.threads))
        command = [
            "taskset",
            "-c",
            cores,
            sys.executable,
            "-c",
            AUDIT_CHILD,
            str(folder),
            str(vectors),
            str(args.threads),
        ]
        subprocess.run(command, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--head", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--annotations", type=int, default=0, help="a synthetic scale run of this many annotations")
    parser.add_argument("--per-photo", type=int, default=PER_PHOTO, help="the scale run's annotations a photo")
    parser.add_argument("--folder", type=Path, help="where the scale run's index goes (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="audit the scale index already in --folder")
    args = parser.parse_args()
    if args.annotations:
        scale_run(args)
    else:
        planted_run(args)


if __name__ == "__main__":
    main()
