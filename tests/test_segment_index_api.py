"""An open ``SegmentIndex`` in a Python program: a query vector, k, region prompt or
segment id it cannot search refused in words, as the CLI refuses them; an index closed
(its FAISS index and models given back), moved, or opened by a relative path; and
``index_paths``' and ``IndexOptions``' refusals before anything is written."""

import numpy as np
import pytest
from PIL import Image

from tests.helpers import OPTS, write_photos
from tests.test_region_query import index_four_photos
from usesearch.errors import BadArgumentError, UsesearchError
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    return index_four_photos(tmp_path_factory.mktemp("region"))


def test_a_query_vector_or_k_that_cannot_be_searched_is_refused_in_words(indexed):
    """A vector of another dimension reached FAISS as a bare AssertionError, a NaN one
    silently found nothing, and a NumPy k a wall of SWIG prototypes."""
    root, _ = indexed
    ix = SegmentIndex.open(root / "db")
    dim = ix.info.dim
    with pytest.raises(ValueError, match=f"shape \\({dim + 1},\\); this index's vectors have {dim} dimensions"):
        ix.search_vector(np.ones(dim + 1, np.float32))
    with pytest.raises(ValueError, match="not finite"):
        ix.search_vector(np.full(dim, np.nan, np.float32))
    with pytest.raises(BadArgumentError, match="the query vector is numbers; got str 'a cat'"):
        ix.search_vector("a cat")  # (NumPy's "could not convert string to float")
    for k, kind in ((2.5, "float"), (True, "bool")):
        with pytest.raises(TypeError, match=f"k must be an integer, got {kind}"):
            ix.query("a cat", k=k)
    hits = ix.query("a cat", k=np.int64(3))
    assert len(hits) == 3 and [h.segment_id for h in hits] == [h.segment_id for h in ix.query("a cat", k=3)]
    row = ix.search_vector(ix.text_vector("a cat")[None], k=3)  # one row of a batch: taken as the vector
    assert [h.segment_id for h in row] == [h.segment_id for h in hits]


def test_arguments_are_refused_as_usesearch_errors_of_the_type_python_would_raise(indexed):
    """A bad k, query text or filter raised bare ValueError and TypeError: a service
    catching ``UsesearchError`` missed them. Now ``BadArgumentError``, which is all three."""

    root, _ = indexed
    ix = SegmentIndex.open(root / "db")
    for call in (lambda: ix.query("", k=3), lambda: ix.query("a cat", k=0), lambda: ix.query("a cat", k=1.5)):
        with pytest.raises(BadArgumentError) as caught:
            call()
        assert isinstance(caught.value, (ValueError, TypeError)) and isinstance(caught.value, UsesearchError)


def test_a_query_vector_of_any_length_scores_as_its_unit_vector(indexed):
    """``min_score`` is a cosine: a vector of another length scaled every score (0.07
    for 0.012), and an all-zero one answered with hits scoring 0."""
    from usesearch.errors import BadArgumentError

    root, _ = indexed
    ix = SegmentIndex.open(root / "db")
    unit = ix.text_vector("a cat")
    hits = ix.search_vector(unit, k=5)
    scaled = ix.search_vector(6.0 * unit, k=5)
    assert [h.segment_id for h in scaled] == [h.segment_id for h in hits]
    assert [h.score for h in scaled] == pytest.approx([h.score for h in hits], abs=1e-5)
    with pytest.raises(BadArgumentError, match="all zeros"):
        ix.search_vector(np.zeros(ix.info.dim, np.float32))


def test_filters_of_the_wrong_type_or_holding_a_nul_are_refused_in_words(indexed):
    """A dict's ``"min_area": "5"`` failed deep in the search, ``"per_image": "false"``
    was taken as true, and a NUL in a path filter was PostgreSQL's 500."""
    from usesearch.errors import BadArgumentError
    from usesearch.indexer import SearchFilters

    root, _ = indexed
    ix = SegmentIndex.open(root / "db")
    for fields, said in [
        ({"min_area": "5"}, "the filter min_area is an integer, got '5'"),
        ({"per_image": "false"}, "the filter per_image is true or false, got 'false'"),
        ({"min_score": "0.1"}, "the filter min_score is a number, got '0.1'"),
        ({"nprobe": 2.5}, "the filter nprobe is an integer, got 2.5"),
        ({"path": "a\x00b/*"}, "the filter path holds a NUL character"),
        ({"label": "\x00x"}, "the filter label holds a NUL character"),
    ]:
        with pytest.raises(BadArgumentError, match=said):
            ix.query("a cat", filters=fields)
    assert SearchFilters(min_area=np.int64(5), min_score=np.float32(0.1), per_image=np.bool_(True)).per_image
    # What JSON plainly means is taken: a null for a field's default, a whole float for an integer.
    taken = SearchFilters(**{"per_image": None, "distinct": None, "min_area": 5.0, "nprobe": np.float64(3)})
    assert (taken.per_image, taken.distinct, taken.min_area, taken.nprobe) == (False, False, 5, 3)
    assert type(taken.min_area) is int and type(taken.nprobe) is int


