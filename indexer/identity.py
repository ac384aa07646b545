"""A catalog belongs to one index folder, and one writer at a time.

The catalog (SQLite in the folder, or a PostgreSQL database) points at rows of the
folder's embedding files by (chunk, row); paired with another folder's files those
pointers name other photos' vectors, and a rebuild from them answers with the wrong
segments. So each index has an id, written in the catalog (``index_identity``) and
in the folder (``embeddings/index-id``) and compared on every open: a mismatch is
refused in one line naming both, never "rebuilt".

An index made before ids is given one on its first writable open (the folder's file
first, then the catalog: a kill between the two leaves a folder id and an unmarked
catalog, which the next open adopts). A catalog on a PostgreSQL server is also
locked by its writer (a session advisory lock, released when the connection ends,
kill -9 included): the folder's lock cannot stop a second indexer that names another
folder for the same catalog.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import inspect, select, text

from usesearch.errors import CatalogLockedError, IndexIdentityError
from usesearch.io.atomic import remove_orphan_temporaries, write_atomic

from .catalog import index_flags, shown_url
from .embeddings import FOLDER, EmbeddingFiles
from .records import IndexIdentity, IndexWriter, SegmentRecord

ID_FILE = "index-id"
WRITER_FILE = "writer-tokens"  # in the folder: the tokens of its last writers, newest last
TOKENS_KEPT = 8
LOCK_KEY = 0x7573_6573_6561_7263  # "usesearc": one writer per PostgreSQL database
SCHEMA_KEY = 0x7573_6573_6561_7273  # "usesears": one process at a time making or upgrading its tables
log = logging.getLogger(__name__)


def check(store, assign: bool) -> None:
    """Refuse a catalog paired with another index's folder; with ``assign`` (a writer
    holding the locks) give a new or older index its id."""
    if assign and (store.folder / FOLDER).is_dir():
        # A kill between a write of these files and its rename (a new index killed at its
        # first write) left the temporary file through every later run: the writer takes it back.
        remove_orphan_temporaries(store.folder / FOLDER, lambda name: name in (ID_FILE, WRITER_FILE))
    id_file = store.folder / FOLDER / ID_FILE
    folder_id = id_file.read_text().strip() if id_file.is_file() else None
    catalog_id = _catalog_id(store)
    where = _describe(store)
    if catalog_id is not None and folder_id is not None:
        if catalog_id != folder_id:
            raise IndexIdentityError(
                f"{where} belongs to index {catalog_id}, but {store.folder.absolute()} holds index {folder_id}: "
                "its segments point into another folder's embedding files; use the --db folder it was "
                "made with, or another catalog"
            )
        return
    has_segments, has_chunks = _has_segments(store), bool(EmbeddingFiles(store.folder / FOLDER, 1).chunks())
    if catalog_id is not None:  # an unmarked folder
        if has_segments or has_chunks:
            raise IndexIdentityError(
                f"{where} belongs to index {catalog_id}, and {store.folder.absolute()} is not its folder "
                f"({'it holds other embedding files' if has_chunks else 'its embedding files are not there'}); "
                "use the --db folder it was made with, or a new catalog"
            )
        if assign:
            _write_file(id_file, catalog_id)
        return
    if folder_id is not None:  # an unmarked catalog
        if has_chunks and not has_segments and _has_identity_table(store):
            raise IndexIdentityError(
                f"{store.folder.absolute()} holds index {folder_id}'s embedding files, and {where} is not its "
                "catalog; use that index's catalog (--db-url), or a new --db folder"
            )
        if assign:
            if has_segments:
                log.warning(
                    "%s: adopting %s's id for its catalog (a run stopped while giving an older index its id)",
                    store.folder,
                    folder_id,
                )
            _write_catalog(store, folder_id)
        return
    if assign:  # a new index, or one made before ids
        new = str(uuid.uuid4())
        _write_file(id_file, new)
        _write_catalog(store, new)


def check_writer(store, adopt: bool = False) -> None:
    """A catalog on a server, written through this folder or one that is a copy of it
    (``cp -r``, an rsync'd replica; the same index id), refused where the other changed
    the embedding files last: this folder's then lack the rows it added, and writing
    here would put other vectors at rows the catalog already points at. A writer that
    changes the files takes a new token first (``take_writer_token``), so a copy that
    only read, or wrote nothing there (a prune removing nothing, a calibration), leaves
    the other folder as it was. ``adopt`` (``--repair``, which embeds the missing rows
    again): this folder takes the catalog up again now. SQLite's catalog is a file in
    the folder, copied with it: nothing to check."""
    if store.engine.dialect.name != "postgresql":
        return
    with store.sessions() as s:
        last = s.get(IndexWriter, 1)
    if adopt:
        take_writer_token(store)
    elif last is not None and last.token not in _tokens(store):
        here = Path(last.folder) == store.folder.absolute()
        raise IndexIdentityError(
            f"{_describe(store)} had its embedding rows last changed through "
            + (
                f"this folder ({last.at:%Y-%m-%d %H:%M} UTC), by a writer whose token it no longer keeps: it "
                "was put back from an older copy since"
                if here
                else f"another folder holding this index ({last.folder} on {last.host}, {last.at:%Y-%m-%d %H:%M} "
                f"UTC): {store.folder.absolute()} is a copy of it or an older state"
            )
            + ", and its embedding files lack what was added since; use the folder written last, or take this "
            f"one up again with `usesearch index PATHS {index_flags(store.folder, store.url)} --repair` "
            "(its missing rows embedded anew)"
        )


def take_writer_token(store) -> None:
    """Before a writer first changes the embedding files: a new token, kept in the folder
    first, then in the catalog (a kill between the two leaves the catalog's token among
    the folder's). PostgreSQL only (``check_writer``)."""
    if store.engine.dialect.name != "postgresql":
        return
    import datetime as dt
    import socket

    token = str(uuid.uuid4())
    _write_file(store.folder / FOLDER / WRITER_FILE, "\n".join([*_tokens(store), token][-TOKENS_KEPT:]))
    with store.sessions.begin() as s:
        s.merge(
            IndexWriter(
                id=1,
                token=token,
                folder=str(store.folder.absolute()),
                host=socket.gethostname(),
                at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
            )
        )


def _tokens(store) -> list[str]:
    path = store.folder / FOLDER / WRITER_FILE
    return path.read_text().split() if path.is_file() else []


def refuse_a_new_catalog(store) -> None:
    """Before a writable open makes its tables in a database that holds no index: refused
    where the folder is another index's, with embedding files (the check after them,
    ``check``, left nine empty tables in the wrong database)."""
    id_file = store.folder / FOLDER / ID_FILE
    if id_file.is_file() and EmbeddingFiles(store.folder / FOLDER, 1).chunks():
        raise IndexIdentityError(
            f"{store.folder.absolute()} holds index {id_file.read_text().strip()}'s embedding files, and "
            f"{_describe(store)} holds no index: use that index's catalog (--db-url), or a new --db folder"
        )


def lock_catalog(store):
    """Hold the catalog for this writer (PostgreSQL; SQLite's catalog is a file in the
    folder, which the folder's lock covers). Returns the connection holding it."""
    if store.engine.dialect.name != "postgresql":
        return None
    connection = store.engine.connect()
    if not connection.execute(text("select pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar():
        connection.close()
        raise CatalogLockedError(
            f"another indexer is writing to {_describe(store)}; wait for it to finish "
            "(one writer per catalog, whatever its --db folder)"
        )
    connection.commit()  # the lock is the session's, not the transaction's
    return connection


def kept_catalog_lock(store, connection):
    """The writer's lock before each write: a PostgreSQL lock lives as long as its
    session, and a server restart ends both while the pool reconnects the writes
    quietly. The lock's session is checked (one round trip) and the lock taken again
    where it is gone, refused in one line if another writer took it meanwhile."""
    if connection is None:
        return None
    try:
        connection.exec_driver_sql("SELECT 1")
        return connection
    except Exception:  # noqa: BLE001 - a dropped session, whatever the driver calls it
        pass
    try:
        connection.close()
    except Exception:  # noqa: BLE001
        pass
    try:
        return lock_catalog(store)  # while the server is down: OperationalError, retried by the caller
    except CatalogLockedError as exc:  # said as a run stopped mid-way, not refused at its start
        raise CatalogLockedError(
            f"{exc}; this run lost its database session (a server restart, a dropped connection) and with it "
            "the lock, and stopped: what it committed is kept, and a run after the other one ends goes on from there"
        ) from None


@contextmanager
def schema_lock(store, poll_s: float = 0.5) -> Iterator[None]:
    """The tables made or upgraded by one process at a time (PostgreSQL): two first runs
    on a new database both ran ``CREATE TABLE``, and the second failed in the server's
    words ("duplicate key value violates unique constraint pg_type_typname_nsp_index")
    before the writer's lock could refuse it in ours. Waited for, said once: it is held
    for as long as the tables take (an older catalog's upgrade: minutes). Its connection
    is closed, not pooled, after: a lock left on it would outlive the work. SQLite's
    catalog is the folder's, under the folder's lock."""
    if store.engine.dialect.name != "postgresql":
        yield
        return
    connection = store.engine.connect()
    try:
        said = False
        while not connection.execute(text("select pg_try_advisory_lock(:key)"), {"key": SCHEMA_KEY}).scalar():
            connection.commit()
            if not said:
                log.warning("waiting for another usesearch process making or upgrading %s's tables", _describe(store))
                said = True
            time.sleep(poll_s)
        connection.commit()  # the session's lock, not the transaction's
        yield
    finally:
        connection.invalidate()  # the session ends, and its lock with it, whatever happened above
        connection.close()


def unlock_catalog(connection) -> None:
    if connection is not None:
        try:
            connection.execute(text("select pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        finally:
            connection.close()


def _catalog_id(store) -> str | None:
    if not _has_identity_table(store):
        return None
    with store.sessions() as s:
        return s.scalar(select(IndexIdentity.folder_id))


def _has_identity_table(store) -> bool:
    return "index_identity" in set(inspect(store.engine).get_table_names())


def _has_segments(store) -> bool:
    with store.sessions() as s:
        return s.scalar(select(SegmentRecord.id).limit(1)) is not None


def _write_catalog(store, folder_id: str) -> None:
    with store.sessions.begin() as s:
        s.merge(IndexIdentity(id=1, folder_id=folder_id))


def _write_file(path: Path, folder_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, folder_id + "\n", sync_folder=True)  # the rename itself must survive a power loss


def _describe(store) -> str:
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        return f"the catalog {url.database}"
    return f"the catalog {shown_url(url.render_as_string(hide_password=False))}"
