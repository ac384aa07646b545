"""The audit's lists as a person reads them: each kept item resolved against the
catalog (the annotation's id and split, the classes by name, the photo, the box),
the leaks grouped by pair of photos."""

from __future__ import annotations

import numpy as np

from ..store import Store
from . import leaks
from .ranked import Ranked
from .source import DatasetReader

LISTS = ("swapped", "overlooked", "badly_located", "leaks", "outliers")


def resolve(
    store: Store, reader: DatasetReader, lists: dict[str, Ranked], pairs: np.ndarray, keep: int, near_duplicate: float
) -> dict:
    """``{"classes", "splits", "generation", "lists": {kind: [item, ...]}}``: each list's
    kept best (``lists``; the leaks from the near-duplicate ``pairs`` and the photos'
    content hashes), each item with what a person needs to judge it: the annotation's
    id and split, the classes, the photo, the box, the score."""
    classes = reader.classes
    wanted = set()
    for kind in ("swapped", "overlooked", "badly_located", "outliers"):
        wanted.update(lists[kind].columns.get("key", np.zeros(0, np.int64)).tolist())
    pair_ids = np.unique(pairs[:, :2].astype(np.int64)) if len(pairs) else np.zeros(0, np.int64)
    placed = store.placements(pair_ids)
    segment_image = {i: image_id for i, (image_id, _) in placed.items()}
    segment_box = {i: box for i, (_, box) in placed.items()}
    straddling = store.contents_across_splits()
    photo_splits, photo_counts = reader.photo_splits({*segment_image.values(), *straddling})
    near = leaks.near_groups(pairs, segment_image, segment_box, photo_counts, photo_splits, threshold=near_duplicate)
    exact = leaks.exact_groups(straddling, photo_splits)
    # A near-duplicate group that is the same file seen twice says nothing new.
    exact_sets = {frozenset(g["images"]) for g in exact}
    groups = exact + [g for g in near if frozenset(g["images"]) not in exact_sets]
    found = {kind: ranked.found for kind, ranked in lists.items()} | {"leaks": len(groups)}
    groups = groups[:keep]
    for g in groups:
        g["segment_id"] = int(g["segments"][0][0]) if g.get("segments") else None
        wanted.update(s for s in [g["segment_id"]] if s is not None)
    rows = store.rows(wanted)
    photo_paths = {}
    for g in groups:
        for image_id in g["images"]:
            if image_id not in photo_paths:
                record = store.image(image_id)
                photo_paths[image_id] = record.path if record is not None else None

    def common(item: dict, segment_id: int | None) -> dict:
        row = rows.get(segment_id) if segment_id is not None else None
        return {
            **item,
            "segment_id": segment_id,
            "image_id": row.image_id if row else item.get("image_id"),
            "image": row.image_path if row else item.get("image"),  # (a leak of whole photos: its first)
            "bbox": list(row.bbox) if row else None,
        }

    def annotation(row) -> dict:
        return {"item": f"{row.split}:{row.annotation_id}", "annotation_id": row.annotation_id, "split": row.split}

    out: dict[str, list[dict]] = {kind: [] for kind in LISTS}
    for r in lists["swapped"].rows():
        row = rows.get(r["key"])
        if row is not None:
            out["swapped"].append(
                common(
                    {
                        **annotation(row),
                        "score": round(r["score"], 6),
                        "labelled": classes[r["label"]],
                        "preferred": classes[r["preferred"]],
                        "labelled_probability": round(r["p_label"], 6),
                        "preferred_probability": round(r["p_preferred"], 6),
                    },
                    r["key"],
                )
            )
    for r in lists["outliers"].rows():
        row = rows.get(r["key"])
        if row is not None:
            out["outliers"].append(
                common({**annotation(row), "score": round(r["score"], 6), "labelled": classes[r["label"]]}, r["key"])
            )
    for r in lists["badly_located"].rows():
        row = rows.get(r["key"])
        if row is not None:
            item = {**annotation(row), "score": round(r["score"], 6), "labelled": classes[r["label"]]}
            item.update(iou=round(1 - r["score"], 6), proposal_id=int(r["proposal"]) if r["proposal"] >= 0 else None)
            out["badly_located"].append(common(item, r["key"]))
    overlooked = lists["overlooked"].rows()
    # The splits of each photo's annotations (``of_split``; a listed photo with none: no split).
    their_splits, _ = reader.photo_splits(rows[r["key"]].image_id for r in overlooked if r["key"] in rows)
    for r in overlooked:
        if r["key"] in rows:
            item = {"item": f"segment:{r['key']}", "score": round(r["score"], 6), "proposed": classes[r["label"]]}
            item["splits"] = sorted(their_splits.get(rows[r["key"]].image_id, ()))
            out["overlooked"].append(common({**item, "covered": round(r["covered"], 6)}, r["key"]))
    for g in groups:
        item = {
            "item": "images:" + ",".join(map(str, g["images"])),
            "score": g["score"],
            "kind": g["kind"],
            "images": g["images"],
            "paths": [photo_paths[i] for i in g["images"]],
            "splits": g["splits"],
            "segments": g.get("segments", []),
            "image_id": g["images"][0],
            "image": photo_paths[g["images"][0]],
        }
        out["leaks"].append(common(item, g["segment_id"]))
    for items in out.values():
        for rank, item in enumerate(items, 1):
            item["rank"] = rank
    # ``found``: each list's items in all, of which ``lists`` holds the best.
    return {"classes": classes, "splits": reader.splits, "generation": store.generation(), "lists": out, "found": found}


def of_split(lists: dict[str, list[dict]], split: str) -> dict[str, list[dict]]:
    """Each list's items of one split, ranked again: an annotation's own split, a
    proposal's photo's (overlooked), a leak's splits (either side); from each list's
    kept best (``AuditConfig.keep``), as the audit ranks the whole dataset."""

    def of_it(kind: str, item: dict) -> bool:
        return split in item.get("splits", ()) if kind in ("overlooked", "leaks") else item.get("split") == split

    out = {kind: [dict(item) for item in items if of_it(kind, item)] for kind, items in lists.items()}
    for items in out.values():
        for rank, item in enumerate(items, 1):
            item["rank"] = rank
    return out
