"""``usesearch audit --db DIR``: a labelled dataset's five suspect lists, worked out
from what the index stores (embeddings, masks, content hashes): no photo is decoded,
no embedding computed, except the dataset's class names through the index's model.

Three streamed passes, each in batches, with a checkpoint after every batch
(``audit/checkpoint.npz`` in the index folder, replaced atomically), so a killed
audit resumes where it stopped and ends with the same lists:

1. annotations in id order: each class's sum of embeddings;
2. annotated photos in id order, with their proposals: each annotation's margin
   against the class preferred by the model's text classifier averaged with the
   dataset's own (the other members' means: swapped), its distance to the other
   members' mean (outliers), proposals inside no annotation that look like a class
   (overlooked), annotations their best same-class proposal overlaps poorly (badly
   located);
3. annotations against every split but the largest in FAISS (near-duplicate leaks),
   then photos with the same content in two splits.
Memory: the batch, the classes' sums, each list's ``keep`` best, the smaller splits' rows."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from usesearch.errors import IndexMismatchError, UsesearchError
from usesearch.io.atomic import write_atomic

from ..folder import open_store
from ..records import IndexInfo, info_summary
from ..store import Store
from . import leaks, scores
from .ranked import Ranked
from .source import DatasetReader

LISTS = ("swapped", "overlooked", "badly_located", "leaks", "outliers")
FOLDER, CHECKPOINT, RESULT = "audit", "checkpoint.npz", "lists.json"
PHASES = ("annotations", "photos", "leaks", "done")


@dataclass(frozen=True)
class AuditConfig:
    keep: int = 1000  # items kept per list: what a report's -k and the web view page through
    batch: int = 20_000  # annotations per step (a checkpoint after each)
    photo_batch: int = 1_000  # photos per step
    near_duplicate: float = leaks.NEAR_DUPLICATE
    max_covered: float = scores.OVERLOOKED_MAX_COVERED


@dataclass
class _State:
    phase: str
    after: int
    sums: np.ndarray
    counts: np.ndarray
    lists: dict[str, Ranked]
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


def audit_index(
    db_dir: str | os.PathLike,
    db_url: str | None = None,
    config: AuditConfig = AuditConfig(),
    class_vectors: np.ndarray | None = None,
    device: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Audit the labelled dataset in an index; returns (and writes to
    ``DIR/audit/lists.json``) ``{"classes", "splits", "lists": {kind: [item, ...]}}``,
    each list best first. ``class_vectors``: the classes' text embeddings, where the
    caller has them (else the index's model embeds the class names)."""
    db_dir = Path(db_dir)
    store = open_store(db_dir, db_url, read_only=True)
    try:
        reader = DatasetReader(store)
        if not reader.classes:
            raise UsesearchError(
                f"{db_dir} holds no annotations; index a labelled dataset first: "
                f"`usesearch index IMAGES --coco FILE.json --db {db_dir}`"
            )
        if class_vectors is None:
            class_vectors = _class_vectors(store, reader.classes, device)
        identity = _identity(store, reader, config, class_vectors)
        dim = _info(store).dim
        folder = db_dir / FOLDER
        state = _load(folder / CHECKPOINT, identity, config, len(reader.classes), dim)
        if state is None:
            state = _fresh(config, len(reader.classes), dim)
        elif state.phase != "done":
            say(f"resuming the audit at its {state.phase} pass (after id {state.after})")
        save = lambda: _save(folder / CHECKPOINT, identity, state)  # noqa: E731
        say(f"{reader.annotations} annotations of {len(reader.classes)} classes, {reader.proposals} proposals")
        if state.phase == "annotations":
            _annotation_pass(store, reader, state, config, save)
        if state.phase == "photos":
            _photo_pass(store, reader, class_vectors, state, config, save)
        if state.phase == "leaks":
            _leak_pass(store, reader, state, config, save)
        result = _resolve(store, reader, state, config)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / RESULT, json.dumps(result).encode())
        return result
    finally:
        store.close()


def _class_vectors(store: Store, classes: list[str], device: str | None) -> np.ndarray:
    from usesearch.models.factory import load_model

    info = _info(store)
    model = load_model(info.preset, embedder=info.embedder, head=info.head, device=device)
    if model.fingerprint != info.fingerprint:
        raise IndexMismatchError(
            f"this index was built with {info_summary(info)}; the model loaded is {model.fingerprint}"
        )
    return np.asarray(model.embed_classes(classes), np.float32)


def _info(store: Store) -> IndexInfo:
    info = store.info()
    if info is None:
        raise UsesearchError("this index holds nothing yet: index a labelled dataset first")
    return info


# -- the passes ------------------------------------------------------------------------------
def _annotation_pass(store, reader, state: _State, config: AuditConfig, save) -> None:
    files = store.files()
    for batch in reader.annotation_batches(state.after, config.batch):
        if len(batch.ids):
            e = files.read(batch.chunks, batch.rows, ids=batch.ids)
            order = np.argsort(batch.labels, kind="stable")
            labels, starts = np.unique(batch.labels[order], return_index=True)
            state.sums[labels] += np.add.reduceat(e[order].astype(np.float64), starts, axis=0)
            state.counts[labels] += np.diff(np.append(starts, len(order)))
        state.after = batch.last
        save()
    state.phase, state.after = "photos", 0
    save()


