"""The catalog in a real PostgreSQL server (``--db-url``): the same index, queries,
resume after kill -9 and reconciliation as with SQLite, and a server that restarts
or cannot be reached mid-run is a retry or a one-line error, never half an image."""

import shlex
import threading
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tests.helpers import OPTS, assert_consistent, kill_when, run_python, segment_table, write_photos
from usesearch.cli.app import app
from usesearch.errors import IndexIdentityError, UsesearchError
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths

NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def done_images(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("select count(*) from images where status = 'done'")).scalar()
    except Exception:  # noqa: BLE001 - tables not created yet
        return 0
    finally:
        engine.dispose()


def test_index_query_and_info_on_postgresql_equal_sqlite(tmp_path, pg_url):
    photos = write_photos(tmp_path / "photos", NAMES)
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    runner = CliRunner()
    for db, extra in ((tmp_path / "pg", ["--db-url", pg_url]), (tmp_path / "lite", [])):
        result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", *extra])
        assert result.exit_code == 0, result.output
    assert not (tmp_path / "pg" / "segments.sqlite").exists()  # the catalog is on the server
    assert (tmp_path / "pg" / "embeddings").is_dir()  # the vectors beside the FAISS file
    assert segment_table(tmp_path / "pg", pg_url) == segment_table(tmp_path / "lite")
    assert_consistent(tmp_path / "pg", pg_url)
    pg, lite = SegmentIndex.open(tmp_path / "pg", db_url=pg_url), SegmentIndex.open(tmp_path / "lite")
    assert [f.path.rsplit("/", 1)[-1] for f in pg.store.failures()] == ["broken.png"]
    assert pg.store.common_folder() == lite.store.common_folder()
    assert pg.stats()["bytes_db"] > 0 and lite.stats()["bytes_db"] > 0  # the server's database counted, not 0
    for filters in ({}, {"path": "*/sub/*"}, {"per_image": True}, {"min_area": 200}):
        a, b = pg.query("a cat", 6, SearchFilters(**filters)), lite.query("a cat", 6, SearchFilters(**filters))
        assert a and [(h.image, h.bbox, round(h.score, 5)) for h in a] == [
            (h.image, h.bbox, round(h.score, 5)) for h in b
        ]
    pg.close()
    lite.close()
    result = runner.invoke(app, ["query", "a cat", "--db", str(tmp_path / "pg"), "--db-url", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(
        app, ["index", str(photos), "--db", str(tmp_path / "pg"), "--preset", "tiny", "--db-url", pg_url]
    )
    assert "0 images indexed" in again.output and "5 skipped" in again.output, again.output
    said = " ".join(again.output.split())  # the command suggested runs as printed (it lacked --db-url)
    assert f"`usesearch failures --db {tmp_path / 'pg'} --db-url 'postgresql" in said, again.output
    suggested = shlex.split(said.split("`usesearch ", 1)[1].split("`", 1)[0])
    listed = runner.invoke(app, suggested)
    assert suggested[0] == "failures" and listed.exit_code == 0 and "broken.png" in listed.output, listed.output
    other = runner.invoke(
        app, ["index", str(photos), "--db", str(tmp_path / "pg"), "--db-url", pg_url, "--factory", "HNSW32"]
    )
    said = " ".join(other.output.split())  # so do the writer's refusals (reindex, prune --force, audit)
    assert other.exit_code == 2 and f"`usesearch reindex --db {tmp_path / 'pg'} --db-url 'postgresql" in said, said


def test_kill_dash_nine_then_resume_on_postgresql_equals_one_clean_run(tmp_path, pg_url):
    photos = write_photos(tmp_path / "photos", NAMES + ("hubble_deep_field", "immunohistochemistry", "retina", "coins"))
    for i in range(2):  # more work so the kill lands mid-run
        write_photos(tmp_path / "photos" / f"copy{i}", NAMES[i:] + NAMES[:i])
    db = tmp_path / "db"
    code = (
        "import sys; from usesearch.indexer import IndexOptions, index_paths; "
        "index_paths([sys.argv[1]], sys.argv[2], IndexOptions(preset='tiny', masker='felzenszwalb', "
        "masker_options={'max_masks': 8}, db_url=sys.argv[3]))"
    )
    done = kill_when(run_python(code, photos, db, pg_url), lambda: done_images(pg_url), lambda n: n >= 3, start=0)
    resumed = index_paths([photos], db, IndexOptions(**OPTS, db_url=pg_url))
    assert resumed.skipped >= done >= 3 and resumed.failed == 0
    index_paths([photos], tmp_path / "clean", IndexOptions(**OPTS))
    assert segment_table(db, pg_url) == segment_table(tmp_path / "clean")
    assert_consistent(db, pg_url)


def test_server_restart_mid_run_is_retried_without_losing_or_doubling_an_image(tmp_path, pg_url, postgres_server):
    photos = write_photos(tmp_path / "photos", NAMES)
    restarted = []

    def restart_after_first(report, path, total):
        if report.done == 1 and not restarted:
            postgres_server.stop("immediate")  # every connection dies; writes wait for the server to return
            restarted.append(threading.Timer(2.0, postgres_server.start))
            restarted[0].start()

    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, db_url=pg_url), restart_after_first)
    restarted[0].join()
    assert report.done == len(NAMES) and report.failed == 0
    index_paths([photos], tmp_path / "clean", IndexOptions(**OPTS))
    assert segment_table(tmp_path / "db", pg_url) == segment_table(tmp_path / "clean")
    assert_consistent(tmp_path / "db", pg_url)


