"""A photo's id is never handed to another photo: on SQLite the highest id of a
photo pruned or changed came back for the next new one, and what was keyed by it (an
audit verdict on a leak, ``images:ID``; an export's image id) answered for the new
photo. An older catalog is upgraded without losing a segment."""

import sqlite3

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from tests.helpers import OPTS, assert_consistent, segment_table, write_photos
from tests.test_index_integrity import change_photo
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, index_paths
from usesearch.indexer.folder import DB_FILE, db_url_for
from usesearch.indexer.records import ImageRecord
from usesearch.indexer.store import Store

runner = CliRunner()


def image_ids(db) -> dict[str, int]:
    with sqlite3.connect(db / DB_FILE) as con:
        return {path.rsplit("/", 1)[-1]: i for i, path in con.execute("SELECT id, path FROM images")}


def images_sql(db) -> str:
    with sqlite3.connect(db / DB_FILE) as con:
        return con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'images'").fetchone()[0]


def test_a_photo_after_the_last_one_pruned_or_changed_gets_an_id_never_used(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee", "rocket"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    first = image_ids(db)
    last = max(first, key=first.get)
    next(photos.rglob(last)).unlink()
    result = runner.invoke(app, ["prune", "--db", str(db)])
    assert result.exit_code == 0 and "1 image removed" in result.output, result.output
    write_photos(tmp_path / "photos", ("chelsea",))
    index_paths([photos], db, IndexOptions(**OPTS))
    second = image_ids(db)
    assert second["chelsea.png"] > max(first.values()), (first, second)
    # A changed photo is a new record: its id is new too, even as the highest one.
    change_photo(photos, "chelsea")
    index_paths([photos], db, IndexOptions(**OPTS))
    assert image_ids(db)["chelsea.png"] > second["chelsea.png"]
    assert_consistent(db)


def test_an_older_catalog_is_made_to_never_reuse_ids_past_those_a_verdict_names(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    before = segment_table(db)
    old_sql = images_sql(db).replace("AUTOINCREMENT", "")
    with sqlite3.connect(db / DB_FILE) as con:
        # As an older usesearch's upgrade left it: the images table made again without
        # AUTOINCREMENT (ids reused) after renaming the old one away, which pointed the
        # segments' foreign key at that name (every new photo failed); and a verdict on a
        # leak between photos of which the highest (57) was removed before this upgrade.
        con.executescript(f"""
            PRAGMA foreign_keys=OFF;
            ALTER TABLE images RENAME TO images_old;
            DROP INDEX ix_images_sha256; DROP INDEX ix_images_path;
            {old_sql};
            INSERT INTO images SELECT * FROM images_old;
            DROP TABLE images_old;
            CREATE INDEX ix_images_sha256 ON images (sha256);
            CREATE INDEX ix_images_path ON images (path);
            DELETE FROM sqlite_sequence WHERE name = 'images';
        """)
        con.execute(
            "CREATE TABLE IF NOT EXISTS audit_reviews (kind VARCHAR(32), item VARCHAR(512), verdict VARCHAR(8), "
            "reviewed DATETIME, PRIMARY KEY (kind, item))"
        )
        con.execute(
            "INSERT INTO audit_reviews (kind, item, verdict, reviewed) VALUES ('leaks', 'images:2,57', 'ok', '2026')"
        )
    assert "AUTOINCREMENT" not in images_sql(db)
    with sqlite3.connect(db / DB_FILE) as con:
        assert "images_old" in con.execute("SELECT sql FROM sqlite_master WHERE name = 'segments'").fetchone()[0]
    write_photos(tmp_path / "photos", ("rocket",))
    index_paths([photos], db, IndexOptions(**OPTS))
    assert "AUTOINCREMENT" in images_sql(db)
    assert image_ids(db)["rocket.png"] == 58
    # The upgrade's connection goes back to the pool as it was: a store's transaction that
    # fails after it still rolls back whole (it had committed statement by statement).
    with sqlite3.connect(db / DB_FILE) as con:  # without AUTOINCREMENT again, the key left whole
        con.executescript(f"""
            PRAGMA foreign_keys=OFF;
            CREATE TABLE images_v1 ({images_sql(db).split("(", 1)[1].replace("AUTOINCREMENT", "")};
            INSERT INTO images_v1 SELECT * FROM images;
            DROP TABLE images;
            ALTER TABLE images_v1 RENAME TO images;
        """)
    store = Store(db_url_for(db, None), folder=db)  # a writable open: upgraded on a pooled connection
    assert "AUTOINCREMENT" in images_sql(db)
    try:
        with pytest.raises(RuntimeError), store.sessions.begin() as s:
            s.execute(update(ImageRecord).values(attempts=99))
            raise RuntimeError("a write that fails half-way")
    finally:
        store.close()
    with sqlite3.connect(db / DB_FILE) as con:
        assert con.execute("SELECT max(attempts) FROM images").fetchone()[0] < 99
    assert [row for row in segment_table(db) if row[0] != "rocket.png"] == before
    assert_consistent(db)
