"""How hard a compressed index must look, measured on its own data.

A compressed (IVF-PQ) index visits ``nprobe`` of its lists and re-scores ``rerank``
candidates exactly; how many a query needs depends on the data and on the queries.
So whenever one is built or rebuilt, ``calibrate`` measures it:

- queries: ``IMAGE_QUERIES`` stored segments (each excluded from its own results,
  kind "image") and typed queries: where the index's model is at hand, the
  ``VOCABULARY`` through the model's own ``embed_text`` (kind "text", what a typed
  query goes through), or query vectors the caller gives by kind (``queries=``: a
  benchmark's own query generator, a log of real queries), which stand for them;
- the truth: their exact top ``K`` from the float16 embedding files, one streamed
  pass in blocks (``Store.embeddings``), so memory stays bounded;
- the curve: for each ``nprobe`` (powers of two from the index's default up to all
  lists) one FAISS search of the largest ``RERANKS`` candidates; since candidates
  are re-scored exactly, recall at ``rerank`` r is the share of the true top K among
  the first r candidates, so one search gives every r;
- the headline recall, which the target is for: the mean over the typed queries
  (every kind but "image", pooled, so kinds count in the proportion given), else
  over the image ones. Not "every kind meets the target": one hard kind (diffuse
  concepts whose 10th and 100th neighbours are within 0.05 in cosine) then drives
  the choice to every list and the most candidates whatever the others need, and
  the headline says nothing about what a typical query gets. Each kind's recall is
  kept beside it and ``describe`` names the worst, so a weak kind stays visible;
- the choice: for each r the fewest lists meeting ``target``; those few settings
  are timed on the real search path (``SegmentIndex``, the SQL and file re-scoring
  included), in turn query by query so that load elsewhere on the machine slows them
  alike (the load is kept, and ``describe`` flags a busy machine: ``usesearch
  calibrate`` measures again without a rebuild), and the fastest within
  ``budget_ms`` wins (where none is within it,
  the fastest; where none meets the target, the best recall within the budget;
  ``met`` says whether both held); then the chosen setting is measured on that
  path with every query, which is the recall ``info`` shows.

The result is ``calibration.json`` in the index folder, written atomically, keyed by
a fingerprint of the trained index (coarse centroids and codebook): a rebuilt
index does not match it, so a stale calibration is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from usesearch import tasks
from usesearch.errors import first_line
from usesearch.io.atomic import write_atomic
from usesearch.models.factory import load_model

from . import index_choice
from .filters import SearchFilters
from .records import IndexInfo
from .store import Store
from .vectors import Vectors, ivf_of, ranked, search_params

log = logging.getLogger(__name__)

FILE = "calibration.json"
VERSION = 2  # 2: the headline is the typed queries' mean, kinds may be given
TARGET = 0.95  # recall@K the typed queries must reach on average
BUDGET_MS = 50.0  # p50 latency a setting may take
K = 10
IMAGE_QUERIES = 100
LATENCY_QUERIES = 16  # timed per setting considered
BUSY = 0.75  # load per core above which the timings are flagged as taken on a busy machine
RERANKS = (1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000)  # one FAISS search gives every one
SEED = 0
# COCO's 80 classes: nouns of everyday photos, embedded through the model's own query templates.
CLASSES = tuple((Path(tasks.__file__).parent / "data" / "coco_things_80.txt").read_text().strip().split("\n"))


class Searcher(Protocol):
    """What is calibrated: ``SegmentIndex`` (its store, vectors and search path)."""

    store: Store
    index: Vectors
    info: IndexInfo

    def search_vector(self, vector, k: int = 10, filters: SearchFilters | None = None, exclude=frozenset()) -> list: ...


@dataclass
class Calibration:
    fingerprint: str  # of the trained index measured (``trained_fingerprint``)
    factory: str
    segments: int  # in the index when measured
    nprobe: int  # the chosen defaults
    rerank: int
    recall: float  # measured at them on the search path: the typed queries' mean (else the image ones')
    recall_kinds: dict[str, float]  # by kind: "text" (or the caller's kinds), "image"
    p50_ms: float
    met: bool  # the target was met within the budget
    target: float = TARGET
    budget_ms: float = BUDGET_MS
    k: int = K
    queries: dict[str, int] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    version: int = VERSION
    load_per_core: float = 0.0  # the machine's load while the settings were timed (``BUSY`` and above: busy)

    def rerank_for(self, k: int) -> int:
        """Candidates to re-score for ``k`` hits: as measured for ``K``, more for more."""
        return max(self.rerank, -(-self.rerank * k // self.k))

    def worst(self) -> tuple[str, float]:
        """The kind of query with the lowest recall, and that recall."""
        return min(self.recall_kinds.items(), key=lambda kv: kv[1], default=("", self.recall))

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {value:.2f}" for kind, value in self.recall_kinds.items())
        worst = f"; worst {self.worst()[0]}" if len(self.recall_kinds) > 1 else ""
        line = (
            f"recall@{self.k} {self.recall:.2f} ({kinds}{worst}) at nprobe {self.nprobe}, rerank {self.rerank}: "
            f"~{self.p50_ms:.0f} ms (measured at {self.segments} segments"
        )
        busy = f"; timed on a busy machine (load {self.load_per_core:.1f} per core)" * (self.load_per_core >= BUSY)
        if not self.met:
            return line + f"; target {self.target} not met within {self.budget_ms:.0f} ms: the best found{busy})"
        return line + f"; target {self.target}{busy})"


def trained_fingerprint(index: Vectors) -> str | None:
    """What a calibration is tied to: the trained state of an IVF (its coarse
    centroids and codebook), None for an exact index. Adding or removing vectors
    keeps it; any retraining (a rebuild, another factory) changes it."""
    ivf = ivf_of(index.index)
    if ivf is None:
        return None
    digest = hashlib.sha256(f"{ivf.d} {ivf.nlist} {type(ivf).__name__}".encode())
    digest.update(faiss.serialize_index(ivf.quantizer).tobytes())
    pq = getattr(ivf, "pq", None)
    if pq is not None:
        digest.update(faiss.vector_to_array(pq.centroids).tobytes())
    return digest.hexdigest()


def load(folder: Path, index: Vectors) -> Calibration | None:
    """The folder's calibration when it measured this very index, else None."""
    fingerprint = trained_fingerprint(index)
    path = Path(folder) / FILE
    if fingerprint is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        found = Calibration(**data) if data.get("version") == VERSION else None
    except (ValueError, TypeError, OSError):
        return None  # unreadable or from another version: as if none
    return found if found is not None and found.fingerprint == fingerprint else None