def test_unreachable_server_is_a_one_line_error(tmp_path, pg_url, monkeypatch):
    photos = write_photos(tmp_path / "photos", NAMES[:1])
    wrong = pg_url.replace("host=", "host=/nonexistent")
    result = CliRunner().invoke(
        app, ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--db-url", wrong]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "cannot reach the catalog database" in result.output and len(result.output.strip().splitlines()) == 1, (
        result.output
    )
    # An index of its own there, and the run naming no preset: the catalog is blamed, not
    # the default preset's weights (b16's, looked for when the catalog could not say tiny).
    built = CliRunner().invoke(
        app, ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--db-url", pg_url]
    )
    assert built.exit_code == 0, built.output
    again = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--db-url", wrong])
    assert again.exit_code == 2 and again.stderr.startswith("error: cannot reach the catalog database"), again.output


def test_a_database_or_role_the_server_refuses_is_said_as_the_urls_fault(tmp_path, postgres_server):
    """The server answered "database does not exist": it was said as "cannot reach",
    sending the user to look for an outage, from the CLI and from Python alike."""
    photos = write_photos(tmp_path / "photos", NAMES[:1])
    for url, why in (
        (postgres_server.url("no_such_db"), 'database "no_such_db" does not exist'),
        (postgres_server.url().replace("usesearch@", "no_such_role@"), 'role "no_such_role" does not exist'),
    ):
        result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--db-url", url])
        said = f"refused the connection ({why}): check --db-url"
        assert result.exit_code == 2 and said in result.output and len(result.output.strip().splitlines()) == 1, (
            result.output
        )
        with pytest.raises(UsesearchError, match="refused the connection") as caught:
            SegmentIndex.open(tmp_path / "db", db_url=url)
        assert "cannot reach" not in str(caught.value)


def test_a_catalog_url_is_postgresql_in_either_spelling_and_nothing_else(tmp_path):
    import pytest

    from usesearch.errors import UsesearchError
    from usesearch.indexer.catalog import server_url

    assert server_url("postgres://me@db/photos") == server_url("postgresql://me@db/photos")
    assert server_url("postgres://me@db/photos").startswith("postgresql+psycopg://")
    for url, why in (("mysql://me@db/photos", "the catalog goes in PostgreSQL"), ("::", "not a database URL")):
        with pytest.raises(UsesearchError, match=why):
            server_url(url)
    result = CliRunner().invoke(app, ["info", "--db", str(tmp_path), "--db-url", "mysql://me:secret@db/x"])
    assert result.exit_code == 2 and "PostgreSQL" in result.stderr and "secret" not in result.stderr
    # A SQLite URL was taken, and a read-only `info` made an empty catalog file there.
    elsewhere = tmp_path / "elsewhere.sqlite"
    result = CliRunner().invoke(app, ["info", "--db", str(tmp_path), "--db-url", f"sqlite:///{elsewhere}"])
    assert result.exit_code == 2 and "a SQLite catalog lives in its index folder" in result.stderr
    assert not elsewhere.exists()


