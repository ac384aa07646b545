"""Auditing a labelled dataset indexed by its own masks (``usesearch audit --db DIR``):
``scores.py`` (each list's rule, over arrays), ``ranked.py`` (the best items in bounded
memory), ``leaks.py`` (the same content in two splits), ``source.py`` (what is read
from the index), ``run.py`` (the resumable passes), ``lists_file.py`` (its files, its
lists read back), ``items.py`` (the lists' items as a person reads them),
``reviews.py`` (people's verdicts, in the catalog), ``report.py`` (JSON, CSV and
contact sheets)."""

from typing import TYPE_CHECKING, Any

from .items import LISTS
from .lists_file import load_lists

if TYPE_CHECKING:
    from .run import AuditConfig, audit_index

__all__ = ["LISTS", "AuditConfig", "audit_index", "load_lists"]
_FROM_RUN = ("AuditConfig", "audit_index")


def __getattr__(name: str) -> Any:
    """``run.py``'s names, imported when first asked for: it loads the models' side
    (torch), which reading a verdicts file (``verdict_files.py``) must not wait for."""
    if name in _FROM_RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