def model_for(info: IndexInfo):
    """The index's own model for text queries, or None where it does not load here
    (weights not downloaded, a head file moved) or is not the one it was built with."""
    try:
        model = load_model(info.preset, embedder=info.embedder, head=info.head, device="cpu")
    except Exception as exc:  # noqa: BLE001 - any reason: calibrate with image queries only
        log.warning("calibrating with image queries only: the index's model does not load (%s)", first_line(exc))
        return None
    return model if model.fingerprint == info.fingerprint else None


def stored_target(folder: Path) -> float:
    """The target the folder's last calibration was asked for (kept across rebuilds), else ``TARGET``."""
    try:
        return float(json.loads((Path(folder) / FILE).read_text())["target"])
    except (ValueError, TypeError, KeyError, OSError):
        return TARGET


def write(folder: Path, calibration: Calibration) -> None:
    """Atomically: a reader sees the old file or the new one."""
    write_atomic(Path(folder) / FILE, json.dumps(asdict(calibration), indent=1))


def apply(index: Vectors, calibration: Calibration | None) -> None:
    """Make the calibrated ``nprobe`` the index's own (also for a GPU mirror)."""
    if calibration is None:
        return
    for shard in index.shards:
        ivf = ivf_of(shard)
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, calibration.nprobe)
    index.refresh_mirror()


