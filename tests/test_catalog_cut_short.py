"""A catalog cut short while it was being made (SQLite makes each table in a
transaction of its own: a disk that fills up between two leaves some): said in one
line by every reader, and finished by the next `index` run, not left for the user to
delete by hand."""

import sqlite3

from typer.testing import CliRunner

from tests.helpers import OPTS, segment_table, write_photos
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, index_paths
from usesearch.indexer.folder import DB_FILE

runner = CliRunner()


def said(result) -> str:
    return " ".join(result.output.split())


def test_a_catalog_cut_short_is_said_by_readers_and_finished_by_the_next_run(tmp_path):
    """`info`, `query` and `index` all failed with "database: no such table: segments"."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    whole = tmp_path / "whole"
    index_paths([photos], whole, IndexOptions(**OPTS))
    made = sqlite3.connect(whole / DB_FILE)
    schema = dict(made.execute("select name, sql from sqlite_master where type = 'table'").fetchall())
    made.close()
    cut = tmp_path / "cut"
    cut.mkdir()
    early = sqlite3.connect(cut / DB_FILE)
    for table in ("index_info", "images"):  # (made first; the disk filled before the rest)
        early.execute(schema[table])
    early.commit()
    early.close()
    for command in (["info"], ["query", "a cat"]):
        result = runner.invoke(app, [*command, "--db", str(cut)])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, said(result)
        assert "was cut short while it was being made (it has no segments table)" in said(result)
        assert f"`usesearch index PHOTOS --db {cut}` makes the rest" in said(result)
    # Killed before any table was made (its first write): said the same, not "not a usesearch index";
    # a file of another program's tables still is.
    for name, tables in (("bare", []), ("other", ["create table notes (x)"])):
        (tmp_path / name).mkdir()
        made = sqlite3.connect(tmp_path / name / DB_FILE)
        for table in tables:
            made.execute(table)
        made.commit()
        made.close()
    bare, other = (
        " ".join(runner.invoke(app, ["info", "--db", str(tmp_path / n)]).output.split()) for n in ("bare", "other")
    )
    assert "was cut short while it was being made" in bare and "is not a usesearch index" in other, (bare, other)
    assert index_paths([photos], cut, IndexOptions(**OPTS)).done == 2  # (the run's own first read refused it too)
    assert runner.invoke(app, ["info", "--db", str(cut)]).exit_code == 0
    assert segment_table(cut) == segment_table(whole)


def test_a_disk_full_while_the_catalog_is_made_names_it_without_the_drivers_words(tmp_path, monkeypatch):
    """It said "disk full: (sqlite3.OperationalError) database or disk is full"."""
    from sqlalchemy.exc import OperationalError

    import usesearch.indexer.store as store

    def full(*args, **kwargs):
        raise OperationalError("CREATE TABLE segments", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(store.Base.metadata, "create_all", full)
    photos = write_photos(tmp_path / "photos", ("chelsea",))
    result = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"])
    assert result.exit_code == 2 and "sqlite3" not in result.output, said(result)
    assert f"disk full: cannot write {tmp_path / 'db' / DB_FILE}; free space and run it again" in said(result)


def test_a_catalog_that_does_not_answer_a_check_after_the_run_is_no_failed_run(tmp_path, monkeypatch):
    """A server restarting just after a run's last commit: its check for gone photos
    failed the run (exit 2, after "finished"), its work all committed."""
    from sqlalchemy.exc import OperationalError

    from usesearch.indexer import leftovers

    class ConnectionFailed(Exception):  # (as psycopg raises it: no SQLSTATE)
        __module__ = "psycopg"

    def restarting(*args, **kwargs):
        raise OperationalError("SELECT", {}, ConnectionFailed("connection is bad: server closed the connection"))

    photos = write_photos(tmp_path / "photos", ("chelsea",))
    monkeypatch.setattr(leftovers, "files_gone", restarting)
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--masker", "felzenszwalb"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "finished: 1 image indexed" in said(result)
    assert "the catalog database did not answer a check after the run (" in said(result)
    assert "the run's work is committed" in said(result)
    assert segment_table(tmp_path / "db")

    def damaged(*args, **kwargs):  # a SQLite catalog's damage is no server restarting: not hidden
        raise OperationalError("SELECT", {}, Exception("database disk image is malformed"))

    monkeypatch.setattr(leftovers, "files_gone", damaged)
    assert runner.invoke(app, args).exit_code != 0
