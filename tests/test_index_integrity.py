"""The index stays usable and truthful: read-only indexes, indexes an older usesearch
made, files that are not files, names that are not UTF-8, symlinks that leave the
folder, a full disk, bad arguments (its answers through index types without
remove_ids, a foreign vector file and filters are test_index_answers.py's)."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths
from usesearch.indexer.folder import DB_FILE, FAISS_FILE

runner = CliRunner()


def change_photo(photos, name="chelsea"):
    target = next(photos.rglob(f"{name}.png"))
    pixels = np.asarray(Image.open(target)).copy()
    pixels[: pixels.shape[0] // 2] = 255 - pixels[: pixels.shape[0] // 2]
    Image.fromarray(pixels).save(target)


# -- 3. read-only indexes -----------------------------------------------------------------
def _as_nobody() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import usesearch"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def test_read_commands_work_on_a_read_only_index(small_index):
    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("needs a non-root user (setpriv to nobody) who can run this Python")
    _, db = small_index
    archive = tempfile.mkdtemp(prefix="usesearch-ro-")
    try:
        os.chmod(archive, 0o755)
        ro = os.path.join(archive, "db")
        shutil.copytree(db, ro)
        home = os.path.join(archive, "home")
        os.mkdir(home)
        os.chmod(home, 0o777)
        for dirpath, dirnames, filenames in os.walk(ro, topdown=False):
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o444)
            os.chmod(dirpath, 0o555)
        env = {
            **os.environ,
            "HOME": home,
            "USESEARCH_HOME": home,
            "XDG_CACHE_HOME": home,
            "HF_HOME": home,
            "PYTHONPATH": os.getcwd(),
        }
        commands = [["query", "a cat", "-k", "3", "--json"], ["info"], ["failures"]]
        # One process runs the three (a start each cost 4 s): each command's exit code, printed last.
        code = (
            "import json, sys; from usesearch.cli.app import app\n"
            "codes = []\n"
            "for command in json.loads(sys.argv[1]):\n"
            "    try:\n"
            "        codes.append(app([*command, '--db', sys.argv[2]], prog_name='usesearch', standalone_mode=False))\n"
            "    except SystemExit as exc:\n"
            "        codes.append(exc.code)\n"
            "print(json.dumps(codes))\n"
        )
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code, json.dumps(commands), ro],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        codes = json.loads(done.stdout.strip().splitlines()[-1])
        assert [c or 0 for c in codes] == [0, 0, 0] and '"segment_id": ' in done.stdout, (codes, done.stderr[-2000:])
        assert sorted(os.listdir(ro)) == sorted(os.listdir(db))  # no side files left
    finally:
        for dirpath, _, _ in os.walk(archive):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(archive)


def test_readers_never_create_tables_in_a_database_that_is_not_an_index(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    import sqlite3

    sqlite3.connect(folder / DB_FILE).execute("create table notes (text)").connection.commit()
    for command in (["info"], ["query", "x"], ["failures"]):
        result = runner.invoke(app, [*command, "--db", str(folder)])
        assert result.exit_code == 2 and "not a usesearch index" in result.output, result.output
    tables = {
        r[0] for r in sqlite3.connect(folder / DB_FILE).execute("select name from sqlite_master where type='table'")
    }
    assert tables == {"notes"}


# -- 7. only regular files, bounded ---------------------------------------------------------
def test_fifos_devices_and_oversized_files_are_recorded_not_read(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    os.mkfifo(photos / "b.png")
    os.symlink("/dev/zero", photos / "z.jpg")
    big = Image.new("RGB", (600, 600))
    big.save(photos / "big.bmp")
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            report=index_paths(
                [photos], tmp_path / "db", IndexOptions(**OPTS, max_bytes=(photos / "big.bmp").stat().st_size - 1)
            )
        )
    )
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "indexing blocked on a FIFO or an endless file"
    failed = {os.path.basename(p): reason for p, reason in result["report"].failures}
    assert set(failed) == {"b.png", "z.jpg", "big.bmp"}
    assert "not a regular file" in failed["b.png"] and "not a regular file" in failed["z.jpg"]
    assert "exceeds the limit" in failed["big.bmp"] and result["report"].done == 1


# -- 8. names that are not UTF-8 --------------------------------------------------------------
def test_non_utf8_names_reopen_exactly_and_never_collide(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    raw = os.path.join(os.fsencode(photos), b"caf\xe9.png")
    literal = photos / "caf\\xe9.png"  # the display form of the other name, as a real name
    Image.fromarray(np.full((40, 40, 3), (200, 30, 30), np.uint8)).save(raw)
    Image.fromarray(np.full((40, 40, 3), (30, 30, 200), np.uint8)).save(literal)
    db = tmp_path / "db"
    first = index_paths([photos], db, IndexOptions(**OPTS))
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert (first.done, again.done, again.skipped) == (2, 0, 2)
    ix = SegmentIndex.open(db)
    hits = ix.query("a red square", k=50, filters=SearchFilters(per_image=True))
    assert {h.file for h in hits} == {raw, os.fsencode(str(literal))}
    for hit in hits:
        with open(hit.file, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "sheet.png"
    result = runner.invoke(app, ["query", "a red square", "--db", str(db), "--show", str(out)])
    assert result.exit_code == 0 and out.is_file(), result.output
    from fastapi.testclient import TestClient

    from usesearch.indexer.web import create_app

    client = TestClient(create_app(ix))
    for hit in hits:  # the web app opens both files: no 410 for the name that is not UTF-8
        assert client.get(f"/api/segments/{hit.segment_id}/tile.png").status_code == 200


def test_index_made_by_older_usesearch_is_upgraded_without_losing_segments(small_index):
    import sqlite3

    photos, db = small_index
    ix = SegmentIndex.open(db)
    before = ix.query("a cat", k=5)
    blobs = [(v.astype(np.float32).tobytes(), int(i)) for ids, vecs in ix.store.embeddings() for i, v in zip(ids, vecs)]
    ix.close()
    shutil.rmtree(db / "embeddings")
    con = sqlite3.connect(db / DB_FILE)
    # Embeddings as float32 blobs in the segments table, as before the embedding files.
    con.execute("ALTER TABLE segments ADD COLUMN embedding BLOB")
    con.executemany("UPDATE segments SET embedding = ? WHERE id = ?", blobs)
    con.execute("ALTER TABLE segments DROP COLUMN vec_chunk")
    con.execute("ALTER TABLE segments DROP COLUMN vec_row")
    con.commit()
    # The previous schema: images keyed by a unique display path, no fs_path, no checksum.
    con.executescript("""
        PRAGMA foreign_keys=OFF;
        CREATE TABLE images_v1 (id INTEGER NOT NULL PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 VARCHAR(64),
            width INTEGER, height INTEGER, status VARCHAR(8) NOT NULL, error_class VARCHAR(128), error_message TEXT,
            attempts INTEGER NOT NULL, updated DATETIME NOT NULL);
        INSERT INTO images_v1 SELECT id, path, sha256, width, height, status, error_class, error_message,
            attempts, updated FROM images;
        DROP TABLE images; ALTER TABLE images_v1 RENAME TO images;
        ALTER TABLE index_info DROP COLUMN vectors_sha256;
        DROP TABLE index_identity;
    """)
    con.close()
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert again.skipped == 4 and again.done == 0
    assert SegmentIndex.open(db).query("a cat", k=5) == before
    columns = {r[1] for r in sqlite3.connect(db / DB_FILE).execute("PRAGMA table_info(segments)")}
    assert "embedding" not in columns and {"vec_chunk", "vec_row"} <= columns and (db / "embeddings").is_dir()
    # The upgraded index takes new photos (the segments' foreign key still names "images").
    write_photos(photos / "later", ("camera",))
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 1


def test_an_old_index_opened_to_be_read_is_upgraded_first_unless_an_indexer_is_writing(tmp_path):
    import sqlite3

    from tests.test_index_scale import synthetic_index
    from usesearch.errors import IndexUpgradeNeededError, first_line
    from usesearch.indexer.folder import writer_lock

    data = synthetic_index(tmp_path / "db", n=300, dim=16)
    con = sqlite3.connect(tmp_path / "db" / DB_FILE)
    con.execute("ALTER TABLE segments DROP COLUMN stability_score")  # a column an older usesearch lacked
    con.commit()
    con.close()
    with writer_lock(tmp_path / "db"):  # an indexer writing: no upgrade under its feet, one line
        with pytest.raises(IndexUpgradeNeededError) as refused:
            SegmentIndex.open(tmp_path / "db")
    assert "waits for the indexer" in first_line(refused.value) and "\n" not in str(refused.value)
    hits = SegmentIndex.open(tmp_path / "db").search_vector(data[3], 3)  # a reader's open upgrades it
    assert hits[0].segment_id == 4
    columns = {r[1] for r in sqlite3.connect(tmp_path / "db" / DB_FILE).execute("PRAGMA table_info(segments)")}
    assert "stability_score" in columns


# -- 9. symlinks stay inside the roots ----------------------------------------------------------
def test_walk_never_leaves_the_folders_it_was_given(tmp_path, caplog):
    """A symlinked folder leading outside is not followed, and said once (an archive's
    photos behind a link to another disk went missing without a word)."""
    outside = write_photos(tmp_path / "outside", ("coffee",))
    photos = write_photos(outside / "photos", ("astronaut",))
    os.symlink("..", photos / "up")
    os.symlink(photos / "sub" if (photos / "sub").exists() else photos, photos / "same")  # inside: fine
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    ix = SegmentIndex.open(tmp_path / "db")
    with ix.store.sessions() as s:
        from usesearch.indexer.records import ImageRecord

        paths = [r.path for r in s.query(ImageRecord)]
    assert paths and all(p.startswith(str(photos) + "/") for p in paths)
    assert not any("coffee" in p for p in paths) and report.failed == 0
    said = [r.getMessage() for r in caplog.records if "lead outside the folders named" in r.getMessage()]
    assert said == [
        f"1 symlinked folder(s) lead outside the folders named, not followed: {photos / 'up'} -> "
        f"{outside}; name them to index them"
    ], said


def test_a_photo_named_and_under_a_folder_named_too_is_one_photo_not_its_own_copy(tmp_path):
    """`index photos photos/coffee.png` walked coffee.png twice and said it was "skipped
    as a copy of a photo indexed under another path", naming itself. A hard link, another
    path to the same file, is still a copy."""
    from usesearch.io.files import walk

    photos = write_photos(tmp_path / "photos", ("coffee", "astronaut"))
    os.link(photos / "coffee.png", photos / "link.png")
    found = [f.fs_path for f in walk([photos, photos / "coffee.png", str(photos / "sub") + "/"])]
    assert sorted(os.path.basename(p) for p in found) == ["astronaut.png", "coffee.png", "link.png"], found
    report = index_paths([photos, photos / "coffee.png"], tmp_path / "db", IndexOptions(**OPTS))
    assert report.done == 2 and [os.path.basename(p) for p, _ in report.copies] == ["link.png"], report


# -- 10. disk full --------------------------------------------------------------------------------
def test_disk_full_is_one_line_and_leaves_no_temporary_file(small_index, monkeypatch):
    photos, db = small_index
    write_photos(photos, ("coins",))
    from sqlalchemy.exc import OperationalError

    import usesearch.indexer.store

    def full(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database or disk is full"))

    monkeypatch.setattr(usesearch.indexer.store.Store, "save_images", full)
    result = runner.invoke(app, ["index", str(photos), "--db", str(db.parent / "db2"), "--preset", "tiny"])
    assert result.exit_code == 2
    assert (
        "disk full" in result.output
        and "Traceback" not in result.output
        and len(result.output.strip().splitlines()) <= 2
    )
    monkeypatch.undo()

    import usesearch.indexer.vector_files

    class FullDisk:  # the temp file fills the disk after its first bytes
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, chunk):
            if self.written:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(chunk)
            return self.f.write(chunk[:1])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(
        usesearch.indexer.vector_files,
        "open",
        lambda p, mode="r": FullDisk(open(p, mode)) if "w" in mode else open(p, mode),
        raising=False,
    )
    result = runner.invoke(app, ["reindex", "--db", str(db)])
    assert result.exit_code == 2 and "disk full" in result.output and str(db / FAISS_FILE) in result.output, (
        result.output
    )
    assert not [p for p in db.iterdir() if p.name.endswith(".tmp")]  # no temporary file left beside it
    monkeypatch.undo()
    assert SegmentIndex.open(db).query("a coin", k=3)  # nothing lost
    # A write killed outright (no cleanup ran) left its temporary file: the next write takes it away.
    killed = db / f".{FAISS_FILE}.99999.tmp"
    killed.write_bytes(b"half of a FAISS file")
    assert runner.invoke(app, ["reindex", "--db", str(db)]).exit_code == 0
    assert not killed.exists() and (db / FAISS_FILE).is_file()


# -- 11. bad arguments: one line, non-zero exit -------------------------------------------------
def test_bad_arguments_are_one_line_errors(small_index, tmp_path):
    photos, db = small_index
    new_db = tmp_path / "never"
    (tmp_path / "train.json").write_text("{}")  # a labelled dataset's file given as a photo
    cases = [
        (["index", str(tmp_path / "train.json"), "--db", str(new_db)], "a JSON file, not a photo: a labelled"),
        (["index", str(tmp_path / "nonexistent"), "--db", str(new_db), "--preset", "tiny"], "no such file or folder"),
        (["index", str(photos), "--db", str(photos / "astronaut.png"), "--preset", "tiny"], "is a file"),
        (["index", str(photos), "--db", "", "--preset", "tiny"], "'--db': is empty"),
        (["query", "a cat", "--db", ""], "'--db': is empty"),  # (it read the current folder)
        (["reindex", "--db", str(db), "--factory", ""], "'--factory': is empty"),  # (it rebuilt the same kind)
        # FAISS built it; its first add failed in FAISS's words, "unexpected RuntimeError", exit 1.
        (["reindex", "--db", str(db), "--factory", "IVF4,Flat,Refine(Flat)"], "a Refine over an IVF takes no"),
        (["query", "a cat", "--db", str(db), "--export-coco", str(tmp_path)], "is a folder"),
        (["similar", "99999999999999999999", "--db", str(db)], "no segment with id"),
        (["reindex", "--db", str(new_db)], "no index at"),
        # An IVF of no list was built and recorded, and every later search failed in FAISS's words.
        (["reindex", "--db", str(db), "--factory", "IVF0,Flat"], "an IVF needs at least one list"),
        # FAISS's words without its C++ frame ("Error in std::unique_ptr<faiss::Index> ... index_factory.cpp:1228").
        (["reindex", "--db", str(db), "--factory", "Flatt"], "invalid FAISS factory string 'Flatt': could not parse"),
        (["reindex", "--db", str(db), "--factory", "PQ5"], "'PQ5': The dimension of the vector (d) should be a"),
        # A graph of fewer than 2 links: FAISS built it, and adding to it aborted the process.
        (["reindex", "--db", str(db), "--factory", "HNSW0"], "'HNSW0': a graph (HNSW M) needs 2 links"),
        (["reindex", "--db", str(db), "--factory", "IVF4_HNSW1,Flat"], "a graph (HNSW M) needs 2 links"),
        # An NSG of 2 links: the first add never ended, nor did any command on the folder it left; of more,
        # the next run's add failed ("NSG does not support incremental addition").
        (["index", str(photos), "--db", str(new_db), "--preset", "tiny", "--factory", "NSG2"], "cannot grow"),
        (["reindex", "--db", str(db), "--factory", "NSG32"], "an NSG graph cannot grow with the index"),
        # FAISS builds HNSW over PQ with L2 whatever the metric asked: every open refused the file
        # it wrote as another metric and rebuilt it (minutes a query at 40k segments).
        (["reindex", "--db", str(db), "--factory", "HNSW16,PQ4x4"], "FAISS builds it with L2 distances, not the"),
        (["reindex", "--db", str(db), "--factory", "LSH"], "'LSH': it computes L2 distances only"),
        # An IDMap (not IDMap2) lists no ids: its folder was made, then refused by every later command.
        (["index", str(photos), "--db", str(new_db), "--preset", "tiny", "--factory", "IDMap,Flat"], "leave it out"),
        (["reindex", "--db", str(db), "--factory", "IDMap,Flat"], "an IDMap keeps no list of its ids"),
        (["reindex", "--db", str(db), "--shard-size", "99999999999999999999"], "--shard-size"),
        (["reindex", "--db", str(db), "--shard-size", "5"], "5 segments a shard: give 0 (one shard) or at least 1,000"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        # click's own refusals come in a box whose lines wrap a long path: read it unwrapped.
        unboxed = " ".join(result.output.translate(str.maketrans("│╭╮╰╯─", "      ")).split())
        assert message in unboxed and "Traceback" not in result.output, (args, result.output)
    assert not new_db.exists()
    assert runner.invoke(app, ["query", "a cat", "--db", str(db)]).exit_code == 0  # refused, nothing recorded
    shutil.move(db / FAISS_FILE, tmp_path / "moved")
    (db / FAISS_FILE).mkdir()
    result = runner.invoke(app, ["query", "a cat", "--db", str(db)])
    assert result.exit_code == 2 and "is not a file" in result.output


def test_an_index_made_with_a_factory_refused_since_says_how_to_give_it_another(small_index):
    """An index made with HNSW over PQ before it was refused: its file could never be
    used (FAISS built it with L2), and every open rebuilt it again."""
    import sqlite3

    _, db = small_index
    with sqlite3.connect(db / "segments.sqlite") as catalog:
        catalog.execute("update index_info set factory = 'HNSW16,PQ4x4'")
    (db / FAISS_FILE).unlink()  # (its file, of another metric, was refused at every open)
    result = runner.invoke(app, ["query", "a cat", "--db", str(db)])
    assert result.exit_code == 2 and "FAISS builds it with L2 distances" in result.output, result.output
    unboxed = "".join(result.output.split())
    assert f"`usesearchreindex--db{db}--factoryauto`givesthisindexanotherkind" in unboxed
    assert runner.invoke(app, ["reindex", "--db", str(db), "--factory", "auto"]).exit_code == 0
    assert runner.invoke(app, ["query", "a cat", "--db", str(db)]).exit_code == 0


def test_truncated_image_error_names_the_file(tmp_path):
    from usesearch.io.files import decode

    buf = tempfile.SpooledTemporaryFile()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "JPEG")
    buf.seek(0)
    data = buf.read()
    with pytest.raises(Exception) as caught:
        decode(data[: len(data) // 3], "photos/cut.jpg")
    assert "photos/cut.jpg" in str(caught.value) and "BytesIO" not in str(caught.value)
