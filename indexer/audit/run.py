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
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from usesearch.errors import IndexMismatchError, UsesearchError
from usesearch.io.atomic import write_atomic
from usesearch.reports import counted

from ..folder import check_writable, head_to_load, index_flags, open_store
from ..records import IndexInfo, info_summary
from ..store import Store
from . import leaks, reviews, scores
from .items import LISTS, resolve
from .lists_file import CHECKPOINT, FOLDER, RESULT
from .ranked import Ranked
from .source import DatasetReader

PHASES = ("annotations", "photos", "leaks", "done")


@dataclass(frozen=True)
class AuditConfig:
    keep: int = 1000  # items kept per list: what a report's -k and the web view page through
    batch: int = 20_000  # annotations per step (a checkpoint after each); the photos' segments at most
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
    leaks_done: bool = False  # the leak pass ran: a photo pass run again (longer lists) skips it


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
    folder = db_dir / FOLDER  # its lists and resumable passes: refused before the passes where it cannot be written
    writes = f"keeps its lists and resumable passes in {folder} (audit a copy of the index)"
    check_writable(folder if folder.exists() else db_dir, "audit", writes)
    store = open_store(db_dir, db_url, read_only=True)
    try:
        generation = store.generation()  # before anything is read: a commit after it is caught at the end
        reader = DatasetReader(store)
        if not reader.classes:
            raise UsesearchError(
                f"{db_dir} holds no annotations; index a labelled dataset first: "
                f"`usesearch index IMAGES --coco FILE.json {index_flags(db_dir, db_url)}`"
            )
        if class_vectors is None:
            class_vectors = _class_vectors(store, reader.classes, device)
        identity = _identity(store, reader, config, class_vectors)
        dim = _info(store).dim
        # Each list shows ``keep`` items besides those already reviewed (left out when
        # shown): else, its first ``keep`` reviewed, a re-run would show nothing more. It
        # holds ``keep`` more as headroom, so that reviews (each one makes it want one
        # more) take a re-run of the photo pass only once they pass ``keep`` of its kind.
        reviewed = Counter(kind for kind, _ in reviews.verdicts(store.engine))
        wanted = {kind: config.keep + reviewed[kind] for kind in LISTS}
        held = {kind: wanted[kind] + config.keep for kind in LISTS}
        state = _load(folder / CHECKPOINT, identity, len(reader.classes), dim)
        if state is None:
            state = _fresh(held, len(reader.classes), dim)
        else:
            was = state.phase
            if _lengthen(state, wanted, held):
                say(f"{sum(reviewed.values())} items reviewed: the photo pass runs again for the next ones")
            elif was != "done":
                say(f"resuming the audit at its {state.phase} pass (after id {state.after})")
        save = lambda: _save(folder / CHECKPOINT, identity, state)  # noqa: E731
        crowd = f" ({reader.crowd} crowd, left out)" if reader.crowd else ""
        say(
            f"{counted(reader.annotations, 'annotation')}{crowd} of "
            f"{counted(len(reader.classes), 'class', 'classes')}, {counted(reader.proposals, 'proposal')}"
        )
        for line in reader.notes(db_dir):
            say(f"  {line}")
        passes = {
            "annotations": lambda: _annotation_pass(store, reader, state, config, save),
            "photos": lambda: _photo_pass(store, reader, class_vectors, state, config, save),
            "leaks": lambda: _leak_pass(store, reader, state, config, save),
        }
        for phase, run in passes.items():
            if state.phase == phase:
                start = time.perf_counter()
                run()
                say(f"{phase} pass: {time.perf_counter() - start:.0f} s")

        def refuse_if_changed() -> None:  # an index run committed meanwhile: lists of two indexes
            if store.generation() != generation:
                raise UsesearchError(
                    f"{db_dir} changed while it was audited (an `index`, `prune` or `compact` run); "
                    "audit it again once that is done"
                )

        refuse_if_changed()
        start = time.perf_counter()
        shown = {kind: ranked.top(wanted[kind]) for kind, ranked in state.lists.items()}
        result = resolve(store, reader, shown, state.pairs, wanted["leaks"], config.near_duplicate)
        refuse_if_changed()  # (the items' labels and paths were read by ``resolve``: after the check before)
        say(f"lists resolved: {time.perf_counter() - start:.0f} s")
        alone = int((state.counts == 1).sum())
        if alone:  # (their outlier score is not defined: no other member to compare with)
            say(
                f"  outliers: {counted(alone, 'class', 'classes')} with one annotation, not ranked "
                "(none to compare with)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / RESULT, json.dumps(result).encode())
        return result
    finally:
        store.close()


def _class_vectors(store: Store, classes: list[str], device: str | None) -> np.ndarray:
    from usesearch.models.factory import load_text_model

    info = _info(store)
    head = head_to_load(store.folder, info.model_head)
    model = load_text_model(info.preset, embedder=info.embedder, head=head, device=device)
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
            files.let_go()  # every row is read once: bounded memory, not the files' size
        state.after = batch.last
        save()
    state.phase, state.after = "photos", 0
    save()


def _photo_pass(store, reader, class_vectors, state: _State, config: AuditConfig, save) -> None:
    files = store.files()
    protos = scores.prototypes(state.sums)
    for images, segs in reader.photo_batches(state.after, config.photo_batch, config.batch):
        e = files.read(segs.chunks, segs.rows, ids=segs.ids)
        files.let_go()
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
        class_sims = e @ protos.T  # [segments, classes]: once a batch, for both lists
        likeliest = np.argsort(-class_sims, axis=1)[:, : scores.SAME_CLASS_TOP]
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
            score, proposed = scores.overlooked(class_sims[p], covered, config.max_covered)
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
    state.phase, state.after = "done" if state.leaks_done else "leaks", 0
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
            picked = np.sort(np.random.default_rng(0).permutation(len(base_ids))[: leaks.training_rows(len(base_ids))])
            index.train(files.read(chunks[picked], rows[picked], ids=base_ids[picked]))
        for lo in range(0, len(base_ids), config.batch):
            part = slice(lo, lo + config.batch)
            index.add_with_ids(files.read(chunks[part], rows[part], ids=base_ids[part]), base_ids[part])
            files.let_go()
        # The largest split asks the base; every split does where two or more are in it.
        asking = largest if len(sizes) == 2 else None
        for batch in reader.annotation_batches(state.after, config.batch, split=asking):
            if len(batch.ids):
                e = files.read(batch.chunks, batch.rows, ids=batch.ids)
                files.let_go()
                found = leaks.near_pairs(index, base_ids, base_split, e, batch.ids, batch.splits, config.near_duplicate)
                state.pairs = leaks.unique_pairs(np.concatenate([state.pairs, found]))
            state.after = batch.last
            save()
    state.phase, state.after, state.leaks_done = "done", 0, True
    save()


# -- checkpoints ---------------------------------------------------------------------------------
# The version of what the lists hold: raised when a rule changes what goes into a list
# (2: swapped holds only annotations another class wins, and lists count what they
# found), so that an audit made under the old rules is not shown as the new one's.
LIST_RULES = 2


def _identity(store: Store, reader: DatasetReader, config: AuditConfig, class_vectors: np.ndarray) -> str:
    """What a checkpoint belongs to: the index's contents (its generation), the classes
    and their vectors, the settings and the lists' rules. Any change starts the audit afresh."""
    digest = hashlib.sha256(np.ascontiguousarray(class_vectors, np.float32).tobytes()).hexdigest()
    settings = {name: value for name, value in asdict(config).items() if name != "keep"}  # see ``_lengthen``
    payload = [store.generation(), reader.classes, reader.splits, settings, digest, LIST_RULES]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _fresh(wanted: dict[str, int], classes: int, dim: int) -> _State:
    return _State(
        "annotations",
        0,
        np.zeros((classes, dim), np.float64),
        np.zeros(classes, np.int64),
        {kind: Ranked(wanted[kind]) for kind in LISTS if kind != "leaks"},
    )


def _lengthen(state: _State, wanted: dict[str, int], held: dict[str, int]) -> bool:
    """Make each list hold at least ``wanted`` items. A list that holds that many (its
    headroom), or never cut an item, just holds more from now on; where one cut
    items it now wants (more reviewed than its headroom, or a larger ``keep``), the
    photo pass runs again from the start, every list holding ``held`` (headroom
    again), the classes' sums and, once made, the leak pairs kept. True where it does."""
    lists = state.lists
    cut = any(lists[kind].keep < wanted[kind] and len(lists[kind]) >= lists[kind].keep for kind in lists)
    if cut and state.phase != "annotations":
        state.phase, state.after = "photos", 0
        state.lists = {kind: Ranked(held[kind]) for kind in lists}  # every list: the pass pushes them all again
        if not state.leaks_done:
            state.pairs = np.zeros((0, 3))  # a leak pass cut short starts again after it
        return True
    for kind, ranked in lists.items():
        ranked.keep = max(ranked.keep, wanted[kind])
    return False


def _save(path: Path, identity: str, state: _State) -> None:
    arrays = {"sums": state.sums, "counts": state.counts, "pairs": state.pairs}
    for kind, ranked in state.lists.items():
        arrays.update(ranked.state(kind))
    meta = {
        "identity": identity,
        "phase": state.phase,
        "after": state.after,
        "keep": {kind: ranked.keep for kind, ranked in state.lists.items()},
        "found": {kind: ranked.found for kind, ranked in state.lists.items()},
        "leaks_done": state.leaks_done,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{"meta": np.array(json.dumps(meta)), **arrays})  # type: ignore[arg-type]  # names, not flags
    write_atomic(path, buffer.getvalue())


def _load(path: Path, identity: str, classes: int, dim: int) -> _State | None:
    """The checkpoint, where it belongs to this very audit (else None: start afresh)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("identity") != identity:
                return None
            arrays = {name: saved[name] for name in saved.files}
            kept = {kind: int(meta["keep"][kind]) for kind in LISTS if kind != "leaks"}
    # Torn or foreign (a killed copy, an older usesearch's): it is only a head start.
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    found = meta.get("found", {})
    lists = {kind: Ranked.from_state(kept[kind], kind, arrays, found.get(kind)) for kind in kept}
    done = bool(meta.get("leaks_done"))
    return _State(meta["phase"], int(meta["after"]), arrays["sums"], arrays["counts"], lists, arrays["pairs"], done)
