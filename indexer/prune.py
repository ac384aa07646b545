"""``prune``: images whose files are gone (or can no longer be read) since they were
indexed leave the index, with their segments and vectors; then the embedding files
give back the disk of removed segments (``compact``).

Each removal is one transaction, like each add, and the FAISS file is reconciled with
the committed segments whenever an index opens, so a kill at any moment leaves a
consistent index and a re-run finishes the job.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from usesearch.errors import EverythingGoneError, UsesearchError
from usesearch.reports import RunReport

from .compact import compact
from .pipeline import DB_FILE, IndexOptions, Writer, check_db_dir


@dataclass
class PruneReport(RunReport):
    images_removed: int = 0
    segments_removed: int = 0
    embedding_bytes_freed: int = 0  # by compacting the embedding files afterwards
    loop_seconds: float = 0.0
    interrupted: bool = False


def file_gone(fs_path: bytes) -> str | None:
    """Why a file indexed earlier cannot be indexed now (None: it still can): missing,
    no longer a regular file, or unreadable. Content changes are ``index``'s job."""
    try:
        st = os.stat(fs_path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be reached ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file any more"
    if not os.access(fs_path, os.R_OK):
        return "not readable"
    return None


def under_folders(images, under: list[str | os.PathLike] | None):
    """The (id, fs_path, path) rows whose files lie under ``under`` (all when None)."""
    if not under:
        return list(images)
    # abspath, as the indexer's walk keys files: a folder named through a symlink matches.
    roots = [os.fsencode(os.path.abspath(os.fspath(p))).rstrip(b"/") + b"/" for p in under]
    return [row for row in images if any(bytes(row[1]).startswith(root) for root in roots)]


def gone_images(images) -> list[tuple[int, str, str]]:
    """(id, path, why) of the images whose files are gone."""
    out = []
    for image_id, fs_path, path in images:
        why = file_gone(bytes(fs_path))
        if why:
            out.append((image_id, path, why))
    return out


ALL_GONE_GUARD = 10


def prune(
    db_dir: str | os.PathLike,
    under: list[str | os.PathLike] | None = None,
    options: IndexOptions | None = None,
    progress: Callable[[PruneReport, str, int], None] | None = None,
    force: bool = False,
) -> PruneReport:
    """Remove from the index at ``db_dir`` every image whose file is gone (under the
    folders ``under``, or anywhere when None). When every one of more than
    ``ALL_GONE_GUARD`` images is gone, nothing is removed unless ``force``: an
    unmounted disk must not empty an index."""
    options = options or IndexOptions()
    db_dir = check_db_dir(db_dir)
    if options.db_url is None and not (db_dir / DB_FILE).is_file():  # before the lock makes the folder
        raise UsesearchError(f"no index at {db_dir} (no {DB_FILE})")
    report = PruneReport()
    start = time.perf_counter()
    with Writer(Path(db_dir), options, None) as writer:
        considered = under_folders(writer.store.image_files(), under)
        gone = gone_images(considered)
        if not force and len(gone) == len(considered) > ALL_GONE_GUARD:
            raise EverythingGoneError(
                f"all {len(considered)} indexed files are gone (is the disk mounted?); nothing was "
                "removed. Run `usesearch prune --force` to remove them all."
            )

        def removals():
            for image_id, path, _why in gone:
                report.segments_removed += writer.remove_image(image_id)
                report.images_removed += 1
                yield path

        writer.run(removals(), report, lambda path: progress and progress(report, path, len(gone)))
        if not report.interrupted:
            report.embedding_bytes_freed = compact(writer.store).bytes_freed
            writer.write()  # the files are unchanged; record that they hold this generation too
    report.seconds = time.perf_counter() - start
    return report
