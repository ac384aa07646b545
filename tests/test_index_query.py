"""Indexing, the store and querying, on the tiny preset with the weight-free masker."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data
from typer.testing import CliRunner

import usesearch
from tests.helpers import OPTS, assert_consistent, segment_table, write_photos
from usesearch.cli.app import app
from usesearch.errors import IndexLockedError, IndexMismatchError, UnknownPresetError, UsesearchError
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths, reindex
from usesearch.indexer.folder import FAISS_FILE, writer_lock
from usesearch.indexer.vector_files import write_index_files


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    photos = write_photos(root / "photos")
    report = index_paths([photos], root / "db", IndexOptions(**OPTS))
    return root, photos, report


def test_query_returns_k_hits_with_masks_that_decode_to_the_image(indexed):
    root, _, report = indexed
    assert report.done == 4 and report.failed == 0 and report.segments > 8
    hits = SegmentIndex.open(root / "db").query("a cat", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    for hit in hits:
        rle = {"size": hit.mask["size"], "counts": hit.mask["counts"].encode()}
        mask = mask_utils.decode(rle)
        h, w = Image.open(hit.image).size[::-1]
        assert mask.shape == (h, w) and int(mask.sum()) == hit.area
        ys, xs = np.nonzero(mask)
        assert hit.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_filters_still_return_k_hits(indexed):
    root, photos, _ = indexed
    ix = SegmentIndex.open(root / "db")
    per_image = ix.query("a cat", k=4, filters=SearchFilters(per_image=True))
    assert len({h.image for h in per_image}) == 4
    in_sub = ix.query("a cat", k=8, filters=SearchFilters(path="*/sub/*"))
    assert len(in_sub) == 8 and all("/sub/" in h.image for h in in_sub)
    big = ix.query("a cat", k=5, filters=SearchFilters(min_area=500))
    assert len(big) == 5 and all(h.area >= 500 for h in big)
    assert ix.query("a cat", k=3, filters=SearchFilters(path="*/nothing/*")) == []
    like = ix.similar(per_image[0].segment_id, k=3)
    assert per_image[0].segment_id not in {h.segment_id for h in like} and len(like) == 3


def test_cli_query_json_info_and_failures(indexed):
    root, _, _ = indexed
    runner = CliRunner()
    result = runner.invoke(app, ["query", "a red cup", "--db", str(root / "db"), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert set(hits[0]) >= {"rank", "score", "segment_id", "image", "bbox", "area", "mask"}
    assert hits[0]["score"] >= hits[-1]["score"] and len(hits[0]["bbox"]) == 4
    info = json.loads(runner.invoke(app, ["info", "--db", str(root / "db"), "--json"]).output)
    assert info["images_done"] == 4 and info["vectors"] == info["segments"] and info["preset"] == "tiny"
    assert runner.invoke(app, ["query", "x" * 1001, "--db", str(root / "db")]).exit_code == 2
    none = runner.invoke(app, ["failures", "--db", str(root / "db")])  # says so, rather than nothing
    assert none.exit_code == 0 and none.output.strip() == "no file failed to index and no annotation was refused"
    pulled = runner.invoke(app, ["models", "pull", "tiny"])
    assert pulled.exit_code == 0 and "has no weights to pull: its models are seeded random" in pulled.output


def test_rerun_skips_adds_new_and_reindexes_changed(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert (again.done, again.skipped) == (0, 2)
    write_photos(photos, ("coffee",))  # a new file
    Image.fromarray(data.rocket()[:96, :96]).save(photos / "sub" / "chelsea.png")  # changed content
    # No model or masker named: the index's own, not the defaults' (b16, whose weights
    # are not here: the run was refused, sent to pull them).
    third = index_paths([photos], db, IndexOptions())  # its masker's settings too (max_masks 8, not 64)
    assert (third.done, third.skipped) == (2, 1)
    # Its own embedder named, and no preset: the index's preset still (b16's was loaded), ...
    assert index_paths([photos], db, IndexOptions(embedder="use")).skipped == 3
    with pytest.raises(IndexMismatchError, match="tiny"):  # ... another one refused as the index's preset's
        index_paths([photos], db, IndexOptions(embedder="crop"))
    # Another preset named: refused as such before its weights are looked for (the run
    # sent the user to download b16's, which the index would then refuse).
    with pytest.raises(IndexMismatchError, match="built with preset 'tiny'.*from preset 'b16'"):
        index_paths([photos], db, IndexOptions(preset="b16"))
    # A typo is said as one, not as another model than the index's own.
    with pytest.raises(UnknownPresetError, match="unknown preset 'bogus'"):
        index_paths([photos], db, IndexOptions(preset="bogus"))
    with pytest.raises(UsesearchError, match="unknown embedder 'bogus'"):
        index_paths([photos], db, IndexOptions(embedder="bogus"))
    fresh = tmp_path / "fresh"
    index_paths([photos], fresh, IndexOptions(**OPTS))
    assert segment_table(db) == segment_table(fresh)  # same as indexing the final folder once
    assert_consistent(db)


def test_a_renamed_or_moved_photo_keeps_its_segments_and_a_copy_is_said(tmp_path, monkeypatch):
    """A photo renamed (or its folder moved) was skipped as a copy of its old path's
    record, whose path then pointed at no file; a prune removed the record and the
    photo was in no query. Its record now follows it. A copy of a photo that is still
    there is skipped and said."""
    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # stats of files just written count
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    before = sorted(row[1:] for row in segment_table(db))  # (each row's first field: the photo's name)
    (photos / "astronaut.png").rename(photos / "renamed.png")
    (photos / "sub").rename(photos / "moved")
    shutil.copy(photos / "renamed.png", photos / "zcopy.png")  # walked after renamed.png
    report = index_paths([photos], db, IndexOptions(**OPTS))
    assert (report.done, report.skipped) == (0, 3) and sorted(new for _, new in report.moved) == [
        str(photos / "moved" / "chelsea.png"),
        str(photos / "renamed.png"),
    ]
    assert [(c.rsplit("/", 1)[1], twin.rsplit("/", 1)[1]) for c, twin in report.copies] == [
        ("zcopy.png", "renamed.png")
    ]
    assert sorted(row[1:] for row in segment_table(db)) == before  # the same segments, nothing embedded again
    ix = SegmentIndex.open(db)
    assert {h.image for h in ix.query("a photo", k=100)} == {
        str(photos / "renamed.png"),
        str(photos / "moved" / "chelsea.png"),
    }
    ix.close()
    from usesearch.indexer.maintenance import prune

    assert prune(db, [photos], IndexOptions(**OPTS)).images_removed == 0  # no record points at a gone file
    assert_consistent(db)
    # The moved photos were read whole where they lie now: the next run reads none of them
    # (a moved record's stat was dropped, and every moved byte was read twice).
    from usesearch.indexer import read_ahead

    reads: list[str] = []
    read = read_ahead.read_bytes
    monkeypatch.setattr(
        read_ahead, "read_bytes", lambda path, *a: reads.append(os.path.basename(path)) or read(path, *a)
    )
    assert index_paths([photos], db, IndexOptions(**OPTS)).skipped == 3 and reads == []


def test_a_photo_repaired_then_renamed_loses_its_failure_with_the_move(tmp_path):
    """Damaged (its failure noted, its segments kept), put back, then renamed: the run
    that followed the rename read it whole under its new name, yet still listed the old
    failure against it until one more run."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    original = (photos / "astronaut.png").read_bytes()
    (photos / "astronaut.png").write_bytes(original[: len(original) // 3])
    assert index_paths([photos], db, IndexOptions(**OPTS)).failed == 1
    (photos / "astronaut.png").write_bytes(original)
    (photos / "astronaut.png").rename(photos / "renamed.png")
    report = index_paths([photos], db, IndexOptions(**OPTS))
    assert [new for _, new in report.moved] == [str(photos / "renamed.png")] and report.failed == 0
    ix = SegmentIndex.open(db)
    assert ix.store.failures() == []
    ix.close()


def test_index_refuses_another_model_and_queries_refuse_a_foreign_model(indexed, tmp_path):
    root, photos, _ = indexed
    with pytest.raises(IndexMismatchError, match=r"built with preset 'tiny', embedder 'use', model use-tiny-"):
        index_paths([photos], root / "db", IndexOptions(**{**OPTS, "embedder": "crop"}))
    import usesearch

    crop = usesearch.load_model("tiny", embedder="crop")
    with pytest.raises(IndexMismatchError, match="built with .*: the model given is not the one it was built with"):
        SegmentIndex.open(root / "db", model=crop).query("a cat")
    # Its own model, other than it was: a query takes no model options, so what to do is said.
    import shutil
    import sqlite3

    shutil.copytree(root / "db", tmp_path / "db")
    with sqlite3.connect(tmp_path / "db" / "segments.sqlite") as catalog:
        catalog.execute("UPDATE index_info SET fingerprint = 'use-tiny-0123456789abcdef'")
    catalog.close()
    with pytest.raises(IndexMismatchError, match="preset 'tiny''s weights here are not those it was built with"):
        SegmentIndex.open(tmp_path / "db").query("a cat")


def test_one_writer_at_a_time(indexed, monkeypatch):
    """A second indexer is refused before it loads a model: it was refused at its first
    write, ~30 s of loading later (and one started first could lose to it)."""
    from usesearch.indexer import pipeline

    root, photos, _ = indexed
    monkeypatch.setattr(pipeline, "load_models", lambda options: pytest.fail("models loaded"))
    with writer_lock(root / "db"):
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}: index, prune, reindex or calibrate"):
            index_paths([photos], root / "db", IndexOptions(**OPTS))


def test_faiss_file_is_reconciled_with_committed_segments(indexed, tmp_path, caplog):
    root, _, _ = indexed
    db = tmp_path / "db"
    shutil.copytree(root / "db", db)
    ix = SegmentIndex.open(db)
    expected = ix.query("a cat", k=5)
    n = ix.store.counts()["segments"]
    # A FAISS file holding a vector the store never committed (crash between the two).
    ix.index.add(np.array([10**9]), np.ones((1, ix.info.dim), np.float32))
    write_index_files(ix.index, db / FAISS_FILE, ix.store, ix.info.dim, ix.info.factory, in_sync=False)
    assert SegmentIndex.open(db).index.ntotal == n
    # A stale FAISS file missing committed vectors, then a corrupt one, then none.
    ix.index.remove(np.arange(1, 6))
    write_index_files(ix.index, db / FAISS_FILE, ix.store, ix.info.dim, ix.info.factory, in_sync=False)
    assert SegmentIndex.open(db).query("a cat", k=5) == expected
    (db / FAISS_FILE).write_bytes(b"garbage")
    assert SegmentIndex.open(db).query("a cat", k=5) == expected
    (db / FAISS_FILE).unlink()
    with caplog.at_level("WARNING"):  # the first shard's file gone, as a later one's was: said, not silent
        assert SegmentIndex.open(db).query("a cat", k=5) == expected
    assert any(f"{FAISS_FILE} is missing (the database recorded it)" in r.getMessage() for r in caplog.records)
    assert reindex(db, "IDMap2,HNSW16").vectors == n
    assert SegmentIndex.open(db).info.factory == "IDMap2,HNSW16"


def test_reader_sees_newly_committed_segments_without_reopening(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    reader = SegmentIndex.open(db)
    before = reader.index.ntotal
    write_photos(photos, ("coffee",))
    index_paths([photos], db, IndexOptions(**OPTS))
    hits = reader.query("a cup", k=100)
    assert len(hits) > before and any("coffee" in h.image for h in hits)


def test_a_reader_adds_new_commits_alone_and_compares_every_id_only_after_a_removal(tmp_path, monkeypatch):
    """A server searching while an indexer commits: each commit is a new generation,
    and comparing every id with the store after each one (17 s at 10M segments, under
    the lock) made every search pay it. New segments are added by id; a removal is
    found by counting, and only then is every id compared."""
    from tests.test_index_integrity import change_photo
    from usesearch.indexer import vectors

    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    reader = SegmentIndex.open(db)
    full, real = [], vectors.reconcile_all
    monkeypatch.setattr(vectors, "reconcile_all", lambda *a: full.append(1) or real(*a))

    def holds_exactly_the_store():
        ids = reader.index.ids()
        return len(ids) == len(set(ids.tolist())) and set(ids.tolist()) == set(reader.store.segment_ids().tolist())

    reader.refresh()  # nothing changed: nothing done
    assert not full
    write_photos(photos, ("coffee",))
    index_paths([photos], db, IndexOptions(**OPTS))
    reader.refresh()  # once, to learn the highest id the index holds
    assert len(full) == 1 and holds_exactly_the_store()
    write_photos(photos, ("rocket", "camera"))
    index_paths([photos], db, IndexOptions(**OPTS))
    reader.refresh()  # new segments alone: added by id, no duplicate
    assert len(full) == 1 and holds_exactly_the_store()
    change_photo(photos, "astronaut")  # its old segments are removed, new ones added
    index_paths([photos], db, IndexOptions(**OPTS))
    reader.refresh()
    assert len(full) == 2 and holds_exactly_the_store()
    assert any("astronaut" in h.image for h in reader.query("a person", k=200))


def test_a_run_whose_masker_finds_nothing_says_so_and_why(tmp_path):
    """The tiny preset's SAM (random weights) finds no region: the run says so, and
    names the masker that works there, rather than finishing quietly with 0 segments."""
    photos = write_photos(tmp_path / "photos", ("coffee",))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--masker", "sam"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "1 image indexed" in result.output and "0 segments" in result.output
    said = " ".join(result.output.split())
    assert "no masks: the masker found no region in 1 photo (the tiny preset's sam has random weights" in said, said
    assert "in another --db gets regions" in said
    # A later run naming neither preset nor masker (the index's own) is told the same.
    write_photos(photos / "more", ("rocket",))
    again = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db")])
    said = " ".join(again.output.split())
    assert "no masks" in said and "the tiny preset's sam has random weights" in said, said
    plain = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "felz"), "--preset", "tiny"])
    assert plain.exit_code == 0 and "no masks" not in plain.output


