"""Every error usesearch raises on purpose, in one module with stable names, and the two
rules that read any exception: its first line, and whether it means a full disk, and
how a message names a few of many things.

Each carries a message meant for the user, not a stack trace: the CLI prints it in one
line (``usesearch.cli.options.user_errors``), the web app as JSON."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np

# Set (non-empty) to see an unexpected error's traceback, and what libraries say
# that the one-line errors leave out (Ray's own reports of a dead worker).
DEBUG_ENV = "USESEARCH_DEBUG"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type's name: what a
    one-line error shows of a library's many-line message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def failure_words(exc: BaseException) -> str:
    """What a file's failure is recorded and said with: an OSError's own words
    ("Permission denied", "Too many levels of symbolic links"), not Python's
    "[Errno 13] Permission denied: '/the/path'" (the record names the path)."""
    if isinstance(exc, OSError) and exc.strerror and str(exc).startswith(f"[Errno {exc.errno}]"):
        return exc.strerror
    return str(exc)


def first_few(names: Iterable[object], shown: int = 3, sep: str = ", ") -> str:
    """The first ``shown`` of ``names`` joined, then " and N more" where there are more:
    how a message names a few of many (files, photos, ids)."""
    said = [str(name) for name in names]
    return sep.join(said[:shown]) + (f" and {len(said) - shown} more" if len(said) > shown else "")


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota, however it surfaces: an OSError's errno, or SQLite's and
    FAISS's own words for it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "database or disk is full" in str(exc) or "No space left on device" in str(exc)


class UsesearchError(Exception):
    """Base class: the CLI prints the message and exits non-zero."""


class BadArgumentError(UsesearchError, ValueError, TypeError):
    """An argument of a wrong type or out of range (a search's filters, ``k``, a query
    text or vector, a mask), said in one line. Also a ``ValueError`` and a ``TypeError``,
    what Python's own checks raise, for callers that catch those. ``argument``: the
    field it is about, where one is (a search filter's), for a caller that spells it
    another way (the CLI's flags)."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument

    def by_flag(self) -> BadArgumentError:
        """This error as the CLI says it: its argument named by its flag (``--min-area``,
        ``--weight-decay``) where the message opens with it as a field (``the filter
        min_area``, ``weight_decay``, ``skip kind``)."""
        name, text = self.argument or "", str(self)
        for spelt in (f"the filter {name}", name, name.replace("_", " ")) if name else ():
            if text.startswith(spelt + " "):
                return BadArgumentError("--" + name.replace("_", "-") + text[len(spelt) :], name)
        return self


class MissingExtraError(UsesearchError):
    """An optional package (an extra: sam2, sam3) is not installed, or does not import."""


class MissingWeightsError(UsesearchError):
    """A weights file is neither on disk nor in a cache, and downloading is off.
    ``message`` says what is missing and where it goes; ``hint`` what a command that
    chooses its model might run instead (an index's reader has no such choice)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(f"{message} {hint}".strip())
        self.message = message


class CheckpointMismatchError(UsesearchError):
    """A head checkpoint was made for other backbones than the ones it is loaded onto."""


class NoTrainedHeadError(UsesearchError):
    """``embedder='use'`` was asked of a preset that has no trained head."""


class NotFoundError(UsesearchError, KeyError):
    """An id or name that does not exist. A ``KeyError`` too, for callers that catch
    that, but its own type so a bug inside a lookup is not reported as "not found"."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else "not found"


class UnknownPresetError(NotFoundError):
    """A preset name that is not in the registry."""


# Reading inputs.
class ImageReadError(UsesearchError):
    """A file that is not a readable image; indexers record it and go on."""


class ImageShapeError(UsesearchError):
    """A photo too small or too narrow for the models a command runs on it."""


class ModelOutputError(UsesearchError):
    """A model gave NaN or infinite numbers (SAM's image features, a segment's vector):
    a numeric fault of the model as run (a precision, a compiler), not something to
    store. The photo fails (recorded; ``--retry-failed`` runs it again) where its
    masks would have come out empty or its vectors gone into FAISS as NaN."""


def model_output_error(what: str, precision: str, compiled: bool) -> ModelOutputError:
    """``ModelOutputError`` for ``what`` ("SAM's image encoder gave ...") computed in
    ``precision`` ("bfloat16" or "float32"), ``compiled`` or not, with the way out."""
    how = precision + (", compiled" if compiled else "")
    tries = ["--precision float32" if precision != "float32" else None, "no --compile" if compiled else None]
    hint = " or ".join(t for t in tries if t) or "another device or a fresh copy of the weights"
    return ModelOutputError(
        f"{what} NaN or infinite numbers (computed in {how}): a fault of the model as run; try {hint}"
    )


class CocoFileError(UsesearchError):
    """A file given as COCO annotations that is not one (not JSON, or without COCO's
    ``images``, ``annotations`` and ``categories`` lists): refused before anything runs."""


class AnnotationError(UsesearchError):
    """One annotation (or image entry) of a labelled dataset that cannot be indexed: a
    photo missing, a broken RLE or polygon, a duplicate id, an unknown category, an
    empty mask. ``kind`` names which; the index records it and goes on."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# The index: its folder, catalog and vector files.
class IndexMismatchError(UsesearchError):
    """The index was built with another model or masker than the one asked for."""


class IndexLockedError(UsesearchError):
    """Another indexer is writing to this index."""


class IndexUpgradeNeededError(UsesearchError):
    """An index made by an older usesearch, opened where it cannot be upgraded."""


class IndexIdentityError(UsesearchError):
    """A catalog and an index folder that belong to different indexes."""


class CatalogLockedError(UsesearchError):
    """Another writer holds the catalog."""


class CatalogUnavailableError(UsesearchError):
    """The catalog's database server stayed unreachable."""


class AuditOutdatedError(UsesearchError):
    """The audit's lists predate the index's last change: a verdict given on them could
    judge an item relabelled or gone since. Audit again first."""


class CatalogRefusedError(UsesearchError):
    """The catalog's database server answered and refused the connection (a database
    or role that does not exist, a password refused): the URL's fault, not an outage."""


class CatalogBusyError(UsesearchError):
    """The catalog's database is busy (a lock held past its timeout, a server at its
    connection limit): trying again soon may succeed."""


class DiskFullError(UsesearchError):
    """The disk holding the index is full; nothing committed was lost."""


class IndexReadOnlyError(UsesearchError):
    """What would be written into the index (an audit verdict) cannot be: it is read-only here."""


class EmbeddingsLostError(UsesearchError):
    """An embedding file the catalog refers to is gone or cut short of its rows."""


class DamagedRowsError(UsesearchError):
    """Embedding rows whose bits no longer match their checksums."""

    def __init__(self, path: Path, rows: np.ndarray, ids: np.ndarray | None, flags: str = "--db DIR"):
        self.path, self.rows, self.ids = path, rows, ids
        which = (
            f"segments {', '.join(map(str, ids[:8].tolist()))}{' ...' if len(ids) > 8 else ''}"
            if ids is not None
            else f"rows {', '.join(map(str, rows[:8].tolist()))}"
        )
        super().__init__(
            f"{len(rows)} embedding rows in {path} are damaged ({which}): run `usesearch index PATHS {flags} "
            "--repair` to re-embed their photos, or restore the file from a backup"
        )


class EverythingGoneError(UsesearchError):
    """Every file is gone: more likely an unmounted disk than a deleted archive."""


class WorkerError(UsesearchError):
    """An image's failure in a Ray worker, as the committer records it."""


# Serving.
class ImageGoneError(UsesearchError):
    """The indexed file can no longer be read as it was indexed (moved, deleted, edited)."""


class ServerBusyError(UsesearchError):
    """The pixel budget stayed full for the whole wait."""


class ClientGoneError(UsesearchError):
    """The client of a long request (a refined search) went away: its work stops."""


class StaleFilesError(UsesearchError):
    """The FAISS files do not (yet) match what the database records: a reader that met
    a file its writer has renamed into place and not yet recorded tries again later."""


# Curation.
class CurationConfigError(UsesearchError):
    """A problem with the run's set-up (a missing model), not with one image."""


class AnnotationsChangedError(UsesearchError):
    """A curated photo's annotations in the source differ from those its record was
    made from: a failure of that photo (records are never rewritten)."""
