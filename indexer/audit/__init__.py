"""Auditing a labelled dataset indexed by its own masks (``usesearch audit --db DIR``):
``scores.py`` (each list's rule, over arrays), ``ranked.py`` (the best items in bounded
memory), ``leaks.py`` (the same content in two splits), ``source.py`` (what is read
from the index), ``run.py`` (the resumable passes), ``items.py`` (the lists' items as a
person reads them), ``reviews.py`` (people's verdicts, in the catalog), ``report.py``
(JSON, CSV and contact sheets)."""

from .items import LISTS
from .run import AuditConfig, audit_index, load_lists

__all__ = ["LISTS", "AuditConfig", "audit_index", "load_lists"]