def test_the_selection_cache_takes_a_servers_threads_at_once(monkeypatch):
    """A server's threads filled and evicted the filter cache together: two took the same
    oldest entry out (KeyError), or one iterated it while another added (RuntimeError)."""
    import sys
    import threading

    import usesearch.indexer.selection as selection

    monkeypatch.setattr(selection, "CACHE_ENTRIES", 2)

    class OneGeneration:
        def generation(self):
            return 1

    cache, failures = selection.Selections(OneGeneration(), lambda: 0), []

    def fill(thread: int) -> None:
        try:
            for i in range(5000):
                assert cache.cached((thread, i), lambda: i) == i
        except Exception as exc:  # noqa: BLE001 - what the threads met is the finding
            failures.append(repr(exc))

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the race shows at once
    try:
        threads = [threading.Thread(target=fill, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switching)
    assert failures == [] and len(cache._cache) <= 2


def test_a_head_beside_the_crop_embedder_is_refused_and_one_recorded_before_is_not_required(tmp_path, trained_head):
    """`index --head H --embedder crop` embedded crops with CLIP alone, recorded H with
    the index, then refused every query once H moved ("a query needs the head the
    segments were embedded with", which it never was); `embed` dropped H unsaid. The
    pair is refused in one line; an index that recorded a head that way answers
    without it, and a run over it adds with its own model."""
    import sqlite3

    head, _ = trained_head
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    runner = CliRunner()
    for args in (
        ["index", str(photos), "--db", str(tmp_path / "db"), "--head", str(head), "--embedder", "crop"],
        ["embed", str(photos / "astronaut.png"), "a cat", "--head", str(head), "--embedder", "crop"],
    ):
        result = runner.invoke(app, args)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "--embedder crop embeds each segment's crop with CLIP alone" in said, said
    assert not (tmp_path / "db").exists()
    with pytest.raises(UsesearchError, match="uses no head"):
        usesearch.load_model("tiny", embedder="crop", head=head)
    with pytest.raises(UsesearchError, match="uses no head: .* is a head checkpoint; give its preset \\(tiny\\)"):
        usesearch.load_model(head, embedder="crop")  # `--preset CHECKPOINT --embedder crop`: its head unused
    db = tmp_path / "crop"
    index_paths([photos], db, IndexOptions(**{**OPTS, "embedder": "crop"}))
    with sqlite3.connect(db / "segments.sqlite") as catalog:  # as such a run recorded it, the head since moved
        catalog.execute("UPDATE index_info SET head = ?", (str(tmp_path / "moved" / "head"),))
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "-k", "1"])
    assert result.exit_code == 0 and ".png" in result.output, result.output  # a hit
    from usesearch.indexer.audit.run import _class_vectors
    from usesearch.indexer.calibration import model_for
    from usesearch.indexer.folder import open_store

    store = open_store(db, read_only=True)  # an audit's class names and a calibration's text queries
    try:
        assert model_for(store.info(), db) is not None and _class_vectors(store, ["cat", "cup"], "cpu").shape[0] == 2
    finally:
        store.close()
    info = runner.invoke(app, ["info", "--db", str(db)])
    assert info.exit_code == 0 and "moved" not in info.output, info.output  # the unused head not shown as its own
    write_photos(photos, ("chelsea",))
    again = runner.invoke(app, ["index", str(photos), "--db", str(db)])
    assert again.exit_code == 0 and "1 image indexed" in again.output, again.output


def test_the_command_line_refuses_another_model_or_masker_for_an_index_before_torch_loads(tmp_path):
    """`index PHOTOS --db TINY_INDEX --preset b16` (or `--masker sam`) was refused once torch
    had loaded (4-5 s); the refusal named b16's embedder as the index's ('use'), where b16
    with no head embeds by crops."""
    from tests.helpers import invoke_in_a_fresh_python

    photos = write_photos(tmp_path / "photos", ("coffee",))
    db = str(tmp_path / "db")
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 1
    said, heavy = invoke_in_a_fresh_python(
        ["index", str(photos), "--db", db, "--preset", "b16"],
        ["index", str(photos), "--db", db, "--masker", "sam"],
    )
    assert [code for code, _ in said] == [2, 2] and "torch" not in heavy, said  # (faiss: the catalog's, 0.1 s)
    assert "refusing to add segments from preset 'b16', embedder 'crop'" in said[0][1], said[0][1]
    assert "built with masker felzenszwalb" in said[1][1] and "this run asks for sam" in said[1][1], said[1][1]
