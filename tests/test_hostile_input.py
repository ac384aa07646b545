"""Defects found by attacking the index (issue 21): each test failed before its fix
(damaged embedding rows: test_damaged_embeddings.py).
Wrong answers must never come back silently; bad input is a one-line error (exit 2);
what is shown or logged is data, never markup or a secret."""

import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.errors import CatalogLockedError, IndexIdentityError
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
        (["--source", "bogus"], "--source must be one of annotation, proposal, got 'bogus'"),
        (["--label", ""], "--label must name a class"),
    ):
        result = runner.invoke(app, ["query", "a cat", "--db", str(sharded), *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    index = SegmentIndex.open(sharded)
    vector = np.ones(index.info.dim, np.float32) / math.sqrt(index.info.dim)
    for bad in (dict(min_score=float("nan")), dict(min_area=-1), dict(min_area=2**40 + 1), dict(source="x")):
        # In Python (and the web API), the field's own name, not the CLI's flag.
        (name,) = bad
        with pytest.raises(ValueError, match=f"^the filter {name} must be "):
            index.search_vector(vector, filters=SearchFilters(**bad))
    largest = SearchFilters(min_area=2**40)
    assert index.search_vector(vector, k=3, filters=largest) == []  # the largest area allowed matches nothing


def test_a_catalog_copied_into_another_index_folder_is_refused_never_rebuilt(tmp_path):

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
