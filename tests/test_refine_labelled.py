"""``query --refine sam3`` over a labelled dataset's index: SAM 3's instances are linked
to the stored segments the search's filters keep (an annotation, not a proposal)."""

import pytest

from tests.helpers import OPTS, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.indexer.coco_index import index_coco
from usesearch.indexer.filters import SearchFilters
from usesearch.indexer.refine import RefineOptions, Refiner

pytest.importorskip("sam3", reason="the sam3 extra is not installed: pip install -e '.[sam3]'")


def test_a_refined_search_of_annotations_links_its_instances_to_annotations(tmp_path):
    """``--source annotation`` (or ``--label``, ``--split``) chose the photos but not the
    segment an instance was linked to: a proposal, whose annotation_id and class are
    none, so a refined search of a labelled dataset could not say which annotation an
    instance matches."""
    from tests.test_coco_index import write_coco

    photos = write_photos(tmp_path / "photos", ("rocket", "chelsea"))  # (the second in photos/sub)
    db = tmp_path / "db"
    train = write_coco(tmp_path / "train.json", photos, ["rocket.png", "sub/chelsea.png"], 1)
    index_coco([photos], train, db, IndexOptions(**OPTS))
    index_paths([photos], db, IndexOptions(**OPTS))  # the proposals beside them
    index = SegmentIndex.open(db)
    try:
        refiner = Refiner(index, RefineOptions(top=2))
        linked = {}
        for source in (None, "annotation", "proposal"):
            hits = refiner.query("a rocket", k=50, filters=SearchFilters(source=source))
            rows = index.store.rows([h.segment_id for h in hits if h.segment_id])
            linked[source] = {rows[h.segment_id].source for h in hits if h.segment_id}
        refiner.close()
    finally:
        index.close()
    assert linked["annotation"] == {"annotation"} and linked["proposal"] == {"proposal"}
    assert linked[None] == {"annotation", "proposal"}  # unfiltered: whichever overlaps best