def test_a_write_tried_again_after_its_reply_was_lost_leaves_faiss_as_the_catalog(tmp_path, pg_url, monkeypatch):
    """The server committed a photo whose content changed, and its reply was lost: the
    retry found the new record and reported only its own replacement as removed, and the
    old photo's vectors stayed in FAISS (written as in step with the catalog)."""
    from PIL import Image

    import usesearch.indexer.store as store_module

    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    options = IndexOptions(**OPTS, db_url=pg_url)
    index_paths([photos], tmp_path / "db", options)
    chelsea, coffee = next(photos.rglob("chelsea*")), next(photos.rglob("coffee*"))
    Image.open(coffee).rotate(90).save(chelsea)  # other content: its old segments are replaced
    real = store_module.while_reachable
    monkeypatch.setattr(store_module, "while_reachable", lambda attempt, url: (real(attempt, url), attempt())[1])
    report = index_paths([photos], tmp_path / "db", options)
    assert (report.done, report.skipped) == (1, 1)
    monkeypatch.setattr(store_module, "while_reachable", real)
    assert_consistent(tmp_path / "db", pg_url)


def test_a_server_outage_at_the_first_commit_is_waited_out(tmp_path, pg_url, postgres_server, monkeypatch):
    """The first commit reads the index's dimension, and the FAISS file's write its
    generations: an outage there ended the run at once, unlike one at any other write."""
    from usesearch.indexer import store as store_module

    photos = write_photos(tmp_path / "photos", NAMES[:2])
    real = store_module.Store.files
    restarted = []

    def files_after_an_outage(self):
        if self._files is None and not self.read_only and not restarted:
            postgres_server.stop("immediate")
            restarted.append(threading.Timer(2.0, postgres_server.start))
            restarted[0].start()
        return real(self)

    monkeypatch.setattr(store_module.Store, "files", files_after_an_outage)
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, db_url=pg_url))
    restarted[0].join()
    assert (report.done, report.failed) == (2, 0)
    assert_consistent(tmp_path / "db", pg_url)


def test_a_database_that_is_not_this_indexs_is_refused_before_any_table_is_made_or_altered(
    tmp_path, pg_url, postgres_server, monkeypatch
):
    """Another index's folder pointed at an empty database left nine empty tables there;
    another application's 'images' table had eight columns added to it, its row altered."""
    from sqlalchemy import inspect

    photos = write_photos(tmp_path / "photos", NAMES[:1])
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, db_url=pg_url))
    empty = postgres_server.new_database()
    with pytest.raises(IndexIdentityError, match="holds no index: use that index's catalog"):
        index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, db_url=empty))
    engine = create_engine(empty)
    assert inspect(engine).get_table_names() == []
    app_db = postgres_server.new_database()
    with create_engine(app_db).begin() as conn:
        conn.execute(text("CREATE TABLE images (id serial PRIMARY KEY, path text, fs_path bytea, status text)"))
        conn.execute(text("INSERT INTO images (path, status) VALUES ('mine.jpg', 'new')"))
    from usesearch.indexer import distributed, pipeline

    def loaded(options):
        raise AssertionError("refused only once the models had loaded (~30 s)")

    for run in (index_paths, distributed.index_paths_ray):  # (--ray: before Ray starts, too)
        with monkeypatch.context() as patched:
            patched.setattr(pipeline, "load_models", loaded)
            patched.setattr(distributed, "load_models", loaded)
            with pytest.raises(UsesearchError, match="holds tables of another application \\(images\\)") as refused:
                run([photos], tmp_path / "other", IndexOptions(**OPTS, db_url=app_db))
            assert str(refused.value).startswith("postgresql://")  # the catalog's URL, as every message names it
    with pytest.raises(UsesearchError, match="^postgresql://.* is not a usesearch index"):  # (its bare name before)
        SegmentIndex.open(tmp_path / "other", db_url=app_db)
    columns = [c["name"] for c in inspect(create_engine(app_db)).get_columns("images")]
    assert columns == ["id", "path", "fs_path", "status"]


def test_a_password_is_never_shown_and_a_malformed_url_is_said_so():
    from usesearch.indexer.catalog import server_url, shown_url

    assert shown_url("postgresql://me@db/photos?password=BAD&sslmode=require") == (
        "postgresql://me@db/photos?sslmode=require"
    )
    assert "pw" not in shown_url("postgresql://me:pw@db/photos")
    # The store's own spelling shown as the user's: lock and pairing errors gave this one
    assert shown_url("postgresql+psycopg://me@/photos?host=%2Ftmp%2Fsock") == "postgresql://me@/photos?host=/tmp/sock"
    for url, why in (
        ("postgresql://me:p@db:notaport/photos", "not a database URL"),
        ("postgresql+psycopg2://me@db/photos", "usesearch reaches PostgreSQL with psycopg"),
    ):
        with pytest.raises(UsesearchError, match=why):
            server_url(url)


