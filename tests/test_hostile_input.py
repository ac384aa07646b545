"""Defects found by attacking the index (issue 21): each test failed before its fix.
Wrong answers must never come back silently; bad input is a one-line error (exit 2);
what is shown or logged is data, never markup or a secret."""

import json
import math
import shutil
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.errors import CatalogLockedError, DamagedRowsError, IndexIdentityError
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths, reindex
from usesearch.indexer.folder import DB_FILE, FAISS_FILE
from usesearch.indexer.vector_files import shard_files
from usesearch.indexer.web.security import LOGGED_CHARS, logged, redact


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    photos = write_photos(folder / "photos", ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins"))
    index_paths([photos], folder / "db", IndexOptions(**OPTS))
    reindex(folder / "db", shard_size=10)
    return folder / "db"


@pytest.mark.parametrize("which", ["middle", "last"])
def test_a_deleted_shard_is_rebuilt_never_skipped(sharded, tmp_path, which):
    db = tmp_path / "db"
    shutil.copytree(sharded, db)
    files = shard_files(db / FAISS_FILE)
    assert len(files) >= 3
    (files[1] if which == "middle" else files[-1]).unlink()
    index = SegmentIndex.open(db)
    assert index.index.ntotal == index.store.counts()["segments"] > 0
    vector = next(iter(index.store.embeddings([index.store.max_segment_id()])))[1][0]
    assert index.search_vector(vector, k=1)[0].segment_id == index.store.max_segment_id()  # found in the last shard


def test_the_token_is_redacted_in_every_encoding():
    for line in (
        "GET /api/search?q=cat&%74oken=SECRET HTTP/1.1",
        "GET /?token=SECRET",
        "GET /x?a=1&to%6Ben=SECRET&b=2",
        "GET /x?%54OKEN=SECRET",
        "GET /x?q=1;token=SECRET",
        "GET /x?token=abcdefghijklmnop;SECRET",
    ):
        assert "SECRET" not in redact(line) and "REDACTED" in redact(line), line
    assert redact("GET /x?q=token%3Dno&tok=1") == "GET /x?q=token%3Dno&tok=1"  # a value naming it is no token
    long = logged("/api/search?q=" + "cat " * 5000 + "&token=SECRET")  # cut, and the token still goes
    assert len(long) < LOGGED_CHARS + 30 and long.endswith("(20029 chars)") and "SECRET" not in long


def test_markup_in_file_names_is_shown_as_is(tmp_path):
    photos = tmp_path / "photos"
    write_photos(tmp_path / "src", ("astronaut", "chelsea", "coffee"))
    (photos / "br[ack]et").mkdir(parents=True)
    (photos / "x[").mkdir()  # so the path reads x[/]y.png: rich's closing tag
    shutil.copy(tmp_path / "src" / "astronaut.png", photos / "x[" / "]y.png")
    shutil.copy(tmp_path / "src" / "sub" / "chelsea.png", photos / "br[ack]et" / "7.png")
    shutil.copy(tmp_path / "src" / "coffee.png", photos / "[bold]w.png")
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    result = CliRunner().invoke(app, ["query", "a photo", "--db", str(tmp_path / "db"), "-k", "50", "--per-image"])
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "").replace("│", "").replace(" ", "")
    for name in ("x[/]y.png", "br[ack]et/7.png", "[bold]w.png"):
        assert name in flat, (name, result.output)


def test_a_newline_in_a_file_name_is_spelt_out_in_the_index_and_curate_summaries_and_the_query_table(tmp_path):
    """One failure took two lines of the summary (grep saw half a record), and one hit two rows of the table;
    ``curate run``'s summary the same."""
    photos = write_photos(tmp_path / "photos", ("chelsea",))
    (photos / "chelsea.png").rename(photos / "new\nline.png")
    (photos / "bad\nname.png").write_text("not a photo")
    args = ["--preset", "tiny", "--masker", "felzenszwalb", "--db", str(tmp_path / "db")]
    indexed = CliRunner().invoke(app, ["index", str(photos), *args])
    assert indexed.exit_code == 0, indexed.output
    assert "failed: " + str(photos / "bad\\nname.png") + ": ImageReadError" in indexed.output, indexed.output
    assert not any(line.startswith("name.png") for line in indexed.output.splitlines())
    found = CliRunner().invoke(app, ["query", "a photo", "--db", str(tmp_path / "db"), "-k", "50", "--per-image"])
    assert found.exit_code == 0 and "new\\nline.png" in found.output.replace("│", "").replace(" ", ""), found.output
    curate = ["curate", "run", str(photos), "--out", str(tmp_path / "ds"), "--captioner", "tiny", "--grounder", "tiny"]
    curated = CliRunner().invoke(app, [*curate, "--preset", "tiny"])  # its summary as the index's
    assert curated.exit_code == 0, curated.output
    assert "failed: " + str(photos / "bad\\nname.png") + ": ImageReadError" in curated.output, curated.output
    assert not any(line.startswith("name.png") for line in curated.output.splitlines())


