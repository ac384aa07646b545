"""Damaged embedding rows (issue 21's attacks on the index): a bit flipped in a chunk,
a chunk cut short or gone, rows from before checksums; each found, named and repaired
by embedding the photos again, never answered from silently."""

import json
import os
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.errors import DamagedRowsError
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.indexer.folder import DB_FILE, FAISS_FILE


def test_bit_flips_in_an_embedding_chunk_are_found_named_and_repaired(tmp_path):
    from tests.helpers import assert_consistent, segment_table

    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny"]).exit_code == 0
    before = segment_table(db)
    index = SegmentIndex.open(db)
    locations = index.store.segment_locations(index.store.segment_ids())  # [id, chunk, row]
    first = int(locations[(locations[:, 1] == 0) & (locations[:, 2] == 0), 0][0])  # the segment of row 0
    row_bytes, index = 2 * index.info.dim, index.close()
    chunk = db / "embeddings" / "chunk-000000.f16"
    data = bytearray(chunk.read_bytes())
    for i in range(2, row_bytes, 7):  # a few bytes of row 0 only
        data[i] ^= 0x5A
    chunk.write_bytes(bytes(data))
    for args in (["reindex", "--db", str(db)], ["similar", str(first), "--db", str(db)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "damaged" in result.output and f"(segments {first})" in result.output, (
            result.output
        )
        assert "--repair" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    # A search reads no row (FAISS's vectors answer it): its answer, with no error after it.
    searched = runner.invoke(app, ["query", "a cat", "--db", str(db), "-k", "1000", "--json"])
    assert searched.exit_code == 0 and len(json.loads(searched.stdout)) == len(before), searched.output
    # The damaged photo (the first indexed, astronaut.png) is not under sub/: named and left as it is.
    result = runner.invoke(app, ["index", str(photos / "sub"), "--db", str(db), "--preset", "tiny", "--repair"])
    assert result.exit_code == 0 and "repair: 0 photos" in result.output, result.output
    assert "left as it is" in result.output and "astronaut.png" in result.output.replace("\n", ""), result.output
    (db / FAISS_FILE).unlink()  # a rebuild on open would read the damaged row first: repair comes before it
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--repair"])
    assert result.exit_code == 0 and "repair: 1 photo had" in result.output, result.output
    assert segment_table(db) == before  # the photo embedded again: the same segments
    assert runner.invoke(app, ["reindex", "--db", str(db)]).exit_code == 0
    assert_consistent(db)


def test_a_missing_or_cut_embedding_chunk_is_repaired_like_damaged_rows(tmp_path, monkeypatch):
    """A chunk file deleted (or cut short) by hand: every read named the file only, and
    --repair, which re-embeds damaged rows, stopped on it too."""
    import usesearch.indexer.embeddings as embeddings
    from tests.helpers import assert_consistent, segment_table

    monkeypatch.setattr(embeddings, "CHUNK_ROWS", 8)  # a chunk a photo or so
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    before = segment_table(db)
    chunks = sorted((db / "embeddings").glob("chunk-*.f16"))
    assert len(chunks) >= 3
    chunks[0].unlink()
    chunks[1].write_bytes(chunks[1].read_bytes()[:100])
    con = sqlite3.connect(db / DB_FILE)
    chunk_rows = dict(con.execute("select vec_chunk, count(*) from segments group by vec_chunk"))
    kept = len(chunks[1].read_bytes()) // (2 * con.execute("select dim from index_info").fetchone()[0])
    past_end = con.execute(f"select count(*) from segments where vec_chunk = 1 and vec_row >= {kept}").fetchone()[0]
    con.close()
    shown = CliRunner().invoke(app, ["info", "--db", str(db), "--json"])
    stats = json.loads(shown.output)  # info names what is lost instead of a negative count of spare bytes
    assert stats["embeddings_lost"] == {chunks[0].name: chunk_rows[0], chunks[1].name: past_end} and past_end > 0
    assert stats["bytes_embeddings_dead"] == 0
    # A search answers from FAISS, right, and says the index is damaged (it said nothing).
    searched = CliRunner().invoke(app, ["query", "a cat", "--db", str(db), "-k", "1000", "--json"])
    assert searched.exit_code == 0 and len(json.loads(searched.stdout)) == len(before)
    assert searched.stderr.startswith(f"this index is damaged: {chunks[0]} is missing: `usesearch index PATHS")
    (db / FAISS_FILE).unlink()  # a rebuild reads every row
    unloaded = CliRunner().invoke(app, ["info", "--db", str(db), "--json"])  # was exit 2 with the repair alone
    stats = json.loads(unloaded.output)  # what the catalog tells, and what is lost
    assert stats["embeddings_lost"] == {chunks[0].name: chunk_rows[0], chunks[1].name: past_end}
    assert stats["vectors"] is None and stats["faiss_note"].startswith("not loaded: its rebuild reads"), stats
    result = CliRunner().invoke(app, ["reindex", "--db", str(db)])
    said = " ".join(result.output.split())  # the index's own flags in the repair it suggests
    assert result.exit_code == 2 and f"is missing: `usesearch index PATHS --db {db} --repair`" in said, said
    repaired = index_paths([photos], db, IndexOptions(**OPTS, repair=True))
    assert repaired.repaired and repaired.done == len(repaired.repaired)
    assert segment_table(db) == before
    assert_consistent(db)
    assert json.loads(CliRunner().invoke(app, ["info", "--db", str(db), "--json"]).output)["embeddings_lost"] == {}


def test_a_damaged_photo_whose_file_is_gone_keeps_its_segments_and_is_named(tmp_path, monkeypatch):
    """--repair dropped a gone photo's segments too, counted it among those "embedded
    again" (nothing could), and left its record done with no segment."""
    import usesearch.indexer.embeddings as embeddings

    monkeypatch.setattr(embeddings, "CHUNK_ROWS", 8)
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    con = sqlite3.connect(db / DB_FILE)
    damaged = {
        p
        for (p,) in con.execute(
            "select distinct i.path from segments s join images i on i.id = s.image_id where s.vec_chunk = 0"
        )
    }
    con.close()
    (db / "embeddings" / "chunk-000000.f16").unlink()
    gone = sorted(damaged)[0]
    os.unlink(gone)
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--repair"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and f"repair: {len(damaged) - 1} photo" in said, said
    assert f"damaged, and its file is gone, so left as it is (`usesearch prune` removes it): {gone}" in said, said
    con = sqlite3.connect(db / DB_FILE)
    kept = con.execute("select count(*) from segments s join images i on i.id = s.image_id where i.path = ?", (gone,))
    assert kept.fetchone()[0] > 0
    con.close()
    # With --prune it is removed, and said so once: not also "left as it is".
    pruned = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--repair", "--prune"])
    said = " ".join(pruned.output.split())
    assert pruned.exit_code == 0 and "pruned 1 image whose files are gone" in said and gone not in said, said


def test_each_row_checksum_catches_any_single_bit_flip_and_older_rows_read_unverified(tmp_path):
    from usesearch.indexer.embeddings import EmbeddingFiles

    files = EmbeddingFiles(tmp_path, dim=12, chunk_rows=50)
    vectors = np.random.default_rng(0).standard_normal((70, 12)).astype(np.float16)
    chunks, rows = files.append(vectors)
    path = files.path(0)
    for bit in range(0, 12 * 16, 5):  # every 5th bit of row 3
        data = bytearray(path.read_bytes())
        data[3 * 24 + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
        fresh = EmbeddingFiles(tmp_path, dim=12, chunk_rows=50)
        assert np.flatnonzero(fresh.damaged(chunks, rows)).tolist() == [3], bit
        with pytest.raises(DamagedRowsError, match="segments 1003"):
            fresh.read(chunks, rows, ids=np.arange(1000, 1070))
        data[3 * 24 + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
    np.testing.assert_array_equal(
        EmbeddingFiles(tmp_path, dim=12, chunk_rows=50).read(chunks, rows, np.float16), vectors
    )
    files.sums_path(0).unlink()  # a chunk written before checksums: read as it is
    assert not EmbeddingFiles(tmp_path, dim=12, chunk_rows=50).damaged(chunks, rows).any()
    older = EmbeddingFiles(tmp_path, dim=12, chunk_rows=50)
    assert older.backfill_sums() == 50 and older.backfill_sums() == 0  # then verified like the rest
    data = bytearray(path.read_bytes())
    data[7 * 24] ^= 1
    path.write_bytes(bytes(data))
    assert np.flatnonzero(EmbeddingFiles(tmp_path, dim=12, chunk_rows=50).damaged(chunks, rows)).tolist() == [7]


def test_rows_appended_to_a_chunk_begun_before_checksums_leave_its_older_rows_verifiable(tmp_path):
    from usesearch.indexer.embeddings import EmbeddingFiles

    rng = np.random.default_rng(1)
    files = EmbeddingFiles(tmp_path, dim=8, chunk_rows=100)
    old_chunks, old_rows = files.append(rng.standard_normal((30, 8)).astype(np.float16))
    files.sums_path(0).unlink()  # as an index made before checksums left it
    new_chunks, new_rows = EmbeddingFiles(tmp_path, dim=8, chunk_rows=100).append(
        rng.standard_normal((10, 8)).astype(np.float16)
    )
    chunks, rows = np.concatenate([old_chunks, new_chunks]), np.concatenate([old_rows, new_rows])
    assert not EmbeddingFiles(tmp_path, dim=8, chunk_rows=100).damaged(chunks, rows).any()
    path = files.path(0)
    data = bytearray(path.read_bytes())
    data[5 * 16] ^= 4  # an older row
    path.write_bytes(bytes(data))
    assert np.flatnonzero(EmbeddingFiles(tmp_path, dim=8, chunk_rows=100).damaged(chunks, rows)).tolist() == [5]
