"""How hard a compressed index must look, measured on its own data.

A compressed (IVF-PQ) index visits ``nprobe`` of its lists and re-scores ``rerank``
candidates exactly; how many a query needs depends on the data and on the queries.
So whenever one is built or rebuilt (or ``usesearch calibrate`` asks), ``calibrate``
measures it:

- queries (``truth.py``): ``IMAGE_QUERIES`` stored segments (each excluded from its
  own results, kind "image") and typed queries: where the index's model is at hand,
  COCO's class names through the model's own ``embed_text`` (kind "text", what a
  typed query goes through), or query vectors the caller gives by kind
  (``queries=``: a benchmark's own query generator, a log of real queries);
- the truth: their exact top ``K`` from the float16 embedding files, one streamed
  pass in blocks, so memory stays bounded;
- the curve: for each ``nprobe`` (powers of two from the index's default up to all
  lists) one FAISS search of the largest ``RERANKS`` candidates gives the recall at
  every number re-scored;
- the headline recall, which the target is for: the mean over the typed queries
  (every kind but "image", pooled, so kinds count in the proportion given), else
  over the image ones. Not "every kind meets the target": one hard kind (diffuse
  concepts whose 10th and 100th neighbours are within 0.05 in cosine) would drive
  the choice to every list whatever the others need. Each kind's recall is kept
  beside it and ``describe`` names the worst, so a weak kind stays visible;
- the choice (``choice.py``): the latency budget bounds it, the target chooses
  within it; then the chosen setting is measured on the search path with every
  query, which is the recall ``info`` shows. The machine's load while timing is kept
  and ``describe`` flags a busy machine.

The result is ``calibration.json`` in the index folder, written atomically, keyed by
a fingerprint of the trained index (coarse centroids and codebook): a rebuilt
index does not match it, so a stale calibration is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from usesearch import machine_load
from usesearch.errors import UsesearchError, first_line
from usesearch.io.atomic import write_atomic
from usesearch.reports import recall_shown

from .. import index_choice
from ..index_kinds import ivf_of
from ..records import IndexInfo
from ..vectors import Vectors
from .choice import BUSY, OTHERS_BUSY, Searcher, choose, load_per_core, run
from .truth import CLASSES, IMAGE_QUERIES, K, by_kind, candidates, exact_top, headline, query_vectors, recalls

__all__ = ["CLASSES", "IMAGE_QUERIES", "Calibration", "calibrate", "exact_top", "load", "query_vectors", "write"]

log = logging.getLogger(__name__)

FILE = "calibration.json"
VERSION = 2  # 2: the headline is the typed queries' mean, kinds may be given
TARGET = 0.95  # recall@K the typed queries must reach on average
BUDGET_MS = 50.0  # p50 latency a setting may take
MAX_BUDGET_MS = 60_000.0  # a minute: past it, no budget (``--latency-budget``'s bound)
REGROWTH = 2  # an index this many times larger (or smaller) than when calibrated is calibrated again
RERANKS = (1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000)  # one FAISS search gives every one


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
    budget_ms: float = BUDGET_MS  # 0: none
    k: int = K
    queries: dict[str, int] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    version: int = VERSION
    load_per_core: float = 0.0  # the machine's load while the settings were timed (``BUSY`` and above: busy)
    over_budget: bool = False  # no setting it compared searched within the budget (``choice.Choice``)
    others_per_core: float = 0.0  # other processes' share of each core meanwhile (``OTHERS_BUSY`` and above: busy)

    def rerank_for(self, k: int) -> int:
        """Candidates to re-score for ``k`` hits: as measured for ``K``, more for more."""
        return max(self.rerank, -(-self.rerank * k // self.k))

    def _cheapest(self) -> str:
        cheapest = self.curve[0] if self.curve else {}  # (the curve starts at the fewest lists and candidates)
        return (
            ": the cheapest setting"
            if (cheapest.get("nprobe"), cheapest.get("rerank")) == (self.nprobe, self.rerank)
            else ""
        )

    def busy(self) -> bool:
        """Whether the settings were timed on a busy machine: its load, or other processes' share of its cores."""
        return self.load_per_core >= BUSY or self.others_per_core >= OTHERS_BUSY

    def provisional(self) -> bool:
        """Whether the choice fell short of its target with timings a busy machine slowed:
        the cheapest kept whatever its recall (0.28 where 0.83 fit once the machine was
        quiet), or a setting of 28 ms timed at 43 that capped the search at 0.93 for 0.95.
        Measured again where calibrations are due (``outdated``)."""
        # (where no setting reached the target, no timing could have: measuring again changes nothing)
        reachable = self.over_budget or any(point.get("recall", 0.0) >= self.target for point in self.curve)
        return not self.met and self.busy() and reachable

    def worst(self) -> tuple[str, float]:
        """The kind of query with the lowest recall, and that recall."""
        return min(self.recall_kinds.items(), key=lambda kv: kv[1], default=("", self.recall))

    def describe(self) -> str:
        shown = {kind: recall_shown(value, self.target) for kind, value in self.recall_kinds.items()}
        kinds = ", ".join(f"{kind} {value}" for kind, value in shown.items())
        spread = len(set(shown.values())) > 1  # (as shown: ties name none)
        worst = f"; worst {self.worst()[0]}" if spread else ""
        line = (
            f"recall@{self.k} {recall_shown(self.recall, self.target)} ({kinds}{worst}) at nprobe {self.nprobe}, "
            f"rerank {self.rerank}: ~{self.p50_ms:.0f} ms (measured at {self.segments} segments"
        )
        busy = (
            f"; timed on a busy machine (other processes used {self.others_per_core:.0%} of its cores)"
            if self.others_per_core >= OTHERS_BUSY
            else f"; timed on a busy machine (load {self.load_per_core:.1f} per core)" * (self.load_per_core >= BUSY)
        )
        budget = f" within {self.budget_ms:g} ms" if self.budget_ms > 0 else ""
        if self.provisional():
            busy += ": measured again at an indexing run's end on a quieter machine, or now by `usesearch calibrate`"
        if not self.met and self.over_budget and self.budget_ms > 0:  # the budget is what failed
            reached = "reached" if self.recall >= self.target else "not met either"
            return line + (
                f"; no setting searched within the {self.budget_ms:g} ms budget (a fifth of it kept spare), target "
                f"{self.target} {reached}{self._cheapest()}{busy})"
            )
        if not self.met:
            return line + f"; target {self.target} not met{budget}: the best recall it affords{busy})"
        return line + f"; target {self.target}{budget}{busy})"