def _photo_pass(store, reader, class_vectors, state: _State, config: AuditConfig, save) -> None:
    files = store.files()
    protos = scores.prototypes(state.sums, state.counts)
    for images, segs in reader.photo_batches(state.after, config.photo_batch):
        e = files.read(segs.chunks, segs.rows, ids=segs.ids)
        ann = segs.is_annotation & ~segs.crowd & (segs.labels >= 0)
        labels = segs.labels[ann]
        margin, preferred, p_label, p_preferred = scores.swapped(
            e[ann], labels, class_vectors, state.sums, state.counts
        )
        state.lists["swapped"].push(
            score=margin,
            key=segs.ids[ann],
            image_id=segs.image_ids[ann],
            label=labels,
            preferred=preferred,
            p_label=p_label,
            p_preferred=p_preferred,
        )
        distance = scores.centroid_distances(e[ann], labels, state.sums, state.counts)
        state.lists["outliers"].push(
            score=distance, key=segs.ids[ann], image_id=segs.image_ids[ann], label=segs.labels[ann]
        )
        likeliest = np.argsort(-(e @ protos.T), axis=1)[:, : scores.SAME_CLASS_TOP]
        found: dict[str, list] = {"overlooked": [], "badly_located": []}  # per photo; pushed once a batch
        bounds = np.flatnonzero(np.diff(segs.image_ids)) + 1
        for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(segs.ids)]))):
            a = np.flatnonzero(segs.is_annotation[lo:hi]) + lo
            p = np.flatnonzero(~segs.is_annotation[lo:hi]) + lo
            if not len(p):
                continue
            shares, ious = scores.overlaps(
                [segs.masks[i] for i in p], [segs.masks[i] for i in a], segs.areas[p], segs.areas[a]
            )
            covered = scores.coverage(shares)
            score, proposed = scores.overlooked(e[p], covered, protos, config.max_covered)
            found["overlooked"].append(
                dict(score=score, key=segs.ids[p], image_id=segs.image_ids[p], label=proposed, covered=covered)
            )
            judged = ann[a]
            if judged.any():
                located, best = scores.badly_located(ious[judged], segs.labels[a[judged]], likeliest[p])
                judged = a[judged]
                found["badly_located"].append(
                    dict(
                        score=located,
                        key=segs.ids[judged],
                        image_id=segs.image_ids[judged],
                        label=segs.labels[judged],
                        proposal=np.where(best >= 0, segs.ids[p][np.maximum(best, 0)], -1),
                    )
                )
        for kind, parts in found.items():
            if parts:
                state.lists[kind].push(**{name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
        state.after = int(images[-1])
        save()
    state.phase, state.after = "leaks", 0
    save()


def _leak_pass(store, reader, state: _State, config: AuditConfig, save) -> None:
    """Near-duplicate annotations of different splits. The base index (every split but
    the largest) is rebuilt on a resume, the same way: seeded, from the same rows."""
    sizes = {split: 0 for split in reader.splits}
    for source, split, _, n in store.label_counts():
        if source == "annotation" and split in sizes:
            sizes[split] += n
    if len(sizes) > 1:
        largest = max(sorted(sizes), key=lambda s: sizes[s])
        files = store.files()
        base = [b for s in reader.splits if s != largest for b in reader.annotation_batches(0, config.batch, split=s)]
        base_ids = np.concatenate([b.ids for b in base])
        order = np.argsort(base_ids)  # the base's rows in id order: the same index on every run
        base_ids, base_split = base_ids[order], np.concatenate([b.splits for b in base])[order]
        chunks, rows = np.concatenate([b.chunks for b in base])[order], np.concatenate([b.rows for b in base])[order]
        del base
        index = leaks.base_index(_info(store).dim, len(base_ids))
        if not index.is_trained:
            picked = np.sort(np.random.default_rng(0).permutation(len(base_ids))[: leaks.TRAIN_ROWS])
            index.train(files.read(chunks[picked], rows[picked], ids=base_ids[picked]))
        for lo in range(0, len(base_ids), config.batch):
            part = slice(lo, lo + config.batch)
            index.add_with_ids(files.read(chunks[part], rows[part], ids=base_ids[part]), base_ids[part])
        # The largest split asks the base; every split does where two or more are in it.
        asking = largest if len(sizes) == 2 else None
        for batch in reader.annotation_batches(state.after, config.batch, split=asking):
            if len(batch.ids):
                e = files.read(batch.chunks, batch.rows, ids=batch.ids)
                found = leaks.near_pairs(index, base_ids, base_split, e, batch.ids, batch.splits, config.near_duplicate)
                state.pairs = np.concatenate([state.pairs, found])
            state.after = batch.last
            save()
    state.phase, state.after = "done", 0
    save()


# -- the lists, with what a person needs to judge each item --------------------------------------
def _resolve(store: Store, reader: DatasetReader, state: _State, config: AuditConfig) -> dict:
    classes = reader.classes
    wanted = set()
    for kind in ("swapped", "overlooked", "badly_located", "outliers"):
        wanted.update(state.lists[kind].columns.get("key", np.zeros(0, np.int64)).tolist())
    photo_splits, photo_counts = reader.photo_splits()
    pair_ids = np.unique(state.pairs[:, :2].astype(np.int64)) if len(state.pairs) else np.zeros(0, np.int64)
    paired = store.rows(pair_ids)
    segment_image = {i: r.image_id for i, r in paired.items()}
    segment_box = {i: _relative_box(r) for i, r in paired.items()}
    near = leaks.near_groups(
        state.pairs, segment_image, segment_box, photo_counts, photo_splits, threshold=config.near_duplicate
    )
    exact = leaks.exact_groups(store.image_hashes(photo_splits), photo_splits)
    # A near-duplicate group that is the same file seen twice says nothing new.
    exact_sets = {frozenset(g["images"]) for g in exact}
    groups = (exact + [g for g in near if frozenset(g["images"]) not in exact_sets])[: config.keep]
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
            "image": row.image_path if row else None,
            "bbox": list(row.bbox) if row else None,
        }

    def annotation(row) -> dict:
        return {"item": f"{row.split}:{row.annotation_id}", "annotation_id": row.annotation_id, "split": row.split}

    out: dict[str, list[dict]] = {kind: [] for kind in LISTS}
    for r in state.lists["swapped"].rows():
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
    for r in state.lists["outliers"].rows():
        row = rows.get(r["key"])
        if row is not None:
            out["outliers"].append(
                common({**annotation(row), "score": round(r["score"], 6), "labelled": classes[r["label"]]}, r["key"])
            )
    for r in state.lists["badly_located"].rows():
        row = rows.get(r["key"])
        if row is not None:
            item = {**annotation(row), "score": round(r["score"], 6), "labelled": classes[r["label"]]}
            item.update(iou=round(1 - r["score"], 6), proposal_id=int(r["proposal"]) if r["proposal"] >= 0 else None)
            out["badly_located"].append(common(item, r["key"]))
    for r in state.lists["overlooked"].rows():
        if r["key"] in rows:
            item = {"item": f"segment:{r['key']}", "score": round(r["score"], 6), "proposed": classes[r["label"]]}
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
        }
        out["leaks"].append(common(item, g["segment_id"]))
    for items in out.values():
        for rank, item in enumerate(items, 1):
            item["rank"] = rank
    return {"classes": classes, "splits": reader.splits, "generation": store.generation(), "lists": out}


