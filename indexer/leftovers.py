"""What an index holds that its photos no longer need, measured without writing:
images whose files are gone since indexing (``prune`` removes them) and embedding
bytes no committed segment refers to (``compact`` gives them back). ``usesearch
info`` reads them; the writes that act on them are in ``maintenance.py``."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from typing import NamedTuple

from sqlalchemy import BigInteger, cast, func, literal, or_, select, true

from usesearch.errors import UsesearchError, first_line
from usesearch.io.files import decode, read_bytes

from .known_images import record_limits
from .options import IndexOptions
from .records import DONE, FAILED, CopyRecord, ImageRecord, SegmentRecord
from .store import Store

GONE_CHECKED = 100_000  # image files ``info`` stats at most: past that, a sample's share estimates the count


def file_gone(fs_path: bytes) -> str | None:
    """Why a file indexed earlier cannot be indexed now (None: it still can): missing,
    no longer a regular file, or unreadable. Content changes are ``index``'s job."""
    try:
        st = os.stat(fs_path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return _unreachable(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file any more"
    if not os.access(fs_path, os.R_OK):
        return f"{ACCESS_REFUSED} (not readable)"
    return None


ACCESS_REFUSED = "access refused"  # what a chmod or a remount gives back (``may_come_back``)
REFUSING_ERRORS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE}


def _unreachable(exc: OSError) -> str:
    return f"{ACCESS_REFUSED if exc.errno in REFUSING_ERRORS else 'cannot be reached'} ({exc.strerror})"


def may_come_back(why: str) -> bool:
    """Whether a ``why`` of ``file_gone`` or ``file_failing`` is access refused (a
    folder's or the file's permissions, an I/O error, a stale network handle) rather
    than the file gone: a chmod or a remount gives it back, so ``prune`` keeps its
    segments unless forced (a link loop, a name too long: no chmod mends them)."""
    return why.startswith(ACCESS_REFUSED)


def folder_listed(fs_path: bytes) -> bool:
    """A folder that lists now: a failure recorded at its path (the walk could not
    list it then) is stale, its photos indexed under their own paths since."""
    try:
        with os.scandir(fs_path):
            return True
    except OSError:
        return False


def folders_listing_now(store: Store, under: list[str | os.PathLike]) -> list[int]:
    """Ids of the failures recorded at a folder's path under ``under`` (the walk could not
    list it then) that lists now: its photos are indexed under their own paths by the run
    that walked it, and the failure, kept, was counted by `info` and listed by `failures`."""
    with store.sessions() as s:
        query = select(ImageRecord.id, ImageRecord.fs_path).where(ImageRecord.status == FAILED, in_scope(under))
        rows = s.execute(query).all()
    return [image_id for image_id, fs_path in rows if os.path.isdir(bytes(fs_path)) and folder_listed(bytes(fs_path))]


def named(under: list[str | os.PathLike]) -> list[bytes]:
    """The paths given, as the indexer's walk keys files (abspath: a folder named through a
    symlink matches). Each is a photo itself, or a folder whose files lie under it + "/"."""
    return [os.fsencode(os.path.abspath(os.fspath(p))).rstrip(b"/") for p in under]


def in_scope(under: list[str | os.PathLike] | None, fs_path=ImageRecord.fs_path):
    """The images (rows whose ``fs_path`` column) that are ``under`` or lie under them
    (all when None), as a condition the database answers from its index on fs_path:
    every byte string starting with "dir/" sorts from "dir/" up to "dir0" ("0" follows "/")."""
    paths = named(under or [])
    within = [(fs_path == p) | ((fs_path >= p + b"/") & (fs_path < p + b"0")) for p in paths]
    return or_(*within) if paths else true()


def images_under(store: Store, under: list[str | os.PathLike] | None) -> list[tuple[int, bytes, str]]:
    """(id, fs_path, path) of the images ``in_scope``, in id order."""
    query = select(ImageRecord.id, ImageRecord.fs_path, ImageRecord.path).where(in_scope(under))
    with store.sessions() as s:
        return [(image_id, fs_path, path) for image_id, fs_path, path in s.execute(query.order_by(ImageRecord.id))]


def file_failing(fs_path: bytes, path: str, options: IndexOptions, record: ImageRecord | None = None) -> str | None:
    """Why a photo indexed, then failing at a re-run, still cannot be read and decoded
    within ``options``' limits, or its own as ``record`` has it where larger (indexed with
    `index --max-pixels` raised: its size is no damage). None: it can now, as after a
    repair or a passing read error."""
    max_bytes, max_pixels = record_limits(record) if record is not None else (0, 0)
    try:
        data, _ = read_bytes(fs_path, max(options.max_bytes, max_bytes), name=path)
        decode(data, path, max(options.max_pixels, max_pixels))
    except OSError as exc:
        return _unreachable(exc) if exc.errno in REFUSING_ERRORS else f"failing since indexed ({first_line(exc)})"
    except (UsesearchError, ValueError) as exc:
        return f"failing since indexed ({first_line(exc)})"
    return None


def failure_sets(store: Store, kept_failures: bool) -> tuple[set[int], set[int]]:
    """The ids ``gone_images`` takes as ``failed`` (gone only where missing) and as
    ``kept_failures`` (read again: gone while they still fail). Without
    ``kept_failures`` (``index --prune``, and what a run says is gone) a photo failing
    since indexed is failed: the run just kept it, and only ``prune`` reads it again."""
    failed, kept = store.failed_image_ids(), store.kept_failure_ids()
    return (failed, kept) if kept_failures else (failed | kept, set())


def gone_images(
    images,
    failed: Collection[int] = (),
    kept_failures: Collection[int] = (),
    options: IndexOptions | None = None,
    store: Store | None = None,
    held: list[tuple[int, str, str]] | None = None,
) -> list[tuple[int, str, str]]:
    """(id, path, why) of the images whose files are gone. A file that ``failed`` (ids)
    to index is gone only when missing: one still there (a FIFO, an unreadable file)
    fails again at the next run, and removing its record would only repeat it. One of
    ``kept_failures`` (indexed, then failing at its last read: corrupt, grown past the
    size limit) is gone too while it still fails to read now (read and decoded here):
    its segments would answer queries for a photo no one can open. ``store``: where its
    record (its size as indexed) is read. A file whose access is refused
    (``may_come_back``) goes into ``held`` where one is given, not into the answer.
    A failure recorded at a folder's path that lists now is gone (nothing cleared it)."""
    out = []
    for image_id, fs_path, path in images:
        why = file_gone(bytes(fs_path))
        if why is None and image_id in kept_failures:
            record = store.image(image_id) if store is not None else None
            why = file_failing(bytes(fs_path), path, options or IndexOptions(), record)
        if why and image_id in failed and why != "missing" and folder_listed(bytes(fs_path)):
            why = "a folder that lists now (the next index run walks it)"
        elif not why or (why != "missing" and image_id in failed):
            continue
        if held is not None and may_come_back(why):
            held.append((image_id, path, why))
        else:
            out.append((image_id, path, why))
    return out


def stale_copies(store: Store, under: list[str | os.PathLike] | None, batch: int = 10_000) -> list[bytes]:
    """The paths of noted copies (``CopyRecord``, in scope) no re-run needs: the file is
    missing, or the path has a record of its own. (A copy whose photo is gone is kept: the
    photo's record moves onto one such copy, and runs skip the others unread by their notes.)"""
    with store.sessions() as s:
        noted = list(s.scalars(select(CopyRecord.fs_path).where(in_scope(under, CopyRecord.fs_path))))
    stale = []
    for lo in range(0, len(noted), batch):
        part = [bytes(fs_path) for fs_path in noted[lo : lo + batch]]
        with store.sessions() as s:
            recorded = {bytes(p) for p in s.scalars(select(ImageRecord.fs_path).where(ImageRecord.fs_path.in_(part)))}
        stale += [p for p in part if p in recorded or file_gone(p) == "missing"]
    return stale


def copies_holding(store: Store, image_ids: list[int], batch: int = 10_000) -> dict[int, tuple[bytes, str | None]]:
    """For each of these gone photos that a noted copy (``CopyRecord``) still holds, as
    indexed, with no record of its own: (the copy's path, its stat; None where it just
    changed, so a run reads it again). ``prune`` moves the photo's record there, as the
    next ``index`` run would (``Writer.skip``), where removing it lost its segments (a
    labelled photo's annotations too) for that run to embed the copy again. A copy goes
    to one photo (two records of one content: the second is removed, as the real run
    does it, and its dry run says); it is read whole unless its stat is the one noted.
    The copies are asked for by content ``batch`` at a time (one scan a batch, not one a photo)."""
    from .known_images import file_stat

    records = {i: store.image(i) for i in image_ids}
    contents = sorted({r.sha256 for r in records.values() if r is not None and r.status == DONE and r.sha256})
    noted: dict[str, list[CopyRecord]] = {}
    for lo in range(0, len(contents), batch):
        with store.sessions() as s:
            query = select(CopyRecord).where(CopyRecord.sha256.in_(contents[lo : lo + batch]))
            for copy in s.scalars(query.order_by(CopyRecord.fs_path)):
                noted.setdefault(copy.sha256, []).append(copy)
    found: dict[int, tuple[bytes, str | None]] = {}
    taken: set[bytes] = set()
    for image_id in image_ids:
        record = records[image_id]
        if record is None or record.status != DONE or not record.sha256:
            continue
        max_bytes = record_limits(record)[0]
        for copy in noted.get(record.sha256, []):
            key = bytes(copy.fs_path)
            if key in taken or store.image_by_path(key) is not None:
                continue
            stat_now = file_stat(key)  # (before the read; None: changed just now)
            try:
                holds = stat_now is not None and stat_now == copy.file_stat
                holds = holds or read_bytes(key, max_bytes)[1] == record.sha256
            except (OSError, UsesearchError):
                continue  # gone too, or unreadable: not a place for the record
            if holds:
                found[image_id] = (key, stat_now)
                taken.add(key)
                break
    return found


class Gone(NamedTuple):
    number: int  # estimated where ``estimated``
    checked: int  # images whose files were looked at
    found: list[tuple[int, str, str]]  # (id, path, why) of the gone ones among them
    estimated: bool
    held: int = 0  # images whose access is refused (``may_come_back``): kept by prune, estimated alike


def files_gone(
    store: Store,
    under: list[str | os.PathLike] | None = None,
    most: int = GONE_CHECKED,
    indexed_only: bool = False,
    kept_failures: bool = True,
) -> Gone:
    """The images under ``under`` (all: None) whose files are gone: every image up to
    ``most``; past that a sample of ``most``, whose share gone times the count
    estimates it (every file of 10^7 took minutes to stat and 2.5 GB to list; ``prune``
    checks them all). The folders are chosen in SQL (``in_scope``), and the sample is
    the first ``most`` in an order that scatters ids (a multiplicative hash: the same
    sample each time, drawn from every part of the catalog). Failed files are gone only
    when missing (``gone_images``), or not at all with ``indexed_only``; photos failing
    since indexed count only with ``kept_failures``."""
    failed = store.failed_image_ids()
    image = ImageRecord
    scope = in_scope(under)
    query = select(image.id, image.fs_path, image.path).where(scope)
    with store.sessions() as s:
        total = s.scalar(select(func.count(image.id)).where(scope)) or 0
        estimated = total > most
        # 64-bit: PostgreSQL types the constants as the 32-bit id otherwise (out of range).
        scattered = (
            (cast(image.id, BigInteger) * literal(2654435761, BigInteger)) % literal(2**32, BigInteger),
            image.id,
        )
        query = query.order_by(*scattered).limit(most) if estimated else query.order_by(image.id)
        rows = [tuple(row) for row in s.execute(query)]
    chosen = [r for r in rows if r[0] not in failed] if indexed_only else rows
    failed, failing = failure_sets(store, kept_failures)
    held: list[tuple[int, str, str]] = []  # (access refused: not gone, as prune keeps them)
    found = gone_images(chosen, failed, failing, store=store, held=held)
    share = total / max(1, len(rows))
    return Gone(round(len(found) * share), len(rows), found, estimated, round(len(held) * share))


def live_rows(store: Store) -> dict[int, int]:
    """Committed segments per chunk."""
    return {chunk: count for chunk, (count, _) in _live_extent(store).items()}


def _live_extent(store: Store) -> dict[int, tuple[int, int]]:
    """(committed segments, highest row) per chunk."""
    row = SegmentRecord.vec_row
    with store.sessions() as s:
        rows = s.execute(select(SegmentRecord.vec_chunk, func.count(), func.max(row)).group_by(SegmentRecord.vec_chunk))
        return {chunk: (count, top) for chunk, count, top in rows}


def dead_bytes(store: Store) -> int:
    """Bytes of the embedding files that no committed segment refers to (a chunk file
    gone or cut short, see ``embedding_leftovers``, adds none: it is damage, not waste)."""
    return embedding_leftovers(store)[0]


def embedding_leftovers(store: Store) -> tuple[int, dict[str, int]]:
    """(bytes no committed segment refers to, the chunk files committed segments refer
    to that are gone or cut short of them: file name -> segments whose embedding is
    lost, for ``index --repair``), from one scan of the catalog."""
    files, extent, lost = store.files(), _live_extent(store), {}
    sizes = _chunk_sizes(files)
    dead = sum(max(0, size - extent.get(c, (0, 0))[0] * files.row_bytes) for c, size in sizes.items())
    for chunk, (count, top) in sorted(extent.items()):
        rows = sizes.get(chunk, 0) // files.row_bytes
        if rows > top:
            continue
        if rows:  # cut short: only the segments past its end
            with store.sessions() as s:
                past = (SegmentRecord.vec_chunk == chunk) & (SegmentRecord.vec_row >= rows)
                count = s.execute(select(func.count()).where(past)).scalar_one()
        lost[files.path(chunk).name] = count
    return dead, lost


def _chunk_sizes(files) -> dict[int, int]:
    sizes = {}
    for chunk in files.chunks():
        try:
            sizes[chunk] = files.path(chunk).stat().st_size
        except FileNotFoundError:  # a compaction deleted it meanwhile
            continue
    return sizes


def lost_among(store: Store, segment_ids: Collection[int]) -> str | None:
    """Why some of these segments' embeddings are lost (a chunk file gone or cut short),
    else None: a search's hits come from FAISS and stay right, but the index is damaged
    (``similar`` of such a hit, and a rebuild, refuse), and nothing else would say so.
    From the catalog's row numbers and the files' sizes: no row is read (nor checked: a
    damaged row is ``similar``'s and re-scoring's to find). Looked at again before it is
    said: a compaction in another process may have moved the rows meanwhile. The CLI's:
    a web page's user can do nothing of it (the server logs what a request meets)."""
    ids = [int(i) for i in segment_ids]
    why = None
    for _ in range(2):
        extent: dict[int, int] = {}
        with store.sessions() as s:
            for at in range(0, len(ids), 900):  # (SQLite's bound-parameter limit)
                top = func.max(SegmentRecord.vec_row)
                chosen = select(SegmentRecord.vec_chunk, top).where(SegmentRecord.id.in_(ids[at : at + 900]))
                for chunk, row in s.execute(chosen.group_by(SegmentRecord.vec_chunk)):
                    extent[chunk] = max(row, extent.get(chunk, -1))
        files = store.files()
        why = next((lost for c, row in sorted(extent.items()) if (lost := files.rows_short_of(c, row + 1)[1])), None)
        if why is None:
            return None
    return f"this index is damaged: {why}"