def outdated(current: Calibration, segments: int, target: float | None) -> bool:
    """Whether an index of ``segments`` asked for ``target`` (None: any) needs measuring
    again: another target, ``REGROWTH``-fold more (or fewer) segments than measured, or
    a choice a busy machine forced (``provisional``), once the machine is not busy."""
    resized = size_ratio(segments, current.segments) >= REGROWTH
    # (a busy machine now would only force the same choice again: a CPU run's own load does)
    return resized or target not in (None, current.target) or (current.provisional() and quiet_now())


def size_ratio(segments: int, measured: int) -> float:
    """How many times larger (or smaller) an index is than when its recall was measured."""
    return max(segments, measured) / max(1, min(segments, measured))


def quiet_now() -> bool:
    """Whether the machine is not busy now (its load, and other processes over a quarter second)."""
    return load_per_core() < BUSY and machine_load.others_now() < OTHERS_BUSY


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
    if found is not None:
        found.budget_ms = _budget(found.budget_ms)
    return found if found is not None and found.fingerprint == fingerprint else None


def model_for(info: IndexInfo, folder: Path):
    """The index's own model's text side, for text queries, or None where it does not load here
    (weights not downloaded, a head file moved) or is not the one it was built with."""
    from usesearch.models.factory import load_text_model  # here: opening an index for its stats needs no model

    from ..folder import head_to_load

    try:
        head = head_to_load(folder, info.model_head)
        model = load_text_model(info.preset, embedder=info.embedder, head=head, device="cpu")
    except Exception as exc:  # noqa: BLE001 - any reason: calibrate with image queries only
        log.warning("calibrating with image queries only: the index's model does not load (%s)", first_line(exc))
        return None
    return model if model.fingerprint == info.fingerprint else None