def query_vectors(
    store: Store,
    model,
    image_queries: int = IMAGE_QUERIES,
    seed: int = SEED,
    given: Mapping[str, np.ndarray] | None = None,
):
    """(vectors [m, d], ids to exclude [m] (0: none), kind of each [m]): the
    ``given`` typed queries by kind (else the model's vocabulary as "text" where
    ``model``), then ``image_queries`` stored segments as "image"."""
    ids = store.segment_ids()
    dim = store.files().dim
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(ids, min(image_queries, len(ids)), replace=False)) if len(ids) else ids
    typed = dict(given or {})
    if "image" in typed:
        raise ValueError('"image" queries are the stored segments calibration picks; name given kinds otherwise')
    if not typed and model is not None:
        typed["text"] = np.asarray(model.embed_text(list(CLASSES)), np.float32)
    parts, excluded, kinds = [], [], []
    for kind, given_vectors in typed.items():
        vectors = np.asarray(given_vectors, np.float32).reshape(-1, dim)
        parts.append(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        excluded.append(np.zeros(len(vectors), np.int64))
        kinds += [kind] * len(vectors)
    for batch_ids, batch in store.embeddings(picked):
        parts.append(batch)
        excluded.append(batch_ids)
        kinds += ["image"] * len(batch_ids)
    vectors = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
    return vectors, np.concatenate(excluded) if excluded else np.zeros(0, np.int64), np.array(kinds)


def exact_top(store: Store, vectors: np.ndarray, excluded: np.ndarray, k: int = K) -> np.ndarray:
    """[m, k] ids of each query's exact top ``k`` over the stored float16 rows (as
    the search re-scores them), excluding its own; one streamed pass over the
    embedding files in blocks, merged by FAISS's ``ResultHeap``."""
    heap = faiss.ResultHeap(len(vectors), k, keep_max=True)
    for ids, batch in store.embeddings():
        scores = vectors @ batch.T  # [m, b]
        scores[excluded[:, None] == ids[None, :]] = -np.inf
        if scores.shape[1] > k:  # each block's own top k first: the heap then sees [m, k], not [m, b]
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, block_ids = np.take_along_axis(scores, top, 1), ids[top]
        else:
            block_ids = np.broadcast_to(ids, scores.shape)
        heap.add_result(np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(block_ids, np.int64))
    heap.finalize()
    return heap.I


def _candidates(index: Vectors, vectors: np.ndarray, excluded: np.ndarray, fetch: int, nprobe: int) -> list:
    """Each query's first ``fetch`` FAISS candidates at ``nprobe`` (its own id left
    out), as the search path gets them: all queries in one call per shard."""
    params = search_params(index.index, None, nprobe)
    parts = [shard.search(vectors, min(fetch + 1, int(shard.ntotal)), params=params) for shard in index.shards]
    out = []
    for i, own in enumerate(excluded):
        scores = np.concatenate([part[0][i] for part in parts])
        ids = np.concatenate([part[1][i] for part in parts])
        keep = (ids >= 0) & (ids != own)
        out.append(ranked(scores[keep], ids[keep], fetch)[1])
    return out


def _recalls(found: Sequence[set[int]] | list[list[int]], truth: np.ndarray) -> np.ndarray:
    return np.array([len(set(f) & set(t.tolist())) / max(1, len(t)) for f, t in zip(found, truth)])


def _by_kind(recalls: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {kind: round(float(recalls[kinds == kind].mean()), 4) for kind in dict.fromkeys(kinds.tolist())}


def _headline(recalls: np.ndarray, kinds: np.ndarray) -> float:
    """The typed queries' mean recall (every kind but "image", pooled), else the image queries'."""
    typed = kinds != "image"
    chosen = recalls[typed] if typed.any() else recalls
    return round(float(chosen.mean()), 4) if len(chosen) else 0.0


def _run(ix: Searcher, vectors, excluded, nprobe: int, rerank: int, k: int, rows) -> tuple[list[list[int]], float]:
    """Hits of the given queries on the real search path, and their p50 in ms."""
    found, times = [], []
    settings = SearchFilters(nprobe=nprobe, rerank=rerank)
    for i in rows:
        exclude = frozenset({int(excluded[i])}) if excluded[i] else frozenset()
        start = time.perf_counter()
        hits = ix.search_vector(vectors[i], k, settings, exclude=exclude)
        times.append(time.perf_counter() - start)
        found.append([h.segment_id for h in hits])
    return found, float(np.median(times) * 1000) if times else 0.0


def _interleaved_p50s(ix: Searcher, vectors, excluded, settings, rows) -> list[float]:
    """p50 ms of each setting, timed in turn query by query (the order rotating), so
    that a burst of load elsewhere on the machine slows every setting alike and the
    ranking between them holds even when the absolute figures do not."""
    times: list[list[float]] = [[] for _ in settings]
    for turn, i in enumerate(rows):
        for j in np.roll(np.arange(len(settings)), turn):
            times[j].append(_run(ix, vectors, excluded, settings[j][0], settings[j][1], K, [i])[1])
    return [float(np.median(t)) if t else 0.0 for t in times]


def _load_per_core() -> float:
    """The machine's 1-minute load average per core."""
    return round(os.getloadavg()[0] / max(1, os.cpu_count() or 1), 2) if hasattr(os, "getloadavg") else 0.0


def calibrate(
    ix: Searcher,
    model=None,
    target: float = TARGET,
    budget_ms: float = BUDGET_MS,
    note: str = "",
    queries: Mapping[str, np.ndarray] | None = None,
) -> Calibration:
    """Measure ``ix`` (a compressed index) and choose its defaults: see the module.
    ``queries``: typed query vectors by kind (e.g. ``{"text": array}``), used
    instead of the model's vocabulary."""
    start = time.perf_counter()
    index = ix.index
    ivf = ivf_of(index.index)
    fingerprint = trained_fingerprint(index)
    if ivf is None or fingerprint is None:
        raise ValueError("an exact index needs no calibration (its recall is 1)")
    vectors, excluded, kinds = query_vectors(ix.store, model, given=queries)
    truth = exact_top(ix.store, vectors, excluded, K)
    n = index.ntotal
    reranks = sorted({min(r, n) for r in RERANKS})
    nprobes, p = [], max(1, min(index_choice.nprobe_for(ivf.nlist), ivf.nlist))  # from the default
    while p < ivf.nlist:
        nprobes.append(p)
        p *= 2
    nprobes.append(ivf.nlist)
    curve: dict[tuple[int, int], dict[str, Any]] = {}
    for p in nprobes:
        candidates = _candidates(index, vectors, excluded, reranks[-1], p)
        for r in reranks:
            recalls = _recalls([c[:r].tolist() for c in candidates], truth)
            by_kind = _by_kind(recalls, kinds)
            curve[p, r] = {"nprobe": p, "rerank": r, "recall": _headline(recalls, kinds), "recall_kinds": by_kind}

    def meets(point: dict[str, Any]) -> bool:
        return bool(point["recall_kinds"]) and point["recall"] >= target

    choices = []  # per rerank: the fewest lists meeting the target (else: the best recall)
    for r in reranks:
        ok = [p for p in nprobes if meets(curve[p, r])]
        choices.append((ok[0], r) if ok else max(((p, r) for p in nprobes), key=lambda s: curve[s]["recall"]))
    met_any = any(meets(curve[s]) for s in choices)
    timed = np.random.default_rng(SEED).permutation(len(vectors))[:LATENCY_QUERIES]
    _run(ix, vectors, excluded, choices[0][0], choices[0][1], K, timed[:2])  # warm the caches
    to_time = [s for s in choices if not met_any or meets(curve[s])]
    load = _load_per_core()
    for setting, p50 in zip(to_time, _interleaved_p50s(ix, vectors, excluded, to_time, timed)):
        curve[setting]["p50_ms"] = round(p50, 2)
    load = max(load, _load_per_core())
    considered = [s for s in choices if "p50_ms" in curve[s]]
    within = [s for s in considered if curve[s]["p50_ms"] <= budget_ms]
    if met_any:
        best = min(within or considered, key=lambda s: curve[s]["p50_ms"])
    else:
        best = (
            max(within, key=lambda s: curve[s]["recall"])
            if within
            else min(considered, key=lambda s: curve[s]["p50_ms"])
        )
    found, p50 = _run(ix, vectors, excluded, best[0], best[1], K, range(len(vectors)))
    recalls = _recalls(found, truth)
    by_kind = _by_kind(recalls, kinds)
    if not note and queries:
        note = "typed queries given by the caller: " + ", ".join(k for k in by_kind if k != "image")
    elif not note and model is None:
        note = "image queries only: the model was not at hand"
    return Calibration(
        fingerprint=fingerprint,
        factory=ix.info.factory,
        segments=n,
        nprobe=best[0],
        rerank=best[1],
        recall=_headline(recalls, kinds),
        recall_kinds=by_kind,
        p50_ms=round(p50, 2),
        met=met_any and bool(within) and _headline(recalls, kinds) >= target,
        target=target,
        budget_ms=budget_ms,
        queries={kind: int((kinds == kind).sum()) for kind in by_kind},
        curve=list(curve.values()),
        seconds=round(time.perf_counter() - start, 2),
        note=note,
        load_per_core=load,
    )
