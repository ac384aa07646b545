"""What an index folder is: the files in it, the argument that names it, the catalog
it uses and the lock its one writer holds."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from usesearch.errors import (
    BadArgumentError,
    IndexIdentityError,
    IndexLockedError,
    IndexUpgradeNeededError,
    UsesearchError,
    first_few,
)
from usesearch.io.locks import live_holder, one_writer
from usesearch.io.own_folders import why_unwritable

from .catalog import index_flags as index_flags  # (said by many messages: imported from here)
from .catalog import scope_args as scope_args
from .catalog import shown_url
from .embeddings import FOLDER
from .identity import ID_FILE
from .records import ImageRecord, IndexIdentity
from .store import Store

DB_FILE, FAISS_FILE, LOCK_FILE = "segments.sqlite", "vectors.faiss", "writer.lock"


def db_url_for(db_dir: Path, db_url: str | None) -> str:
    """The catalog's URL: ``--db-url``'s PostgreSQL server, else the index folder's SQLite
    file. A SQLite URL given is refused: a catalog apart from its folder's embeddings
    and FAISS files is one nothing keeps in step (and a read-only command made its file)."""
    if db_url and db_url.strip().lower().startswith("sqlite"):
        raise UsesearchError(
            f"--db-url {shown_url(db_url)}: a SQLite catalog lives in its index folder (--db); "
            "--db-url names a PostgreSQL server (postgresql://USER@HOST/DB)"
        )
    return db_url or f"sqlite:///{db_dir / DB_FILE}"


def check_db_dir(db_dir: str | os.PathLike) -> Path:
    """An index folder argument that can be one: not empty, not an existing file."""
    if not os.fspath(db_dir).strip():
        raise UsesearchError("--db is empty: name the index folder")
    db_dir = Path(db_dir)
    if db_dir.is_symlink() and not db_dir.exists():
        raise UsesearchError(
            f"--db {db_dir} is a symbolic link to {os.readlink(db_dir)}, which does not exist: "
            "create that folder, or name another"
        )
    if db_dir.exists() and not db_dir.is_dir():
        raise UsesearchError(f"--db {db_dir} is a file; an index is a folder (give a new or existing index folder)")
    return db_dir


def refuse_shared_folder(db_dir: Path, walked: Sequence[str | os.PathLike] = ()) -> None:
    """A new index's folder that is not its own: one holding photos, or a folder
    ``walked`` for photos (photos only in its subfolders): its files would lie among
    them (and the next walk of that folder would meet the index, and skip all of it);
    one inside another usesearch folder (an index's ``embeddings/``: its files mixed
    with that index's), or holding another index in a subfolder. An existing index's
    folder is its own."""
    from usesearch.io.files import IMAGE_SUFFIXES
    from usesearch.io.own_folders import OUTPUT_MARKS, holding_folder, sure_kind

    if any((db_dir / mark).exists() for mark in OUTPUT_MARKS["an index"]):
        return
    real = Path(os.path.realpath(db_dir))
    own = f"give the index a folder of its own, e.g. {real}.use"  # (`--db .` would read "..use")
    held = holding_folder(db_dir)
    if held is not None:  # (beside that folder: its own ``{real}.use`` lay in it too, refused in turn)
        beside = Path(held[1]).parent / f"{real.name}.use"
        if beside == Path(held[1]):  # (--db photos.use/photos: that very index)
            beside = beside.with_name(f"{real.name}-2.use")
        raise UsesearchError(
            f"--db {db_dir} lies in {held[0]} ({held[1]}), whose files usesearch writes: "
            f"give the index a folder of its own, e.g. {beside}"
        )
    if not db_dir.is_dir():
        return
    with os.scandir(db_dir) as entries:
        listed = [(e.name, e.is_dir()) for e in entries]
    photo = next((name for name, _ in listed if Path(name).suffix.lower() in IMAGE_SUFFIXES), None)
    if photo is not None:
        raise UsesearchError(f"--db {db_dir} holds photos ({photo}): {own}")
    for name, is_dir in listed:  # one level down: a new index made around another (each searched as the other)
        if is_dir and sure_kind(db_dir / name) == "an index":
            raise UsesearchError(f"--db {db_dir} holds another index ({db_dir / name}): {own}")
    for path in walked:
        walked_real = Path(os.path.realpath(path))
        if walked_real == real:
            raise UsesearchError(f"--db {db_dir} is the folder being indexed: {own}")
        if real in walked_real.parents:
            raise UsesearchError(f"--db {db_dir} holds {os.fspath(path)}, which is being indexed: {own}")


def check_paths(paths: list[str | os.PathLike], db_dir: str | os.PathLike) -> Path:
    """The photos named and the index folder, checked before anything loads or the
    folder is made: a typo costs a second, not the seconds the models take to import."""
    if isinstance(paths, (str, bytes, os.PathLike)):  # a str was walked as its characters: "no such file: t"
        raise BadArgumentError(
            f"paths is a list of files and folders; got the one path {os.fsdecode(paths)!r}: give [it]"
        )
    db_dir = check_db_dir(db_dir)
    missing = [os.fspath(p) for p in paths if not os.path.lexists(p)]
    if missing:  # before the lock: a typo must not leave an empty index folder behind
        raise UsesearchError(f"no such file or folder: {first_few(missing, 1)}")
    labels = [os.fsdecode(p) for p in paths if os.fsdecode(p).lower().endswith(".json") and os.path.isfile(p)]
    if labels:  # (it was read as a photo and failed, and the index folder was made)
        raise UsesearchError(
            f"{labels[0]} is a JSON file, not a photo: a labelled dataset's annotations are indexed with its photos' "
            f"folder, `usesearch index IMAGES --coco {labels[0]}` (Python: `index_coco`)"
        )
    refuse_shared_folder(db_dir, paths)  # for every caller: the CLI, the Python API, Ray and labelled datasets
    check_writable(db_dir, "index", "adds the photos' segments to it")
    return db_dir


def check_catalog_kind(db_dir: Path, db_url: str | None) -> None:
    """Refuse an index folder opened with another kind of catalog than its own, before
    a catalog is made: opening made an empty SQLite file in a PostgreSQL-catalogued
    folder (or empty tables in the server's database) that the identity check then
    refused, and left behind."""
    id_file = db_dir / FOLDER / ID_FILE
    if not id_file.is_file():
        return  # a new folder, or one from before ids: the identity check decides
    if db_url is None and not (db_dir / DB_FILE).exists():
        raise IndexIdentityError(
            f"{db_dir} holds index {id_file.read_text().strip()}'s embedding files but no {DB_FILE}: its catalog "
            f"is on a PostgreSQL server; give its --db-url (or, had the folder a {DB_FILE}, restore it)"
        )
    if db_url is not None and (db_dir / DB_FILE).is_file() and _holds_an_index(db_dir / DB_FILE):
        raise IndexIdentityError(
            f"{db_dir}'s catalog is its own {DB_FILE}: leave out --db-url (a catalog on a server goes with "
            "an index folder of its own)"
        )


def _holds_an_index(sqlite_file: Path) -> bool:
    """Whether a folder's SQLite file is a catalog (an id, or photos), not the empty one
    that opening a server-catalogued folder without --db-url made before that was refused."""
    import sqlite3

    try:
        with closing(sqlite3.connect(f"{sqlite_file.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {name for (name,) in con.execute("select name from sqlite_master where type = 'table'")}
            return any(
                con.execute(f"select exists(select 1 from {table})").fetchone()[0]  # noqa: S608 - our table names
                for table in (IndexIdentity.__tablename__, ImageRecord.__tablename__)
                if table in tables
            )
    except sqlite3.Error:  # damaged, or not SQLite at all: taken for the folder's own, as before
        return True


def check_index_at(db_dir: str | os.PathLike, db_url: str | None = None) -> Path:
    """The folder of an existing index, or a clear error where there is none: what a
    command checks before it loads a model library (seconds) to read one."""
    db_dir = check_db_dir(db_dir)
    check_catalog_kind(db_dir, db_url)
    if db_url is None and not (db_dir / DB_FILE).is_file():
        raise UsesearchError(f"no index at {db_dir} (no {DB_FILE}); {_what_instead(db_dir)}")
    return db_dir


def _what_instead(db_dir: Path) -> str:
    """What to do where ``db_dir`` holds no index: name the index one folder down (the
    demo's folder, ``usesearch-demo/db-b16``), say what the folder is (a curated dataset:
    the suggested `index --db` of it is refused), else index into it."""
    from usesearch.io.own_folders import OUTPUT_MARKS, holding_folder

    holder = live_holder(db_dir / LOCK_FILE)
    if holder is not None and holder != str(os.getpid()):  # its models load before its catalog is made
        return f"an indexer (pid {holder}) is making one there now: search it once its first photos are in"
    held = holding_folder(db_dir / DB_FILE)  # (an index's own ``embeddings/``: `index --db` of it is refused)
    if held is not None:
        kind, folder = held
        return f"it lies in {kind} ({folder}): give --db " + (folder if kind == "an index" else "an index's folder")
    for kind, marks in OUTPUT_MARKS.items():
        if kind != "an index" and any((db_dir / mark).exists() for mark in marks):
            return f"it holds {kind}: give --db an index's folder"
    try:  # (the entries' types from the listing: a folder of a million photos costs no stat each)
        with os.scandir(db_dir) as entries:
            listed = [(Path(e.path), e.is_dir()) for e in entries]
    except OSError:  # missing or unreadable: nothing inside to name
        listed = []
    inside = sorted(path for path, is_dir in listed if is_dir and (path / DB_FILE).is_file())
    if len(inside) == 1:
        return f"the index in it is {inside[0]}: give --db {inside[0]}"
    if inside:  # (the first alone was named as if it were the only one)
        return f"it holds {len(inside)} indexes ({first_few(inside)}): give --db the one meant"
    from usesearch.io.files import IMAGE_SUFFIXES

    photo = next((path.name for path, is_dir in listed if not is_dir and path.suffix.lower() in IMAGE_SUFFIXES), None)
    if photo is not None:  # (`index --db` of it is refused: a photo folder is no index's)
        made = (
            f"`usesearch index {shlex.quote(os.fspath(db_dir))} --db {shlex.quote(os.path.realpath(db_dir) + '.use')}`"
        )
        return f"it holds photos ({photo}): give --db the index's folder ({made} makes one)"
    return f"run `usesearch index PATH {index_flags(db_dir, None)}` first"


def open_store(db_dir: Path, db_url: str | None = None, read_only: bool = False) -> Store:
    """The store of an existing index; a clear error where there is none."""
    db_dir = check_index_at(db_dir, db_url)
    url = db_url_for(db_dir, db_url)
    try:
        return Store(url, read_only=read_only, folder=db_dir)
    except IndexUpgradeNeededError:
        if not os.access(db_dir, os.W_OK):
            raise
    # An index made by an older usesearch, opened to be read: upgraded first (the columns
    # added are cheap, none is lost), as its writer would, holding the writer's lock.
    try:
        with writer_lock(db_dir):
            Store(url, folder=db_dir).close()
    except IndexLockedError:
        raise IndexUpgradeNeededError(
            f"this index needs an upgrade, which waits for the indexer writing to {db_dir} to finish"
        ) from None
    return Store(url, read_only=True, folder=db_dir)


def check_writable(db_dir: Path, command: str, writes: str) -> None:
    """A folder this process cannot write refused in one line, before anything opens
    it to write (SQLite said "unable to open database file", the lock "writer.lock:
    Read-only file system"): ``usesearch {command}`` ``writes`` (what it writes there).
    A new index's folder: the nearest folder above it that is there, which would hold it."""
    refused = why_unwritable(db_dir)
    if refused is None:
        return
    there, where = Path(refused[0]), refused[1]
    if there != Path(os.path.abspath(db_dir)):
        raise UsesearchError(f"{there} {where}: `usesearch {command}` cannot make {db_dir} in it; give another --db")
    raise UsesearchError(
        f"{db_dir} {where}: `usesearch {command}` {writes}; `query`, `info` and `serve` read the index as it is"
    )


def refuse_a_foreign_catalog(db_url: str | None) -> None:
    """A server database holding another application's tables, refused before a new
    index's run loads its models (and starts Ray): its writer's open refused it after
    30 s of loading. (Unreachable: left to the writer's open, which waits it out.)"""
    if db_url is None:
        return
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import OperationalError

    from .catalog import server_url
    from .migrations import refuse_foreign_tables

    engine = create_engine(server_url(db_url), connect_args={"connect_timeout": 5})  # (a host that never answers)
    try:
        refuse_foreign_tables(set(inspect(engine).get_table_names()), shown_url(db_url))
    except OperationalError:
        pass
    finally:
        engine.dispose()


@contextmanager
def writer_lock(db_dir: Path) -> Iterator[None]:
    """The folder's one writer (``io.locks.one_writer``), refused with ``IndexLockedError``."""

    def refusal(holder: str) -> Exception:
        return IndexLockedError(  # (a prune's or a reindex's too: "another indexer" named an index run alone)
            f"another usesearch process (pid {holder}: index, prune, reindex or calibrate) is writing to {db_dir}; "
            "wait for it to finish"
        )

    with one_writer(db_dir / LOCK_FILE, refusal):
        yield


def refuse_if_written(db_dir: Path) -> None:
    """Another indexer writing to ``db_dir`` refused now, before this run loads its models:
    it was refused at its first write, ~30 s of loading later (the lock is taken for an
    instant; a folder this process cannot write is left to the checks that say so)."""
    if (Path(db_dir) / LOCK_FILE).exists() and os.access(db_dir, os.W_OK):
        try:
            with writer_lock(db_dir):
                pass
        except PermissionError:  # (another user's lock file: the writer's own take says so)
            pass


def remove_if_bare(db_dir: Path) -> None:
    """A folder a refused writer made, holding nothing but its lock: gone, as if never made
    (called with the lock held: a writer after it makes both anew)."""
    try:
        if os.listdir(db_dir) == [LOCK_FILE]:
            (db_dir / LOCK_FILE).unlink()
            db_dir.rmdir()
    except OSError:
        pass


def is_new(db_dir: Path, options) -> bool:
    """No index at ``db_dir`` yet (a catalog on a server: taken as there, it cannot be told from the folder)."""
    return options.db_url is None and not (Path(db_dir) / DB_FILE).exists()


# A copy of the index's head beside its catalog: its queries (and re-runs) outlive the
# training run's folder the head was given from, which is moved or cleaned away.
HEAD_COPY, HEAD_FILES = "head", ("head.safetensors", "head.json")  # checkpoint_paths' names in a folder


def head_to_load(db_dir: str | os.PathLike, head: str | None) -> str | None:
    """The head an index built with ``head`` loads: its copy in the folder where it has one
    (looked for without importing the checkpoint module, which imports torch: a command
    that loads no model imports none)."""
    if head is None:
        return None
    copy = Path(db_dir) / HEAD_COPY
    return str(copy) if _holds_head(copy) else head


def _holds_head(folder: Path) -> bool:
    return all((folder / name).is_file() for name in HEAD_FILES)


def keep_head_copy(db_dir: Path, head: str, given: bool = False) -> None:
    """``head`` (a run just loaded it and matched the index's fingerprint) copied into the
    folder once, whole or not at all (a part folder renamed into place). A copy that
    fails (a full disk) is said and left: the head's own path still serves. ``given``
    (``--head`` named it): a copy that differs from it, damaged since, is replaced (a
    run given the right head left the damaged copy that every query refused)."""
    import filecmp
    import logging
    import shutil

    from usesearch.models.head_files import checkpoint_paths

    copy, part = db_dir / HEAD_COPY, db_dir / f"{HEAD_COPY}.part"
    if Path(head).resolve() == copy.resolve():
        return
    if _holds_head(copy):
        if not given:
            return
        filecmp.clear_cache()  # (its cache, by size and time, would miss a copy damaged in place since)
        try:
            if all(
                filecmp.cmp(source, copy / name, shallow=False)
                for source, name in zip(checkpoint_paths(head), HEAD_FILES)
            ):
                return
        except OSError:  # unreadable: taken as differing, and copied anew (or said, below)
            pass
        logging.getLogger(__name__).warning(
            "%s differs from the head given (%s), which the index matches: replaced", copy, head
        )
    try:
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        for source, name in zip(checkpoint_paths(head), HEAD_FILES):
            shutil.copyfile(source, part / name)
            with open(part / name, "rb") as f:
                os.fsync(f.fileno())
        shutil.rmtree(copy, ignore_errors=True)  # (a folder of that name that holds no head)
        os.replace(part, copy)
    except OSError as exc:
        shutil.rmtree(part, ignore_errors=True)
        logging.getLogger(__name__).warning("could not copy the head into %s (%s): it loads from %s", db_dir, exc, head)
