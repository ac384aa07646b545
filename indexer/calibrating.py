"""A written index calibrated (``calibration`` measures; this measures it as a server
searches it, and stores the result beside its files): at the end of every indexing
run where it is due (``Writer.run``), and always by ``reindex`` and ``recalibrate``
(``maintenance``). Not in the ``calibration`` package: it opens a ``SegmentIndex``,
and ``search`` imports that package."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import calibration, index_kinds, vectors
from .search import SegmentIndex
from .store import Store

log = logging.getLogger(__name__)


def calibrate_if_due(
    db_dir: Path, store: Store, index: vectors.Vectors, model, target: float | None
) -> calibration.Calibration | None:
    """Measure a compressed index's recall and choose its search defaults
    (``calibration``) when it has no calibration of its own yet (new, rebuilt
    or grown into another index), when it has grown (or shrunk) ``calibration.REGROWTH``-fold
    since it was measured (its lists are fuller: a query needs other settings),
    or when another ``target`` is asked (``reindex`` and ``recalibrate``
    always measure, through ``calibrate_index``). Only an IVF index has the knobs
    it sets: an exact index needs none, and HNSW's search depth is not calibrated.
    ``model``: the run's embedder, for text queries (None: image queries only).
    Returns the calibration measured now (None: none was due), for the run to say."""
    n = index.ntotal
    if index_kinds.ivf_of(index.index) is None or not index.is_trained or not n:
        return None
    current = calibration.load(db_dir, index)
    if current is not None and not calibration.outdated(current, n, target):
        return None
    return calibrate_index(db_dir, store, index, model, target)


def calibrate_index(
    db_dir: Path,
    store: Store,
    index: vectors.Vectors,
    model=None,
    target: float | None = None,
    queries: Mapping[str, np.ndarray] | None = None,
    budget_ms: float | None = None,
) -> calibration.Calibration:
    """Calibrate the writer's index in memory (``calibration.calibrate`` on the real
    search path) and store the result beside its files. ``target`` and ``budget_ms``
    (0: none): None keeps the ones asked for last; ``queries``: typed query vectors
    by kind, instead of the model's vocabulary."""
    ix = SegmentIndex(db_dir, store, model, loaded=index, locations="memory")  # timed as a server searches
    asked_before = calibration.stored(db_dir)
    target = asked_before[0] if target is None else target
    budget_ms = asked_before[1] if budget_ms is None else budget_ms
    measured = calibration.calibrate(ix, model, target, budget_ms, queries=queries)
    calibration.write(db_dir, measured)
    log.info("%s: calibrated in %.1f s: %s", db_dir, measured.seconds, measured.describe())
    return measured


def kept_for_later(
    db_dir: Path, index: vectors.Vectors, target: float | None, budget_ms: float | None = None, grows: bool = True
) -> str | None:
    """Where a target or budget was asked of an index calibration has nothing to tune in
    (exact, a graph, not trained yet): kept for its first calibration
    (``calibration.keep_asked``) and said in one line, rather than dropped unsaid. None
    where none was asked, or the index is tuned (``calibrate_if_due``, ``reindex``).
    ``grows``: the index is the automatic choice, which grows into a compressed one."""
    ivf = index_kinds.ivf_of(index.index)
    if (target is None and budget_ms is None) or (ivf is not None and index.is_trained and index.ntotal):
        return None
    calibration.keep_asked(db_dir, target, budget_ms)
    asked = " and ".join(
        f"{flag} {value:g}" for flag, value in (("--recall-target", target), ("--latency-budget", budget_ms))
        if value is not None
    )  # fmt: skip
    if index_kinds.hnsw_of(index.index) is not None:
        return (
            f"{asked} kept, not applied: a graph index (HNSW) has no search setting calibration tunes, and its "
            "recall is not measured; `usesearch reindex --factory auto` builds one that is"
        )
    if ivf is None and not grows:
        return (
            f"{asked} kept, not applied: this exact index finds every neighbour and stays exact (its --factory is "
            "fixed; `usesearch reindex --factory auto` lets it grow into a compressed one)"
        )
    if ivf is None:
        return f"{asked} kept for when the index grows into a compressed one: an exact index finds every neighbour"
    return f"{asked} kept for the index's first calibration, once it holds trained vectors"
