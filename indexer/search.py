"""Querying an index: ``SegmentIndex.open(db_dir).query("red apple", k=10)``."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from usesearch.errors import UsesearchError
from usesearch.factory import load_model

from . import vectors
from .pipeline import DB_FILE, FAISS_FILE, IndexMismatchError, db_url_for
from .store import SegmentRow, Store, info_summary

MAX_QUERY_CHARS = 1000


def open_store(db_dir: Path, db_url: str | None = None) -> Store:
    """The store of an existing index; a clear error where there is none."""
    if db_url is None and not (Path(db_dir) / DB_FILE).is_file():
        raise UsesearchError(f"no index at {db_dir} (no {DB_FILE}); run `usesearch index PATH --db {db_dir}` first")
    return Store(db_url_for(Path(db_dir), db_url))


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    segment_id: int
    image_id: int
    image: str
    bbox: tuple[int, int, int, int]  # x, y, w, h
    area: int
    mask: dict[str, Any]  # COCO compressed RLE: {"size": [h, w], "counts": str}
    predicted_iou: float | None = None
    stability_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bbox"] = list(self.bbox)
        return out


class SegmentIndex:
    """Read side of an index: reads only committed data, and picks up what a running
    indexer commits without reopening."""

    def __init__(self, db_dir: Path, store: Store, model=None):
        self.db_dir = db_dir
        self.store = store
        self.info = store.info()
        if self.info is None:
            raise UsesearchError(f"{db_dir} holds no index yet; run `usesearch index PATH --db {db_dir}` first")
        self._model = model
        # Read the generation before loading so a commit landing meanwhile is caught next refresh.
        self._generation = store.generation()
        self.index, _ = vectors.load(db_dir / FAISS_FILE, store, self.info.dim, self.info.factory)

    @classmethod
    def open(cls, db_dir: str | os.PathLike, db_url: str | None = None, model=None, device: str | None = None) -> SegmentIndex:
        db_dir = Path(db_dir)
        index = cls(db_dir, open_store(db_dir, db_url), model)
        index._device = device
        return index

    def close(self) -> None:
        self.store.close()

    # -- model -------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            self._model = load_model(
                self.info.preset, embedder=self.info.embedder, head=self.info.head, device=getattr(self, "_device", None)
            )
        if self._model.fingerprint != self.info.fingerprint:
            raise IndexMismatchError(
                f"this index was built with {info_summary(self.info)}; the model for queries is "
                f"{self._model.fingerprint}. Query it with the model it was built with."
            )
        return self._model

    # -- freshness ---------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the in-memory FAISS index up to the store's committed state."""
        generation = self.store.generation()
        if generation != self._generation:
            vectors.reconcile(self.index, self.store)
            self._generation = generation

    # -- search ------------------------------------------------------------------
    def query(self, text: str, k: int = 10, **filters) -> list[Hit]:
        if not text or not text.strip():
            raise ValueError("the query text is empty")
        if len(text) > MAX_QUERY_CHARS:
            raise ValueError(f"the query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
        return self.search_vector(self.model.embed_text([text])[0], k, **filters)

    def similar(self, segment_id: int, k: int = 10, **filters) -> list[Hit]:
        """Segments most like a given one (query by example), itself excluded."""
        self.refresh()
        found = list(self.store.embeddings([segment_id]))
        if not found:
            raise KeyError(f"no segment with id {segment_id}")
        return self.search_vector(found[0][1][0], k, exclude={segment_id}, **filters)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        per_image: bool = False,
        path: str | None = None,
        min_area: int = 0,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[Hit]:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.refresh()
        total = self.index.ntotal
        query = np.ascontiguousarray(vector, dtype=np.float32)[None]
        fetch = min(total, max(4 * k, 64))
        while True:
            scores, ids = self.index.search(query, fetch) if fetch else (np.zeros((1, 0)), np.zeros((1, 0), np.int64))
            hits = self._filter(scores[0], ids[0], k, per_image, path, min_area, exclude)
            # Over-fetch until the filters leave k hits or the index is exhausted.
            if len(hits) >= k or fetch >= total:
                return hits
            fetch = min(total, fetch * 4)

    def _filter(self, scores, ids, k, per_image, path, min_area, exclude) -> list[Hit]:
        keep = ids >= 0
        rows = self.store.rows(ids[keep].tolist())
        hits: list[Hit] = []
        seen_images: set[str] = set()
        for score, sid in zip(scores[keep], ids[keep]):
            row: SegmentRow | None = rows.get(int(sid))
            if row is None or int(sid) in exclude or row.area < min_area:
                continue
            if path and not fnmatch.fnmatchcase(row.image_path, path):
                continue
            if per_image:
                if row.image_path in seen_images:
                    continue
                seen_images.add(row.image_path)
            hits.append(
                Hit(
                    rank=len(hits) + 1, score=float(score), segment_id=row.id, image_id=row.image_id, image=row.image_path, bbox=row.bbox,
                    area=row.area, mask={"size": list(row.image_hw), "counts": row.rle_counts},
                    predicted_iou=row.predicted_iou, stability_score=row.stability_score,
                )
            )
            if len(hits) == k:
                break
        return hits

    # -- maintenance -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        def size(name: str) -> int:
            p = self.db_dir / name
            return p.stat().st_size if p.is_file() else 0

        return {
            **self.store.counts(),
            "preset": self.info.preset,
            "embedder": self.info.embedder,
            "fingerprint": self.info.fingerprint,
            "head": self.info.head,
            "masker": self.info.masker,
            "masker_params": self.info.masker_params,
            "factory": self.info.factory,
            "dim": self.info.dim,
            "vectors": int(self.index.ntotal),
            "bytes_db": size(DB_FILE) + size(DB_FILE + "-wal"),
            "bytes_faiss": size(FAISS_FILE),
        }


def reindex(db_dir: str | os.PathLike, factory: str | None = None, db_url: str | None = None) -> int:
    """Rebuild the FAISS file from the stored embeddings, optionally with another factory."""
    from .pipeline import writer_lock

    db_dir = Path(db_dir)
    with writer_lock(db_dir):
        store = open_store(db_dir, db_url)
        try:
            info = store.info()
            if info is None:
                raise UsesearchError(f"{db_dir} holds no index yet")
            factory = factory or info.factory
            index = vectors.rebuild(store, info.dim, factory)
            vectors.write_atomic(index, db_dir / FAISS_FILE)
            store.set_factory(factory)
            return int(index.ntotal)
        finally:
            store.close()