def test_segment_ids_past_32_bits_on_postgresql_and_an_older_catalog_widened(tmp_path, pg_url):
    """PostgreSQL held segment ids in 32 bits: ids are never reused, and once an archive's
    runs had used 2**31 of them every commit failed. New catalogs hold 64-bit ids, and
    an older one is widened at its first writable open."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    options = IndexOptions(**OPTS, db_url=pg_url)
    index_paths([photos], tmp_path / "db", options)
    engine = create_engine(pg_url)

    def id_type() -> str:
        with engine.connect() as conn:
            query = "select data_type from information_schema.columns where table_name='segments' and column_name='id'"
            return conn.execute(text(query)).scalar()

    try:
        assert id_type() == "bigint"
        with engine.begin() as conn:  # as an older usesearch made it, its ids near the end
            conn.execute(text("alter table segments alter column id type integer"))
            sequence = conn.execute(text("select pg_get_serial_sequence('segments', 'id')")).scalar()
            conn.execute(text(f"alter sequence {sequence} as integer restart with {2**31 - 5}"))
        write_photos(photos, ("coffee", "rocket"))
        index_paths([photos], tmp_path / "db", options)  # (before: "nextval: reached maximum value")
        assert id_type() == "bigint"
        with engine.connect() as conn:
            assert conn.execute(text("select max(id) from segments")).scalar() > 2**31
    finally:
        engine.dispose()
    assert_consistent(tmp_path / "db", pg_url)
    ix = SegmentIndex.open(tmp_path / "db", db_url=pg_url)
    assert max(h.segment_id for h in ix.query("a rocket", 200)) > 2**31
    ix.close()


def test_a_suggested_command_is_quoted_for_the_shell_and_carries_no_password():
    """A masked password (``***``) in a suggested command would be sent as the password,
    and a folder with a space was two arguments."""
    from sqlalchemy import make_url

    from usesearch.indexer.folder import index_flags

    flags = index_flags(
        "/data/my index", "postgresql+psycopg://ana:s3cret@db.example/photos?password=x&sslmode=require"
    )
    assert "s3cret" not in flags and "***" not in flags and "password" not in flags
    parsed = shlex.split(flags)
    assert parsed[:3] == ["--db", "/data/my index", "--db-url"] and len(parsed) == 4
    url = make_url(parsed[3])
    assert (url.username, url.password, url.host, url.database) == ("ana", None, "db.example", "photos")
    assert dict(url.query) == {"sslmode": "require"}
    assert index_flags("idx", None) == "--db idx" and index_flags("idx", "sqlite:///x") == "--db idx"


def test_the_commands_deep_messages_suggest_carry_the_catalogs_url(tmp_path, pg_url, caplog):
    """The rebuild's warning, a short embedding file's repair and a folder holding no
    index yet suggested `--db DIR` alone (or the words DIR): run as printed on a
    PostgreSQL index, each was refused for want of its --db-url."""
    import logging

    from usesearch.indexer.folder import FAISS_FILE
    from usesearch.indexer.store import Store

    db, flags = tmp_path / "db", f"--db {tmp_path / 'db'} --db-url 'postgresql"
    index_paths([write_photos(tmp_path / "photos", NAMES[:2])], db, IndexOptions(**OPTS, db_url=pg_url))
    (db / FAISS_FILE).write_bytes(b"not a FAISS file")
    with caplog.at_level(logging.WARNING, logger="usesearch"), SegmentIndex.open(db, db_url=pg_url) as index:
        assert index.query("a cat", k=1)  # rebuilt from the catalog
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"`usesearch reindex {flags}" in said, said
    chunk = next((db / "embeddings").glob("chunk-*.f16"))
    chunk.write_bytes(chunk.read_bytes()[:64])
    (db / FAISS_FILE).unlink()
    with pytest.raises(UsesearchError, match=f"`usesearch index PATHS {flags}.*--repair`"):
        SegmentIndex.open(db, db_url=pg_url)
    empty = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with empty.begin() as connection:  # the catalog's tables made, no index recorded yet (a first run's start)
        connection.execute(text("delete from index_info"))
    empty.dispose()
    Store(pg_url, folder=db).close()
    with pytest.raises(UsesearchError, match=f"holds no index yet; run `usesearch index PATH {flags}"):
        SegmentIndex.open(db, db_url=pg_url)


def test_a_verdict_on_a_read_only_postgresql_catalog_says_so(pg_url):
    """A read-only PostgreSQL catalog raises no OperationalError (SQLSTATE 25006 is an
    InternalError): the web app's verdict was a 500, "the index database failed"."""
    import pytest
    from sqlalchemy import create_engine

    from usesearch.errors import IndexReadOnlyError
    from usesearch.indexer.audit import reviews
    from usesearch.indexer.catalog import server_url

    reader = create_engine(server_url(pg_url), connect_args={"options": "-c default_transaction_read_only=on"})
    try:
        with pytest.raises(IndexReadOnlyError, match="this index is read-only here"):
            reviews.mark(reader, "swapped", "val:1", "ok")
    finally:
        reader.dispose()


