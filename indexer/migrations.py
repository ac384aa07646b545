"""Bringing an index made by an older usesearch up to date, once, on its first
writable open. Each step says what it does in one line; none loses a segment.

- images keyed by their display path -> keyed by the exact path bytes (``fs_path``);
- float32 embeddings as blobs in the database -> float16 embedding files beside it;
- new columns that have a default or may be NULL are added, with the indexes declared on them;
- indexes declared since are made, and those they supersede dropped.
"""

from __future__ import annotations

import logging
import os
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
    if "images" in tables and not _has_column(engine, "images", "fs_path"):
        _images_fs_path(engine)
    if "segments" in tables and _has_column(engine, "segments", "embedding"):
        _embeddings_to_files(engine, folder)
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
    """Older indexes keyed images by their display path (unique). Rebuild the table
    with the byte-exact key, SQLite's documented way (new table, copy, drop, rename)
    with foreign keys off so no segment is cascaded away."""
    from .records import Base

    if engine.dialect.name != "sqlite":
        raise UsesearchError("this index was made by an older usesearch; index into a new --db")
    log.warning("upgrading this index's images table to byte-exact paths (once)")
    images = Base.metadata.tables["images"]
    # On the raw connection with explicit BEGIN/COMMIT: pysqlite would otherwise
    # run the DDL outside any transaction, and the pragma must precede BEGIN.
    raw = engine.raw_connection()
    try:
        con = raw.driver_connection
        if con is None:
            raise UsesearchError("cannot upgrade this index: its database connection is closed")
        con.isolation_level = None
        con.execute("PRAGMA foreign_keys=OFF")
        con.execute("BEGIN")
        try:
            con.execute("ALTER TABLE images RENAME TO images_old")
            for index in images.indexes:
                con.execute(f"DROP INDEX IF EXISTS {index.name}")
            con.execute(str(CreateTable(images).compile(engine)))
            for index in images.indexes:
                con.execute(str(CreateIndex(index).compile(engine)))
            columns = [r[1] for r in con.execute("PRAGMA table_info(images_old)")]
            shared = [c for c in columns if c in images.c and c != "fs_path"]
            rows = con.execute(f"SELECT {', '.join(shared)} FROM images_old").fetchall()
            con.executemany(
                f"INSERT INTO images ({', '.join(shared)}, fs_path) VALUES ({', '.join('?' * (len(shared) + 1))})",
                [(*row, os.fsencode(row[shared.index("path")])) for row in rows],
            )
            con.execute("DROP TABLE images_old")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("PRAGMA foreign_keys=ON")
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