def stored(folder: Path) -> tuple[float, float]:
    """(target, budget ms) the folder's last calibration was asked for (kept across
    rebuilds), else (``TARGET``, ``BUDGET_MS``)."""
    try:
        data = json.loads((Path(folder) / FILE).read_text())
        return float(data.get("target", TARGET)), _budget(float(data.get("budget_ms", BUDGET_MS)))
    except (ValueError, TypeError, AttributeError, OSError):
        return TARGET, BUDGET_MS


def keep_asked(folder: Path, target: float | None, budget_ms: float | None = None) -> None:
    """A target or budget asked of an index with nothing to calibrate yet (exact, a
    graph, not trained), kept in the folder's file for its first calibration (``stored``),
    each beside what was asked before of the other. The file then holds no calibration:
    one of an earlier index measured nothing of this one, and a kept target written into
    a calibration would have read as met for it."""
    before_target, before_budget = stored(folder)
    asked = {"target": before_target if target is None else target}
    asked["budget_ms"] = before_budget if budget_ms is None else budget_ms
    write_atomic(Path(folder) / FILE, json.dumps(asked, indent=1))


def _budget(saved: float) -> float:
    """A budget as saved, where an older usesearch saved one past ``MAX_BUDGET_MS`` (inf:
    then kept by every calibration, and JSON's non-standard Infinity in ``info --json``):
    none (0) for one past it, the default for NaN."""
    return saved if 0.0 <= saved <= MAX_BUDGET_MS else (BUDGET_MS if math.isnan(saved) else 0.0)


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
    instead of the model's vocabulary; ``budget_ms`` 0: no latency budget."""
    if not 0.0 <= target <= 1.0:  # nan too: it would be kept and reused by every later calibration
        raise UsesearchError(f"recall target {target}: a share of the true top {K} found, from 0 to 1")
    if not 0.0 <= budget_ms <= MAX_BUDGET_MS:
        raise UsesearchError(f"latency budget {budget_ms} ms: give 0 (none) to {MAX_BUDGET_MS:.0f}")
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
        found = candidates(index, vectors, excluded, reranks[-1], p)
        for r in reranks:
            values = recalls([c[:r].tolist() for c in found], truth)
            curve[p, r] = {
                "nprobe": p,
                "rerank": r,
                "recall": headline(values, kinds),
                "recall_kinds": by_kind(values, kinds),
            }
    choice = choose(ix, vectors, excluded, curve, nprobes, reranks, target, budget_ms)
    hits, p50 = run(ix, vectors, excluded, choice.setting, range(len(vectors)))
    values = recalls(hits, truth)
    kinds_recall = by_kind(values, kinds)
    if not note and queries:
        note = "typed queries given by the caller: " + ", ".join(k for k in kinds_recall if k != "image")
    elif not note and model is None:
        note = "image queries only: the model was not at hand"
    return Calibration(
        fingerprint=fingerprint,
        factory=ix.info.factory,
        segments=n,
        nprobe=choice.setting[0],
        rerank=choice.setting[1],
        recall=headline(values, kinds),
        recall_kinds=kinds_recall,
        p50_ms=round(p50, 2),
        met=choice.met and headline(values, kinds) >= target,
        target=target,
        budget_ms=budget_ms,
        queries={kind: int((kinds == kind).sum()) for kind in kinds_recall},
        curve=list(curve.values()),
        seconds=round(time.perf_counter() - start, 2),
        note=note,
        load_per_core=choice.load_per_core,
        over_budget=choice.over_budget,
        others_per_core=choice.others_per_core,
    )