def test_a_writers_read_of_the_index_info_waits_out_an_outage(tmp_path, pg_url, postgres_server):
    """`reindex`'s calibration opens the index and reads its info: a restart there ended
    the command at once ("database: connection is bad"), unlike one at any write."""
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", NAMES[:1])
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, db_url=pg_url))
    store = open_store(tmp_path / "db", pg_url)
    postgres_server.stop("immediate")
    restart = threading.Timer(2.0, postgres_server.start)
    restart.start()
    try:
        assert store.info().preset == "tiny"
    finally:
        restart.join()
        store.close()


def test_a_copy_of_the_folder_that_wrote_to_the_catalog_leaves_the_other_refused_until_repaired(tmp_path, pg_url):
    """`cp -r` of a folder on a PostgreSQL catalog (the same index id) took writes, and
    the original's searches then failed ("holds 3245 rows; the database refers to row
    3308"); writing through the original too would have put other vectors at those rows."""
    import shutil

    from usesearch.indexer.identity import WRITER_FILE

    photos = write_photos(tmp_path / "photos", NAMES[:2])
    original, copy = tmp_path / "db", tmp_path / "copy"
    options = IndexOptions(**OPTS, db_url=pg_url)
    index_paths([sorted(photos.rglob("*.png"))[0]], original, options)
    shutil.copytree(original, copy)
    # A writer that changes no embedding row (a prune removing nothing) leaves the copy as good as the original.
    from usesearch.indexer.maintenance import prune

    assert prune(original, None, options).images_removed == 0
    assert index_paths([photos], copy, options).done >= 1  # the copy was up to date: it writes
    with pytest.raises(IndexIdentityError, match="last changed through another folder holding this index") as refused:
        index_paths([photos], original, options)
    assert str(copy) in str(refused.value) and "--repair" in str(refused.value)
    repaired = index_paths([photos], original, replace(options, repair=True))
    assert repaired.failed == 0
    assert_consistent(original, pg_url)
    with pytest.raises(IndexIdentityError, match="last changed through another folder"):
        index_paths([photos], copy, options)  # now the copy is the one behind
    # A writer killed between its folder's token and the catalog's: the next run goes on.
    tokens = original / "embeddings" / WRITER_FILE
    tokens.write_text(tokens.read_text() + "\nkilled-before-the-catalog\n")
    assert index_paths([photos], original, options).failed == 0


def test_a_wait_for_an_unreachable_server_says_so_every_20_s_not_every_try(monkeypatch, caplog):
    """Eleven "retrying in 8.0 s" lines came before the run's one error line."""
    import time

    from sqlalchemy.exc import OperationalError

    from usesearch.errors import CatalogUnavailableError
    from usesearch.indexer.catalog import while_reachable

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # (tenacity's naps: counted, not waited)

    def down():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with caplog.at_level("WARNING"), pytest.raises(CatalogUnavailableError, match="is unreachable"):
        while_reachable(down, "postgresql://usesearch@/photos?host=/nowhere")
    said = [r.message for r in caplog.records if "retrying in" in r.message]
    assert 2 <= len(said) <= 4 and said[0] == "catalog database unreachable, retrying in 0.5 s", said
    assert said[1].endswith(" s of 60)") and "(waited 2" in said[1], said