def test_filters_out_of_range_are_one_line_errors_alike_in_the_cli_and_python(sharded):
    runner = CliRunner()
    for args, words in (
        (["--min-score", "nan"], "--min-score"),
        (["--min-score", "inf"], "--min-score"),
        (["--min-area", "99999999999999999999"], "--min-area"),
        (["--min-area", str(2**40 + 1)], "--min-area"),
    ):
        result = runner.invoke(app, ["query", "a cat", "--db", str(sharded), *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    index = SegmentIndex.open(sharded)
    vector = np.ones(index.info.dim, np.float32) / math.sqrt(index.info.dim)
    for bad in (dict(min_score=float("nan")), dict(min_area=-1), dict(min_area=2**40 + 1)):
        with pytest.raises(ValueError):
            index.search_vector(vector, filters=SearchFilters(**bad))
    largest = SearchFilters(min_area=2**40)
    assert index.search_vector(vector, k=3, filters=largest) == []  # the largest area allowed matches nothing


def test_a_catalog_copied_into_another_index_folder_is_refused_never_rebuilt(tmp_path):
    from usesearch.indexer.folder import DB_FILE

    for name, photo in (("a", "astronaut"), ("b", "coffee")):
        index_paths([write_photos(tmp_path / f"photos-{name}", (photo,))], tmp_path / name, IndexOptions(**OPTS))
    shutil.copy(tmp_path / "a" / DB_FILE, tmp_path / "b" / DB_FILE)
    (tmp_path / "b" / FAISS_FILE).unlink()  # what would have been "rebuilt from the database"
    with pytest.raises(IndexIdentityError, match="belongs to index"):
        SegmentIndex.open(tmp_path / "b")
    runner = CliRunner()
    for args in (
        ["query", "a cat", "--db", str(tmp_path / "b")],
        ["reindex", "--db", str(tmp_path / "b")],
        ["index", str(tmp_path / "photos-b"), "--db", str(tmp_path / "b"), "--preset", "tiny"],
        # No --preset: the run takes the index's own model from its catalog, and a catalog of
        # another index sent the user to pull b16's weights (the defaults') instead.
        ["index", str(tmp_path / "photos-b"), "--db", str(tmp_path / "b")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "belongs to index" in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "b" / FAISS_FILE).exists()


def test_one_postgresql_catalog_one_folder_and_one_writer(tmp_path, pg_url):
    from usesearch.indexer.writer import Writer

    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "a", IndexOptions(**OPTS, db_url=pg_url))
    assert SegmentIndex.open(tmp_path / "a", db_url=pg_url).index.ntotal > 0
    # Another folder with this catalog: refused to read, refused to write, whether new or another index's.
    index_paths([photos], tmp_path / "other", IndexOptions(**OPTS))
    for folder in (tmp_path / "new", tmp_path / "other"):
        folder.mkdir(exist_ok=True)
        with pytest.raises(IndexIdentityError):
            SegmentIndex.open(folder, db_url=pg_url)
        with pytest.raises(IndexIdentityError):
            index_paths([photos], folder, IndexOptions(**OPTS, db_url=pg_url))
    # A second writer on the catalog is refused while the first holds it, whatever its folder:
    # a copy of the index's folder (its id too) past the folder's lock; a new folder is not the
    # catalog's, refused as such before any model loads or the folder is made.
    with Writer(tmp_path / "a", IndexOptions(db_url=pg_url), None):
        shutil.copytree(tmp_path / "a", tmp_path / "copy")
        with pytest.raises(CatalogLockedError, match="another indexer is writing"):
            index_paths([photos], tmp_path / "copy", IndexOptions(**OPTS, db_url=pg_url))
        with pytest.raises(IndexIdentityError, match="is not its folder"):
            index_paths([photos], tmp_path / "new2", IndexOptions(**OPTS, db_url=pg_url))
    assert not (tmp_path / "new2").exists()  # the refused run made no folder
    again = index_paths([photos], tmp_path / "a", IndexOptions(**OPTS, db_url=pg_url))  # released
    assert again.skipped == 2


def test_a_folder_opened_with_the_other_kind_of_catalog_is_refused_leaving_nothing_made(tmp_path, pg_url):
    """A PostgreSQL-catalogued folder named without --db-url made an empty SQLite file
    there before it was refused; a SQLite one named with --db-url made empty tables in
    the server's database. Each is now refused first, in one line that says which."""
    from sqlalchemy import create_engine, inspect

    from usesearch.indexer.catalog import server_url
    from usesearch.indexer.folder import DB_FILE

    photos = write_photos(tmp_path / "photos", ("astronaut",))
    index_paths([photos], tmp_path / "on-server", IndexOptions(**OPTS, db_url=pg_url))
    index_paths([photos], tmp_path / "local", IndexOptions(**OPTS))
    engine = create_engine(server_url(pg_url))
    tables = set(inspect(engine).get_table_names())
    runner = CliRunner()
    for args, said in (
        (["index", str(photos), "--db", str(tmp_path / "on-server"), "--preset", "tiny"], "give its --db-url"),
        (["info", "--db", str(tmp_path / "on-server")], "give its --db-url"),
        (["index", str(photos), "--db", str(tmp_path / "local"), "--db-url", pg_url], "leave out --db-url"),
        (["query", "a cat", "--db", str(tmp_path / "local"), "--db-url", pg_url], "leave out --db-url"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and said in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "on-server" / DB_FILE).exists()
    assert set(inspect(engine).get_table_names()) == tables
    engine.dispose()
    # Named with no --preset either: the catalog is blamed, not the default preset's weights.
    bare = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "on-server")])
    assert bare.exit_code == 2 and "give its --db-url" in bare.output, bare.output
    # The empty SQLite file the old refusal left there is no catalog: the folder opens with its --db-url.
    from usesearch.indexer.records import Base

    leftover = create_engine(f"sqlite:///{tmp_path / 'on-server' / DB_FILE}")
    Base.metadata.create_all(leftover)
    leftover.dispose()
    opened = runner.invoke(app, ["info", "--db", str(tmp_path / "on-server"), "--db-url", pg_url])
    assert opened.exit_code == 0, opened.output


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
    # The damaged photo (the first indexed, astronaut.png) is not under sub/: named and left as it is.
    result = runner.invoke(app, ["index", str(photos / "sub"), "--db", str(db), "--preset", "tiny", "--repair"])
    assert result.exit_code == 0 and "repair: 0 photos" in result.output, result.output
    assert "left as it is" in result.output and "astronaut.png" in result.output.replace("\n", ""), result.output
    (db / FAISS_FILE).unlink()  # a rebuild on open would read the damaged row first: repair comes before it
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--repair"])
    assert result.exit_code == 0 and "repair: 1 photos" in result.output, result.output
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


