"""An index run again over its photos: the catalog read ahead in batches with the
decisions of one query a photo, a renamed photo followed (also when another took its
name), a file read only where its stat changed, a failed one skipped unread until it
changes or is retried, a stale stat note dropped."""

import os

from tests.helpers import OPTS, assert_consistent, write_photos
from usesearch.indexer import IndexOptions, index_paths


def test_a_rerun_reads_the_catalog_in_batches_and_skips_as_one_query_a_photo_did(tmp_path, monkeypatch):
    """A re-run over indexed photos looked each up alone (0.7 ms a photo: 12 min at
    10^6); now the catalog is read ahead in batches, with the same decisions: done ones
    skipped, a renamed one followed, a copy counted, a new one indexed."""
    from usesearch.indexer import known_images
    from usesearch.indexer.store import Store

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # photos written just now are not re-read for it
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee", "rocket"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    (photos / "sub" / "rocket.png").rename(photos / "sub" / "rocket-renamed.png")
    (photos / "copy.png").write_bytes((photos / "astronaut.png").read_bytes())
    write_photos(photos / "new", ("camera",))
    lookups: list[bytes] = []
    one_by_one = Store.image_by_path
    monkeypatch.setattr(Store, "image_by_path", lambda self, key: lookups.append(key) or one_by_one(self, key))
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert lookups == []  # every decision from the batch read
    assert (report.done, report.skipped) == (1, 5)
    assert [os.path.basename(new) for _, new in report.moved] == ["rocket-renamed.png"]
    assert [os.path.basename(path) for path, _ in report.copies] == ["copy.png"]
    assert_consistent(tmp_path / "db")


def test_a_photo_renamed_while_another_took_its_name_keeps_its_segments(tmp_path):
    """a.png renamed b.png, and another photo saved as a.png: b.png was counted a copy of
    a.png (still there) and skipped, then a.png's new content replaced the record, so
    b.png's photo was in the index under no name until the next run. The record now
    follows b.png (a.png no longer holds its content), and a.png is indexed as new."""
    from PIL import Image
    from skimage import data

    from tests.helpers import segment_table

    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    (photos / "astronaut.png").rename(photos / "b.png")
    other = Image.fromarray(data.chelsea())
    other.thumbnail((96, 96))
    other.save(photos / "astronaut.png")
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert [(os.path.basename(a), os.path.basename(b)) for a, b in report.moved] == [("astronaut.png", "b.png")]
    assert report.copies == [] and report.done == 1  # only the new a.png computed
    index_paths([photos], tmp_path / "clean", IndexOptions(**OPTS))
    assert segment_table(tmp_path / "db") == segment_table(tmp_path / "clean")
    assert_consistent(tmp_path / "db")


def test_a_rerun_reads_only_the_files_whose_stat_changed(tmp_path, monkeypatch):
    """A file with the size, times and inode recorded when it was last read whole is
    skipped unread (a re-run over 3 TB read and hashed every byte). One rewritten with
    its old size and mtime put back (cp -p, rsync -t) is caught by its ctime and indexed
    again; one merely touched is read once, then skipped unread again."""
    from usesearch.indexer import known_images, read_ahead

    assert known_images.file_stat(str(write_photos(tmp_path / "now", ("coffee",)) / "coffee.png")) is None
    monkeypatch.setattr(known_images, "RACY_NS", 0)  # (a file changed within 3 s: racily clean, read again)
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    reads: list[str] = []
    read = read_ahead.read_bytes
    monkeypatch.setattr(
        read_ahead, "read_bytes", lambda path, *a: reads.append(os.path.basename(path)) or read(path, *a)
    )
    assert index_paths([photos], tmp_path / "db", IndexOptions(**OPTS)).skipped == 3 and reads == []

    rewritten = photos / "coffee.png"
    before = rewritten.stat()
    data = bytearray(rewritten.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other bytes, the same size
    rewritten.write_bytes(bytes(data))
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime put back
    os.utime(photos / "astronaut.png")  # touched: same bytes, a new mtime
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert sorted(reads) == ["astronaut.png", "coffee.png"]
    assert (report.done + report.failed, report.skipped) == (1, 2)  # indexed again, or its decode failure noted
    reads.clear()
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert "astronaut.png" not in reads  # the touched one's new stat was recorded
    assert_consistent(tmp_path / "db")


def test_a_file_that_failed_after_its_read_is_skipped_unread_until_it_changes_or_is_retried(tmp_path, monkeypatch):
    """A re-run read and hashed every failed file again (and said it had not): on an
    archive of broken files, every re-run read them whole."""
    from usesearch.indexer import known_images, read_ahead

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    whole = (photos / "astronaut.png").read_bytes()
    (photos / "cut.png").write_bytes(whole[: len(whole) // 2])  # read whole, fails to decode
    assert index_paths([photos], tmp_path / "db", IndexOptions(**OPTS)).failed == 1
    reads: list[str] = []
    read = read_ahead.read_bytes
    monkeypatch.setattr(
        read_ahead, "read_bytes", lambda path, *a: reads.append(os.path.basename(path)) or read(path, *a)
    )
    again = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert (again.skipped, again.failed, reads) == (2, 0, [])
    retried = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, retry_failed=True))
    assert (retried.failed, reads) == (1, ["cut.png"])
    reads.clear()
    (photos / "cut.png").write_bytes(whole)  # mended: its stat changed, so it is read again
    mended = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    # (whole, it is astronaut.png's copy: counted as one, not indexed twice)
    assert (mended.done, [os.path.basename(c) for c, _ in mended.copies], reads) == (0, ["cut.png"], ["cut.png"])
    assert_consistent(tmp_path / "db")


def test_a_stat_noted_for_a_row_replaced_since_is_dropped_not_an_error(tmp_path):
    """A path met twice in one walk (a file named and its folder), rewritten in between:
    its first stat note names a row the second commit replaced (the run ended in
    StaleDataError, or the note landed on the new row)."""
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    store = open_store(tmp_path / "db", None)
    try:
        (row,) = [store.image(i) for i in (1,)]
        notes = [
            {"row": row.id + 1, "content": row.sha256, "stat": "gone"},  # no such row
            {"row": row.id, "content": "0" * 64, "stat": "other content"},  # replaced since
        ]
        store.set_file_stats(notes)
        assert store.image(row.id).file_stat == row.file_stat
        store.set_file_stats([{"row": row.id, "content": row.sha256, "stat": "1:2:3:4"}])
        assert store.image(row.id).file_stat == "1:2:3:4"
    finally:
        store.close()


def test_a_copy_of_a_photo_new_in_the_same_run_names_it_in_the_report(tmp_path):
    """A copy met while its photo, earlier in the run, was still on its way to the
    catalog was reported as a copy of "": the caller could not name the original."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    (photos / "zcopy.png").write_bytes((photos / "astronaut.png").read_bytes())  # walked after astronaut.png
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert report.done == 2 and report.copies == [(str(photos / "zcopy.png"), str(photos / "astronaut.png"))]
