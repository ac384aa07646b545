"""The folders usesearch writes, known by the files only they hold. A command refuses
to write one kind into another's folder (``cli/paths.py``: any of its marks), and the
photo walk (``files.walk``) leaves out the ones that hold pictures (``pictures_of``:
names no photo folder holds together): an audit report's contact sheets, or a
picture saved into an index's folder beside the photos, are not photos to index."""

from __future__ import annotations

from collections.abc import Iterable

AUDIT_LISTS = ("swapped", "overlooked", "badly_located", "leaks", "outliers")  # (``audit/report.py``'s: tested)
OUTPUT_MARKS = {
    "an index": ("segments.sqlite", "vectors.faiss", "embeddings"),  # (the indexer's names: tested)
    "a curated dataset": ("manifest.json", "shards"),
    "a training run": ("trainer.safetensors", "trainer.pt", "log.csv"),  # (trainer.pt: runs from before)
    # ``eval audit``'s report, and ``audit``'s lists.
    "an audit report": ("suspects.csv", "report.html") + tuple(f"{kind}.csv" for kind in AUDIT_LISTS),
}


def pictures_of(names: Iterable[str]) -> str | None:
    """The kind of usesearch folder, among those that may hold pictures, that a folder
    holding files of these ``names`` is, or None. Stricter than ``OUTPUT_MARKS`` (a
    photo folder may well hold a ``manifest.json``): an index's database, or an audit's
    table with its JSON twin."""
    held = set(names)
    if "segments.sqlite" in held:
        return "an index"
    if any({f"{kind}.csv", f"{kind}.json"} <= held for kind in ("suspects", *AUDIT_LISTS)):
        return "an audit report"
    return None
