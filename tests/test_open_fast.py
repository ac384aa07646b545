"""Opening an index whose FAISS files were written at the store's current generation
skips comparing every id with the store (17 s at 10M segments); whenever the files
may not hold exactly the committed segments, the comparison still runs."""

import numpy as np
import pytest

import usesearch.indexer.index_kinds as index_kinds
import usesearch.indexer.vectors as vectors
from tests.helpers import OPTS, write_photos
from tests.test_index_scale import synthetic_index
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths, reindex


@pytest.fixture()
def reconciles(monkeypatch):
    calls = []
    real = vectors.reconcile
    monkeypatch.setattr(vectors, "reconcile", lambda *a: calls.append(1) or real(*a))
    return calls


def test_an_index_written_at_this_generation_opens_without_comparing_ids(tmp_path, reconciles):
    synthetic_index(tmp_path / "db", n=2_000, dim=16, images=20)
    reindex(tmp_path / "db")
    ix = SegmentIndex.open(tmp_path / "db")
    assert not reconciles and ix.index.ntotal == 2_000
    ix.store.remove_image(3)  # a commit the files do not hold
    ix.close()
    ix = SegmentIndex.open(tmp_path / "db")
    assert reconciles and ix.index.ntotal == 2_000 - 100
    ix.close()


@pytest.mark.parametrize("where", ["add", "add_deferred"])
def test_an_interruption_between_a_commit_and_its_vectors_is_still_reconciled(tmp_path, monkeypatch, reconciles, where):
    """Ctrl-C after an image's commit but before its vectors reach the index (as they
    are handed to it, or as its deferred adds go in, cut short): the write on the way
    out must not record that the files hold that generation."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    real, calls = getattr(vectors.Vectors, where), []

    def interrupted_on_the_second(self, *args, **kwargs):
        if where == "add_deferred" and not self._deferred:
            return real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            self._deferred.clear()  # cut short: what was deferred never reaches FAISS
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(vectors.Vectors, where, interrupted_on_the_second)
    monkeypatch.setattr(vectors, "DEFERRED_ADDS", 1 if where == "add" else 10**6)
    report = index_paths([photos], db, IndexOptions(**OPTS, faiss_every_s=0))  # a write after each photo
    assert report.interrupted and report.done >= 1
    monkeypatch.setattr(vectors.Vectors, where, real)
    reconciles.clear()
    ix = SegmentIndex.open(db)
    committed = np.sort(ix.store.segment_ids())
    assert reconciles and len(committed) > 0
    np.testing.assert_array_equal(np.sort(index_kinds.index_ids(ix.index.shards[0])), committed)
    ix.close()
