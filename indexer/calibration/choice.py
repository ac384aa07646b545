"""Which search effort a compressed index gets, from its recall curve and timings on
the real search path (``SegmentIndex``: FAISS, the row lookups and the exact
re-scoring from the embedding files).

The latency budget bounds the choice and the recall target chooses within it:

1. what the budget affords: time grows with the lists visited and the candidates
   re-scored, so for each number of candidates (fewest first) the most lists whose
   p50 (times ``HEADROOM``) stays within it are found by bisection, within what
   fewer candidates afforded;
2. among the affordable settings, for each number of candidates the fewest lists that
   meet the target; those few are timed again, in turns of one query each (load
   elsewhere on the machine then slows them alike, and their ranking holds), and the
   fastest within the budget wins;

every timing takes queries no earlier timing used (``Queries``), as a served query
finds the caches;
3. where no affordable setting meets the target: the best recall the budget affords,
   and ``met`` is False; where nothing is affordable, the cheapest setting.

A budget of 0 (or less) is none: every setting is affordable, and the target decides."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from usesearch import machine_load
from usesearch.machine_load import load_per_core

from ..filters import SearchFilters
from ..records import IndexInfo
from ..store import Store
from ..vectors import Vectors
from .truth import SEED, K

LATENCY_QUERIES = 16  # timed per setting compared
PROBE_QUERIES = 6  # timed per setting while finding what the budget affords
# Calibration's timings run kinder than a server's queries: measured at 10M segments, a
# fresh process's 100 new queries took 1.20-1.26x the calibrated p50 of the same setting
# (55.4 against 45.8 ms, 60.0 against 47.8 ms). A setting is affordable where its
# calibrated p50 times this stays within the budget.
HEADROOM = 1.25
BUSY = 1.4  # load per core that flags a busy machine: the timed searches alone keep every core busy (~1)
# Other processes' share of each core while the settings were timed that flags a busy
# machine: one busy process beside a calibration on 2 cores (0.5) made a setting of 28
# ms time 20-43 ms, and its bisection stopped at recall 0.93 for a target of 0.95.
OTHERS_BUSY = 0.25

Setting = tuple[int, int]  # (nprobe, rerank)


class Searcher(Protocol):
    """What is calibrated: ``SegmentIndex`` (its store, vectors and search path)."""

    store: Store
    index: Vectors
    info: IndexInfo

    def search_vector(self, vector, k: int = 10, filters: SearchFilters | None = None, exclude=frozenset()) -> list: ...


@dataclass(frozen=True)
class Choice:
    setting: Setting
    met: bool  # an affordable setting met the target and its p50 stayed within the budget
    load_per_core: float  # the machine's load while the settings were timed
    over_budget: bool = False  # no setting compared stayed within the budget: the budget is what failed
    others_per_core: float = 0.0  # other processes' share of each core meanwhile (``machine_load``)


def run(ix: Searcher, vectors, excluded, setting: Setting, rows) -> tuple[list[dict[int, float]], float]:
    """Hits of the given queries on the real search path (each query's segment id ->
    score), and their p50 in ms."""
    found, times = [], []
    settings = SearchFilters(nprobe=setting[0], rerank=setting[1])
    for i in rows:
        exclude = frozenset({int(excluded[i])}) if excluded[i] else frozenset()
        start = time.perf_counter()
        hits = ix.search_vector(vectors[i], K, settings, exclude=exclude)
        times.append(time.perf_counter() - start)
        found.append({h.segment_id: h.score for h in hits})
    return found, float(np.median(times) * 1000) if times else 0.0


def interleaved_p50s(ix: Searcher, vectors, excluded, settings: list[Setting], rows) -> list[float]:
    """p50 ms of each setting, timed in turns of one query each (the order rotating);
    turn t times setting j with ``rows[t * len(settings) + j]``: no query twice."""
    times: list[list[float]] = [[] for _ in settings]
    for turn in range(len(rows) // max(1, len(settings))):
        for j in np.roll(np.arange(len(settings)), turn):
            times[j].append(run(ix, vectors, excluded, settings[j], [rows[turn * len(settings) + j]])[1])
    return [float(np.median(t)) if t else 0.0 for t in times]


class Queries:
    """The queries' rows in a seeded order, handed out in turn (cyclically once all are
    used): a query just timed has its candidates' rows in the caches, so timing a
    setting on the rows another setting just read would make it look cheaper than a
    new query finds it (by ~20% at 10M, all lists)."""

    def __init__(self, count: int, seed: int = SEED):
        self.order, self.at = np.random.default_rng(seed).permutation(count), 0

    def take(self, n: int) -> np.ndarray:
        picked = self.order[(self.at + np.arange(n)) % max(1, len(self.order))]
        self.at += n
        return picked


def affordable(
    p50: Callable[[Setting], float], nprobes: list[int], reranks: list[int], budget_ms: float
) -> dict[int, int]:
    """For each rerank, the position in ``nprobes`` of the most lists whose p50 is
    within ``budget_ms`` (-1: none; no budget: every list), by bisection; the cost
    grows with both."""
    out, top = {}, len(nprobes) - 1
    if budget_ms <= 0:
        return dict.fromkeys(reranks, top)
    for r in reranks:
        lo, hi = -1, top  # nprobes[lo] is affordable (-1: none yet), those past hi are not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if p50((nprobes[mid], r)) <= budget_ms:
                lo = mid
            else:
                hi = mid - 1
        out[r] = top = lo
    return out


def choose(
    ix: Searcher,
    vectors: np.ndarray,
    excluded: np.ndarray,
    curve: dict[Setting, dict[str, Any]],
    nprobes: list[int],
    reranks: list[int],
    target: float,
    budget_ms: float,
) -> Choice:
    """The setting to search at (see the module); timings go into ``curve`` as ``p50_ms``."""
    queries = Queries(len(vectors))
    run(ix, vectors, excluded, (nprobes[0], reranks[0]), queries.take(2))  # the code paths warmed
    load, since = load_per_core(), machine_load.machine_clock()

    limit = budget_ms / HEADROOM  # what calibration may measure for a setting within the budget

    def probe(setting: Setting) -> float:
        p50 = run(ix, vectors, excluded, setting, queries.take(PROBE_QUERIES))[1]
        if limit > 0 and p50 > limit:  # timed again before it is believed: the bisection takes
            # cost as rising with effort, so one slow turn (another process's) capped every
            # larger setting (24 ms probed 63 once, and recall 0.57 was kept for 0.67 in 29 ms)
            p50 = min(p50, run(ix, vectors, excluded, setting, queries.take(PROBE_QUERIES))[1])
        curve[setting]["p50_ms"] = round(p50, 2)
        return curve[setting]["p50_ms"]

    most = affordable(probe, nprobes, reranks, limit)
    within = [(p, r) for r in reranks for p in nprobes[: most[r] + 1]]
    meeting = [s for s in within if curve[s]["recall_kinds"] and curve[s]["recall"] >= target]
    if meeting:  # per rerank, the fewest lists meeting the target
        compared = [min(s for s in meeting if s[1] == r) for r in dict.fromkeys(s[1] for s in meeting)]
    elif within:
        compared = [max(within, key=lambda s: (curve[s]["recall"], -s[0], -s[1]))]
    else:
        compared = [(nprobes[0], reranks[0])]
    rows = queries.take(LATENCY_QUERIES * len(compared))
    for setting, p50 in zip(compared, interleaved_p50s(ix, vectors, excluded, compared, rows)):
        curve[setting]["p50_ms"] = round(p50, 2)
    kept = [s for s in compared if limit <= 0 or curve[s]["p50_ms"] <= limit]
    best = min(kept or compared, key=lambda s: curve[s]["p50_ms"])
    # Over budget: nothing was affordable (the cheapest is kept), or what was re-timed past
    # the budget itself (not only past its spare fifth: that is still within it).
    over = limit > 0 and (not within or curve[best]["p50_ms"] > budget_ms)
    # Met: a setting meeting the target searched within the budget itself (re-timed past its
    # spare fifth, 44 ms of 50, it was said "not met" at the very recall asked for).
    others = machine_load.others_per_core(since)
    return Choice(best, bool(meeting) and not over, max(load, load_per_core()), over, others)
