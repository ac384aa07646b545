"""Bringing an index made by an older usesearch up to date, once, on its first
writable open. Each step says what it does in one line; none loses a segment.

- images keyed by their display path -> keyed by the exact path bytes (``fs_path``);
- SQLite's images table made AUTOINCREMENT, so that no photo's id is ever reused;
- a segments table an older upgrade left naming a dropped images table, repaired;
- float32 embeddings as blobs in the database -> float16 embedding files beside it;
- new columns that have a default or may be NULL are added, with the indexes declared on them;
- indexes declared since are made, and those they supersede dropped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import BigInteger, ColumnDefault, Engine, Integer, inspect, literal, text
from sqlalchemy.schema import CreateIndex, CreateTable

from usesearch.errors import UsesearchError

log = logging.getLogger(__name__)
BATCH = 50_000


def missing_columns(engine: Engine) -> list[str]:
    from .records import Base

    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    missing = [
        f"{table.name}.{column.name}"
        for table in Base.metadata.sorted_tables
        if table.name in tables
        for column in table.columns
        if column.name not in {c["name"] for c in inspector.get_columns(table.name)}
    ]
    if "segments" in tables and _has_column(engine, "segments", "embedding"):
        missing.append("segments.embedding (moves to embedding files)")
    return missing


def _has_column(engine: Engine, table: str, column: str) -> bool:
    return column in {c["name"] for c in inspect(engine).get_columns(table)}


def refuse_foreign_tables(tables: set[str], where: str) -> None:
    """A database whose tables of our names are another application's (no ``index_info``,
    which every index has had): refused before any is altered or added to."""
    from .records import Base

    ours = sorted(tables & {table.name for table in Base.metadata.sorted_tables})
    if ours and "index_info" not in tables:
        raise UsesearchError(
            f"{where} holds tables of another application ({', '.join(ours[:3])}) and no usesearch index: "
            "give the catalog a database of its own"
        )


def upgrade(engine: Engine, folder: Path) -> None:
    tables = set(inspect(engine).get_table_names())
    sqlite_images = "images" in tables and engine.dialect.name == "sqlite"
    if sqlite_images:
        _segments_point_at_images(engine)
    if "images" in tables and not _has_column(engine, "images", "fs_path"):
        _images_fs_path(engine)
    if "segments" in tables and _has_column(engine, "segments", "embedding"):
        _embeddings_to_files(engine, folder)
    if sqlite_images:
        _images_ids_never_reused(engine)  # (made so by the byte-exact-paths rebuild above, where it ran)
    _add_plain_columns(engine)
    if "segments" in tables and engine.dialect.name == "postgresql":
        _segment_ids_64bit(engine)


def _segment_ids_64bit(engine: Engine) -> None:
    """PostgreSQL's segment ids made 32-bit by an older usesearch widened to 64: at
    2**31 ids (never reused) every commit failed ("nextval: reached maximum value")."""
    column = next(c for c in inspect(engine).get_columns("segments") if c["name"] == "id")
    if not isinstance(column["type"], Integer) or isinstance(column["type"], BigInteger):
        return
    log.warning("widening this catalog's segment ids to 64 bits (once: the segments table is rewritten)")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE segments ALTER COLUMN id TYPE bigint")
        sequence = conn.exec_driver_sql("SELECT pg_get_serial_sequence('segments', 'id')").scalar()
        if sequence:
            conn.exec_driver_sql(f"ALTER SEQUENCE {sequence} AS bigint")


def _add_plain_columns(engine: Engine) -> None:
    from .records import Base

    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            scalar = isinstance(column.default, ColumnDefault) and column.default.is_scalar
            default = column.default.arg if isinstance(column.default, ColumnDefault) and scalar else None
            if default is None and not column.nullable:
                raise UsesearchError(
                    f"this index was made by an older usesearch (table {table.name} lacks {column.name}); "
                    "index into a new --db"
                )
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
            if default is not None:  # rendered by the dialect: a boolean is 1 in SQLite, true in PostgreSQL
                ddl += (
                    f" DEFAULT {literal(default, column.type).compile(engine, compile_kwargs={'literal_binds': True})}"
                )
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)  # not text(): a colon in a default is no bind parameter
    _add_missing_indexes(engine)


# Indexes an older usesearch made that a declared one now covers (its leading columns).
SUPERSEDED_INDEXES = {"ix_segments_source": "ix_segments_source_image"}


def _add_missing_indexes(engine: Engine) -> None:
    """Indexes declared on columns an older table lacked, or declared since
    (``create_all`` makes a table's indexes only with the table); then the indexes
    they supersede dropped."""
    from .records import Base

    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            continue
        present = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                log.warning("adding the index %s to this index's catalog (once)", index.name)
                with engine.begin() as conn:
                    conn.execute(CreateIndex(index))
        for old, new in SUPERSEDED_INDEXES.items():
            if old in present and new in {i.name for i in table.indexes}:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {old}")


def _images_fs_path(engine: Engine) -> None:
    """Older indexes keyed images by their display path (unique): the table rebuilt
    with the byte-exact key."""
    if engine.dialect.name != "sqlite":
        raise UsesearchError("this index was made by an older usesearch; index into a new --db")
    log.warning("upgrading this index's images table to byte-exact paths (once)")
    _rebuild_images(engine, floor=_highest_reviewed_image_id(engine))


def _segments_point_at_images(engine: Engine) -> None:
    """The byte-exact-paths upgrade of usesearch before this one renamed the old images
    table away, and SQLite pointed the segments' foreign key at that name: such an index
    answered queries but refused every new photo ("no such table: main.images_old").
    Renaming the images table to that name and back points the key home again (SQLite
    rewrites every reference to a renamed table; no row is read or written)."""
    with engine.connect() as conn:
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'segments'").scalar()
    if sql is None or "images_old" not in sql:
        return
    log.warning("repairing this index's segments table, which an older upgrade left naming a dropped table (once)")
    with _sqlite_transaction(engine) as con:  # both or neither: "images" never missing
        con.execute("ALTER TABLE images RENAME TO images_old")
        con.execute("ALTER TABLE images_old RENAME TO images")


def _images_ids_never_reused(engine: Engine) -> None:
    """SQLite gives a new row the highest id + 1 unless the table is AUTOINCREMENT: a
    photo added after the last one was pruned or changed took its id, and an audit
    verdict on a leak keyed ``images:ID`` (or an export's image id) answered for it.
    The table rebuilt AUTOINCREMENT, past every id a verdict names too (the highest one
    removed before this upgrade is known nowhere else)."""
    with engine.connect() as conn:
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'images'").scalar()
    if sql is None or "AUTOINCREMENT" in sql.upper():
        return
    log.warning("upgrading this index's images table so that no photo's id is ever reused (once)")
    _rebuild_images(engine, floor=_highest_reviewed_image_id(engine))


def _highest_reviewed_image_id(engine: Engine) -> int:
    if "audit_reviews" not in inspect(engine).get_table_names():
        return 0
    with engine.connect() as conn:
        items = conn.exec_driver_sql("SELECT item FROM audit_reviews WHERE item LIKE 'images:%'").scalars()
        ids = [int(i) for item in items for i in item.removeprefix("images:").split(",") if i.strip().isdigit()]
    return max(ids, default=0)


def _rebuild_images(engine: Engine, floor: int = 0) -> None:
    """The images table made again as declared, every row copied with its id, SQLite's
    documented way (new table, copy, drop, rename). ``fs_path`` is made from the display
    path where the old table lacks it; ``floor``: the least id no new photo may take."""
    from .records import Base

    images = Base.metadata.tables["images"]
    with _sqlite_transaction(engine) as con:
        # A new table renamed into place, never the old one renamed away: SQLite would
        # point the segments' foreign key at the old name, and every insert then fails.
        made = str(CreateTable(images).compile(engine)).replace("CREATE TABLE images ", "CREATE TABLE images_new ", 1)
        con.execute(made)
        columns = [r[1] for r in con.execute("PRAGMA table_info(images)")]
        shared = [c for c in columns if c in images.c]
        if "fs_path" in shared:
            con.execute(f"INSERT INTO images_new ({', '.join(shared)}) SELECT {', '.join(shared)} FROM images")
        else:
            rows = con.execute(f"SELECT {', '.join(shared)} FROM images").fetchall()
            con.executemany(
                f"INSERT INTO images_new ({', '.join(shared)}, fs_path) VALUES ({', '.join('?' * (len(shared) + 1))})",
                [(*row, os.fsencode(row[shared.index("path")])) for row in rows],
            )
        con.execute("DROP TABLE images")  # its indexes with it
        con.execute("ALTER TABLE images_new RENAME TO images")
        for index in images.indexes:
            con.execute(str(CreateIndex(index).compile(engine)))
        # The copied rows set the sequence to their highest id; a verdict's may be higher.
        con.execute("DELETE FROM sqlite_sequence WHERE name IN ('images', 'images_new')")
        con.execute(
            "INSERT INTO sqlite_sequence (name, seq) "
            "VALUES ('images', max(?, (SELECT coalesce(max(id), 0) FROM images)))",
            (floor,),
        )


@contextmanager
def _sqlite_transaction(engine: Engine) -> Iterator[sqlite3.Connection]:
    """SQLite's connection itself, in one transaction with foreign keys off (so that no
    segment is cascaded away while a table is remade): on the raw connection with
    explicit BEGIN/COMMIT, since pysqlite would otherwise run DDL outside any
    transaction, and the pragma must precede BEGIN."""
    raw = engine.raw_connection()
    try:
        con = raw.driver_connection
        if con is None:
            raise UsesearchError("cannot upgrade this index: its database connection is closed")
        # The connection goes back to the pool, and the store's sessions reuse it: its
        # isolation level restored, or every later transaction would commit statement by
        # statement (no BEGIN), its rollbacks undoing nothing.
        isolation = con.isolation_level
        con.isolation_level = None
        con.execute("PRAGMA foreign_keys=OFF")
        con.execute("BEGIN")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("PRAGMA foreign_keys=ON")
            con.isolation_level = isolation
    finally:
        raw.close()


def _embeddings_to_files(engine: Engine, folder: Path) -> None:
    """float32 blobs -> float16 embedding files, in id order, then the blob column
    goes. A kill part-way leaves the blobs in place (and unreferenced rows in the
    files): the next open starts again."""
    from .embeddings import FOLDER, EmbeddingFiles

    with engine.connect() as conn:
        dim = conn.execute(text("SELECT dim FROM index_info")).scalar()
        total = conn.execute(text("SELECT count(*) FROM segments")).scalar() or 0
    if dim is None:
        raise UsesearchError("this index has segments but no identity; index into a new --db")
    log.warning("moving %d embeddings out of the database into %s (once)", total, folder / FOLDER)
    files = EmbeddingFiles(folder / FOLDER, int(dim))
    with engine.begin() as conn:
        for column in ("vec_chunk", "vec_row"):
            if not _has_column(engine, "segments", column):
                conn.execute(text(f"ALTER TABLE segments ADD COLUMN {column} INTEGER NOT NULL DEFAULT -1"))
        last = 0
        while True:
            rows = conn.execute(
                text("SELECT id, embedding FROM segments WHERE id > :last ORDER BY id LIMIT :n"),
                {"last": last, "n": BATCH},
            ).all()
            if not rows:
                break
            vectors = np.stack([np.frombuffer(blob, np.float32) for _, blob in rows])
            chunks, positions = files.append(vectors)
            conn.execute(
                text("UPDATE segments SET vec_chunk = :c, vec_row = :r WHERE id = :i"),
                [{"c": int(c), "r": int(r), "i": int(i)} for (i, _), c, r in zip(rows, chunks, positions)],
            )
            last = rows[-1][0]
        conn.execute(text("ALTER TABLE segments DROP COLUMN embedding"))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # give the blobs' space back to the file system
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM"))