def test_index_paths_given_one_path_instead_of_a_list_says_so(tmp_path):
    """A str was walked as its characters ("no such file or folder: t (and 13 more)"), a Path
    failed with "'PosixPath' object is not iterable"."""
    for one in (str(tmp_path), tmp_path):
        with pytest.raises(TypeError, match="paths is a list of files and folders; got the one path"):
            index_paths(one, tmp_path / "db", IndexOptions(**OPTS))
    # Checked as the options are made: a limit no photo passes made the folder, then refused every photo.
    with pytest.raises(BadArgumentError, match="max_pixels is a number of at least 1; got -1"):
        IndexOptions(**OPTS, max_pixels=-1)
    with pytest.raises(UsesearchError, match="unknown preset 'bogus'"):
        IndexOptions(preset="bogus")
    with pytest.raises(BadArgumentError, match="options is an IndexOptions, not a dict: IndexOptions"):
        index_paths([tmp_path], tmp_path / "db", OPTS)  # (it failed deep inside: no attribute 'db_url')
    assert not (tmp_path / "db").exists()


def test_a_closed_index_refuses_searches_instead_of_reconnecting(indexed):
    root, _ = indexed
    with SegmentIndex.open(root / "db") as ix:
        assert ix.query("a cat", k=2)
    for search in (lambda: ix.query("a cat"), lambda: ix.similar(1), lambda: ix.model, ix.stats, ix.hold_locations):
        with pytest.raises(UsesearchError, match="this index is closed"):
            search()


def test_region_prompts_and_segment_ids_from_python_are_checked_as_the_cli_checks_them(indexed):
    """An inverted box reached SAM and hits came back; a short tuple was an IndexError
    deep inside; similar(True) searched segment 1."""
    root, photos = indexed
    rgb = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))
    with SegmentIndex.open(root / "db") as ix:
        for prompt, message in [
            ({"box": (10, 10, 0, 0)}, "width and height must be positive"),
            ({"box": (10, 10, -5, -5)}, "width and height must be positive"),
            ({"box": (1, 2, 3)}, "box is \\(x, y, width, height\\) in pixels, 4 finite numbers"),
            ({"point": (5,)}, "point is \\(x, y\\) in pixels, 2 finite numbers"),
            ({"point": "5,5"}, "2 finite numbers; got '5,5'"),
            ({"point": (float("nan"), 3)}, "2 finite numbers"),
        ]:
            with pytest.raises(BadArgumentError, match=message):  # (a plain UsesearchError before)
                ix.similar_region(rgb, k=2, **prompt)
        panorama = np.zeros((10, 20000, 3), np.uint8)  # SAM's resize leaves it 0 px high
        with pytest.raises(BadArgumentError, match="the photo is 20000x10: too narrow for SAM"):
            ix.similar_region(panorama, point=(5, 5), k=1)
        for wrong in ("1", True, 1.0, None):
            with pytest.raises(TypeError, match="segment_id is an int"):
                ix.similar(wrong)
        assert ix.similar(np.int64(1), k=1)  # a numpy id from an array of them is one
        with pytest.raises(TypeError, match="a query is text; got int"):
            ix.query(5)


def test_an_open_index_whose_folder_is_moved_says_so(indexed, tmp_path):
    """similar() raised SQLAlchemy's 'unable to open database file'; after a delete it advised --repair."""
    import shutil

    root, _ = indexed
    shutil.copytree(root / "db", tmp_path / "copy")
    with SegmentIndex.open(tmp_path / "copy") as ix:
        assert ix.query("a cat", k=1)
        (tmp_path / "copy").rename(tmp_path / "moved")
        for search in (lambda: ix.similar(1), lambda: ix.query("a cat")):
            with pytest.raises(UsesearchError, match="the index folder .*copy is gone \\(moved or deleted\\)"):
                search()


def test_an_index_opened_by_a_relative_path_follows_no_change_of_directory(indexed, tmp_path, monkeypatch):
    root, _ = indexed
    monkeypatch.chdir(root)
    with SegmentIndex.open("db") as ix:
        first = ix.query("a cat", k=2)
        monkeypatch.chdir(tmp_path)  # a notebook's %cd
        assert [h.segment_id for h in ix.query("a cat", k=2)] == [h.segment_id for h in first]
        assert ix.similar(first[0].segment_id, k=1)