def _relative_box(row) -> tuple[float, float, float, float]:
    (h, w), (x, y, bw, bh) = row.image_hw, row.bbox
    return x / w, y / h, bw / w, bh / h


# -- checkpoints ---------------------------------------------------------------------------------
def _identity(store: Store, reader: DatasetReader, config: AuditConfig, class_vectors: np.ndarray) -> str:
    """What a checkpoint belongs to: the index's contents (its generation), the classes
    and their vectors, and the settings. Any change starts the audit afresh."""
    digest = hashlib.sha256(np.ascontiguousarray(class_vectors, np.float32).tobytes()).hexdigest()
    payload = [store.generation(), reader.classes, reader.splits, asdict(config), digest]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _fresh(config: AuditConfig, classes: int, dim: int) -> _State:
    return _State(
        "annotations",
        0,
        np.zeros((classes, dim), np.float64),
        np.zeros(classes, np.int64),
        {kind: Ranked(config.keep) for kind in LISTS if kind != "leaks"},
    )


def _save(path: Path, identity: str, state: _State) -> None:
    arrays = {"sums": state.sums, "counts": state.counts, "pairs": state.pairs}
    for kind, ranked in state.lists.items():
        arrays.update(ranked.state(kind))
    meta = {"identity": identity, "phase": state.phase, "after": state.after}
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{"meta": np.array(json.dumps(meta)), **arrays})  # type: ignore[arg-type]  # names, not flags
    write_atomic(path, buffer.getvalue())


def _load(path: Path, identity: str, config: AuditConfig, classes: int, dim: int) -> _State | None:
    """The checkpoint, where it belongs to this very audit (else None: start afresh)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("identity") != identity:
                return None
            arrays = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, KeyError):  # a torn or foreign file: it is only a head start
        return None
    lists = {kind: Ranked.from_state(config.keep, kind, arrays) for kind in LISTS if kind != "leaks"}
    return _State(meta["phase"], int(meta["after"]), arrays["sums"], arrays["counts"], lists, arrays["pairs"])


def load_lists(db_dir: str | os.PathLike) -> dict | None:
    """The lists the last finished audit of this index wrote (None: never audited)."""
    path = Path(db_dir) / FOLDER / RESULT
    return json.loads(path.read_text()) if path.is_file() else None