def test_a_dangling_db_symlink_and_a_fragment_on_a_full_disk(tmp_path, monkeypatch):
    import builtins
    import errno

    from usesearch.indexer.fragments import fragment_path, write_fragment

    (tmp_path / "db").symlink_to(tmp_path / "gone")
    result = CliRunner().invoke(
        app,
        [
            "index",
            str(write_photos(tmp_path / "photos", ("coffee",))),
            "--db",
            str(tmp_path / "db"),
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 2 and "symbolic link" in result.output and "does not exist" in result.output, (
        result.output
    )
    target = fragment_path(tmp_path / "idx", "ab" * 32)
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        builtins,
        "open",
        lambda p, mode="r", *a, **k: (
            FullDisk(real_open(p, mode, *a, **k)) if str(p).endswith(".tmp") else real_open(p, mode, *a, **k)
        ),
    )
    with pytest.raises(OSError):
        write_fragment(target, (4, 4), [{"x": 0}], np.zeros((1, 8), np.float32))
    assert list(target.parent.iterdir()) == []


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


def test_connections_count_against_an_ipv4_address_or_an_ipv6_64():
    from usesearch.indexer.web import _client_key

    assert _client_key("203.0.113.7") == "203.0.113.7" and _client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert _client_key("2001:db8:1:2:aaaa::1") == _client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert _client_key("2001:db8:1:3::1") != _client_key("2001:db8:1:2::1")


def test_a_broken_link_among_the_photos_is_failed_in_words_and_the_run_goes_on(tmp_path):
    """A link whose file is gone failed as "FileNotFoundError: [Errno 2] No such file or
    directory: '.../broken.jpg'", naming the link, which is there."""
    import os

    from usesearch.indexer import IndexOptions, index_paths

    photos = write_photos(tmp_path / "photos", ("coffee",))
    os.symlink(tmp_path / "nowhere" / "x.jpg", photos / "broken.jpg")
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert report.done == 1 and report.failed == 1, report
    ((path, why),) = report.failures
    assert path.endswith("broken.jpg") and "ImageReadError" in why, why
    assert f"a link to {tmp_path / 'nowhere' / 'x.jpg'}, which does not exist" in why and "Errno" not in why, why