def test_the_python_api_refuses_what_the_cli_refuses_before_writing(tmp_path):
    """A negative shard size was recorded and left an index no later open could lay out;
    index_paths wrote an index among the photos of the folder it was given."""
    from usesearch.indexer.maintenance import reindex

    photos = write_photos(tmp_path / "photos", ("chelsea",))
    with pytest.raises(UsesearchError, match="shard_size is 0 \\(one shard\\) or a number"):
        IndexOptions(**OPTS, shard_size=-1)
    with pytest.raises(UsesearchError, match="holds photos \\(chelsea.png\\): give the index a folder of its own"):
        index_paths([photos], photos, IndexOptions(**OPTS))
    assert sorted(p.name for p in photos.iterdir()) == ["chelsea.png"]
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    with pytest.raises(UsesearchError, match="shard_size is 0"):
        reindex(tmp_path / "db", shard_size=-1)


def test_closing_an_index_gives_back_its_faiss_index_and_models(indexed):
    """A program that opens indexes one after another and keeps the closed ones (a
    list of them, a notebook's variables) held each one's FAISS index and models."""
    import gc
    import weakref

    root, _ = indexed
    ix = SegmentIndex.open(root / "db")
    ix.query("a cat", k=2)  # the model loaded
    held = [weakref.ref(ix.index), weakref.ref(ix.model)]
    ix.close()
    ix.close()  # twice: nothing more to do
    gc.collect()
    assert [ref() for ref in held] == [None, None]
    with pytest.raises(UsesearchError, match="this index is closed"):
        ix.region(np.zeros((32, 32, 3), np.uint8), point=(5, 5))  # SAM not loaded again
    assert ix.models.loaded == set()


def test_a_search_meeting_a_close_is_refused_in_one_line(indexed):
    """Closed between its refresh and its reading of the index: an AttributeError."""
    import threading

    root, _ = indexed
    ix = SegmentIndex.open(root / "db")
    vector = ix.text_vector("a cat")
    refresh = ix.refresh

    def refresh_then_closed():
        refresh()
        closing = threading.Thread(target=ix.close)
        closing.start()
        closing.join()

    ix.refresh = refresh_then_closed
    with pytest.raises(UsesearchError, match="this index is closed"):
        ix.search_vector(vector, 3)


def test_a_notebooks_natural_arguments_are_taken_or_refused_in_its_own_words(indexed, tmp_path):
    """A photo's path was "expected an HxWx3 image, got shape ()"; a region without a
    prompt named the CLI's --point and --box; a dict of filters an AttributeError deep in
    the search; embed_text([None]) "an empty text", [3] an AttributeError; and
    index_paths([]) "no photo under  (index reads ...)", an empty name."""
    from usesearch.indexer import SearchFilters

    root, photos = indexed
    with SegmentIndex.open(root / "db") as ix:
        by_path = ix.similar_region(str(photos / "astronaut.png"), point=(40, 40), k=3)
        rgb = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))
        assert [h.segment_id for h in by_path] == [h.segment_id for h in ix.similar_region(rgb, point=(40, 40), k=3)]
        with pytest.raises(UsesearchError, match=r"^give one of point=\(x, y\) and box=\(x, y, width, height\)"):
            ix.region(rgb)
        as_dict = ix.query("a cat", k=5, filters={"min_area": 500, "per_image": True})
        as_filters = ix.query("a cat", k=5, filters=SearchFilters(min_area=500, per_image=True))
        assert [h.segment_id for h in as_dict] == [h.segment_id for h in as_filters] and as_dict
        with pytest.raises(TypeError, match="no filter named min_pixels \\(SearchFilters has: per_image, path"):
            ix.query("a cat", filters={"min_pixels": 5})
        with pytest.raises(TypeError, match="filters is a SearchFilters \\(or a dict of its fields\\); got int"):
            ix.query("a cat", filters=5)
        for wrong, kind in ((None, "NoneType"), (3, "int")):
            with pytest.raises(TypeError, match=f"embed_text takes strings; got {kind}"):
                ix.text_model.embed_text(["a cat", wrong])
    with pytest.raises(UsesearchError, match="^no photos given: name the folders or files to index$"):
        index_paths([], tmp_path / "db", IndexOptions(**OPTS))


def test_stats_of_an_open_index_follow_its_writer_as_a_search_does(tmp_path):
    """`stats()` read its segments live from the catalog but its vectors from the index
    as opened: while another run indexed, 2,420 segments beside 0 vectors."""
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    ix = SegmentIndex.open(tmp_path / "db")
    before = ix.stats()
    write_photos(photos, ("rocket", "chelsea"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))  # another writer's commits
    after = ix.stats()
    assert after["images_done"] == 3 and after["segments"] > before["segments"]
    assert after["vectors"] == after["segments"], after
    ix.close()
