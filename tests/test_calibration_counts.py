"""What a calibration counts and says: segments tied at the 10th place found either
way, and a failed budget named as the budget's, not the target's."""

import dataclasses

import usesearch.indexer.calibration as calibration
import usesearch.indexer.calibration.choice as choice
from tests.test_calibration import FACTORY
from tests.test_index_scale import synthetic_index
from usesearch.indexer import SegmentIndex, reindex


def test_segments_tied_at_the_tenth_place_count_as_found(tmp_path):
    """Equal vectors (a photo stored as PNG and as BMP, a repeated pattern) tie; the
    search path and the exact heap order ties apart, and counting by ids alone called
    the search's choice a miss: an exhaustive search measured 0.88-0.95, "not met"."""
    from usesearch.indexer.calibration.truth import recalls

    synthetic_index(tmp_path / "db", n=6000, dim=64, noise=0.0)  # ~20 equal vectors a cluster
    reindex(tmp_path / "db", FACTORY, recall_target=0.95, text_queries=False)
    ix = SegmentIndex.open(tmp_path / "db")
    vectors, excluded, _ = calibration.query_vectors(ix.store, None)
    truth = calibration.exact_top(ix.store, vectors, excluded, 10)
    assert max(map(len, truth.tied)) > 10 and truth.need == [10] * len(vectors)  # more tied than places
    everything = (calibration.ivf_of(ix.index.index).nlist, 200)
    hits, _ = choice.run(ix, vectors, excluded, everything, range(len(vectors)))
    assert recalls(hits, truth).min() == 1.0
    assert recalls([list(h)[:9] + [0] for h in hits], truth).max() == 0.9  # a miss is still one
    assert ix.calibration.met and ix.calibration.recall == 1.0


def test_a_calibration_that_failed_its_budget_says_so_rather_than_blame_the_target():
    """--latency-budget 0.001 with --recall-target 0: "target 0.0 not met within 0.001 ms:
    the best recall it affords", of a setting at 8 ms and recall 0.88."""
    measured = calibration.Calibration("f", FACTORY, 1024, 8, 1000, 0.88, {"image": 0.88}, 8.0, False, 0.0, 0.001)
    said = measured.describe()
    assert "target 0.0 reached only past the 0.001 ms budget" in said and "not met" not in said, said
    short = dataclasses.replace(measured, target=0.95, budget_ms=50.0)  # the recall is what fell short
    assert "target 0.95 not met within 50 ms: the best recall it affords" in short.describe()
    assert "target 0.95 within 50 ms)" in dataclasses.replace(short, recall=0.96, met=True).describe()
