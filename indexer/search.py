"""Querying an index: ``SegmentIndex.open(db_dir).query("red apple", k=10)``."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from usesearch.devices import explicit_device
from usesearch.errors import BadArgumentError, NotFoundError, UsesearchError

from . import calibration, faiss_gpu, filters, index_choice, index_kinds, index_stats, vector_files, vectors
from .catalog import catalog_errors
from .filters import SearchFilters, check_filters, check_k, check_query_text, check_query_vector, check_segment_id
from .folder import FAISS_FILE, index_flags, open_store
from .freshness import TYPE_CHECK_S, Freshness
from .hits import Hit, passes, passing_share, to_hits
from .index_models import IndexModels
from .locations import LocationMap
from .records import IndexInfo, SegmentRow
from .region_search import RegionSearch
from .row_scores import top_rows
from .rwlock import ReadWriteLock
from .selection import Selections
from .store import Store
from .vectors import ranked

if TYPE_CHECKING:  # the model side loads with the first model (``info``, ``failures``: ~4 s and ~800 MB less)
    from usesearch.models.model import SegmentEmbedder, TextEmbedder

MAX_QUERY_CHARS = 1000
CANDIDATES_MAX = filters.CANDIDATES_MAX  # (a module's own: tests lower it for its searches)
LOCATIONS = ("catalog", "memory", "background")  # see SegmentIndex.__init__
MAX_SEGMENT_ID = 2**63 - 1  # SQL's integer range
FULL_ROWS_UP_TO = 2048  # candidates of a filter checked on them read whole at once; past this, light first
# A selection this small is scored exactly from the embedding files (~40 ms on 2 cores), not searched:
SCAN_UP_TO = 150_000  # on a compressed index an IVF's probed lists hold few of a narrow selection's best segments


class SegmentIndex(Freshness, RegionSearch):
    """Read side of an index: reads only committed data, and picks up what a running
    indexer commits without reopening. Safe to share between threads: searches run
    side by side (no search holds up another for its whole run); the model's text
    encoder is used by one thread at a time."""

    def __init__(
        self,
        db_dir: Path,
        store: Store,
        model: SegmentEmbedder | None = None,
        device: str | None = None,
        faiss_device: str | None = None,
        loaded: vectors.Vectors | None = None,
        locations: str = "catalog",
    ):
        """``device``: where the models run (``usesearch.devices``); ``faiss_device``:
        where FAISS searches (``faiss_gpu.resolve``); each defaults on its own.
        ``loaded``: the store's FAISS index already in memory (the writer's, to
        calibrate it), instead of loading its files. ``locations``: where re-scored
        candidates' rows are looked up: "catalog" (per search: one query), "memory" or
        "background" (``hold_locations``: a server)."""
        if locations not in LOCATIONS:
            raise BadArgumentError(f"locations must be one of {', '.join(LOCATIONS)}, not {locations!r}")
        self.db_dir = Path(db_dir).absolute()  # the folder opened, whatever directory a caller moves to
        self.store = store
        info = store.info()
        if info is None:
            raise UsesearchError(
                f"{db_dir} holds no index yet; run `usesearch index PATH {index_flags(db_dir, store.url)}` first"
            )
        self.info: IndexInfo = info
        self._closed = False
        self.models = IndexModels(info, device, model, self.check_open, self.db_dir)  # each loaded on first use
        # Read the generation before loading so a commit landing meanwhile is caught next refresh.
        self._generation = store.generation()
        self._files_seen = self._files_stamp()  # the same for files the writer writes (a regrown index, a calibration)
        self._type_due, self._locations_wanted = time.monotonic() + TYPE_CHECK_S, locations
        self._known_up_to: int | None = None  # the index holds exactly the committed ids up to it (``_catch_up``)
        self._faiss_device = faiss_device
        if loaded is not None:
            self.index = loaded
        else:
            self.index, _ = vector_files.load(
                db_dir / FAISS_FILE,
                store,
                self.info.dim,
                self.info.factory,
                faiss_gpu.resolve(faiss_device),
                self.info.shard_size,
            )
        # The search effort measured on this very index (None: exact, or not measured).
        self.calibration = calibration.load(db_dir, self.index)
        calibration.apply(self.index, self.calibration)
        self._selections = Selections(store, lambda: self.index.ntotal)
        self._index_lock = ReadWriteLock()
        # The image side (SAM, the backbones) and the text tower each one thread at a
        # time, apart: a region search of a 100 MP upload holds SAM for 20 s, and a
        # text query (cached, or through CLIP's text tower alone) must not wait for it.
        self._model_lock = threading.Lock()
        self._text_lock = threading.Lock()
        self._locations: LocationMap | None = None
        if locations != "catalog":
            self.hold_locations(background=locations == "background")

    @classmethod
    def open(
        cls,
        db_dir: str | os.PathLike,
        db_url: str | None = None,
        model=None,
        device: str | None = None,
        faiss_device: str | None = None,
        locations: str = "catalog",
    ) -> SegmentIndex:
        """Open the index at ``db_dir`` for searching (read only; it follows a writer's
        commits). ``db_url``: its catalog on a database server; ``model``: the model to
        answer with (default: the one it was built with, loaded on first use, a wrong one
        refused); ``device``: the models' (default CUDA where torch sees it);
        ``faiss_device``: FAISS's (default the GPU only where this faiss has GPU support);
        ``locations``: "catalog", "memory" or "background", where re-scored candidates'
        rows are looked up (``hold_locations``). Use as a context manager, or ``close``."""
        db_dir = Path(db_dir).absolute()  # (its catalog's file too: a notebook's %cd must not lose it)
        explicit_device(device), faiss_gpu.resolve(faiss_device)  # an impossible device is refused before any loading
        store = open_store(db_dir, db_url, read_only=True)
        return cls(db_dir, store, model, device, faiss_device, locations=locations)

    def close(self) -> None:
        """Release the catalog's connections and the memory held (FAISS, the models, the
        locations) once searches under way end; searching after is refused."""
        self._closed = True
        with self._index_lock.writing():  # each lock alone: a region search takes SAM's, then this
            self.__dict__.pop("index", None)  # (gone already where closed before)
            self._locations = None
        with self._model_lock:
            self.models.release()
        self.store.close()

    def __enter__(self) -> SegmentIndex:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- models (``IndexModels``) -------------------------------------------------
    @property
    def device(self):
        """Where this index's models run (``usesearch.devices``)."""
        return self.models.device

    @property
    def model(self) -> SegmentEmbedder:
        """The whole model, loaded now where it is not yet (a search by a region)."""
        return self.models.whole()

    @property
    def text_model(self) -> TextEmbedder:
        """The model's text side (the whole model's where that is loaded)."""
        return self.models.text()

    def hold_locations(self, background: bool = False) -> None:
        """From now on, look re-scored candidates' rows up in memory (a ``LocationMap``:
        ~1 s per million segments to build, 6 bytes each; the catalog costs ~2.4 ms per
        1,000 candidates at 200k, ~10 ms at 10M), built now or, with ``background``, in
        a thread while searches still ask the catalog. An exact index holds none."""
        self.check_open()  # (closed: "'SegmentIndex' object has no attribute 'index'")
        if self._locations is not None or self.index.exact:
            return
        self._locations = LocationMap(self.store)
        if background:
            threading.Thread(target=self._locations.sync, name="usesearch-locations", daemon=True).start()
        else:
            self._locations.sync()

    # -- search ------------------------------------------------------------------
    @catalog_errors  # (its filters are resolved here, before search_vector)
    def query(self, text: str, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        """The ``k`` segments best matching ``text`` (through CLIP's prompt templates), best
        first, among those ``filters`` keep (``SearchFilters``, or a dict of its fields).
        Where they keep no segment (a class mistyped), [] at once: no text model loads."""
        check_query_text(text, MAX_QUERY_CHARS)
        k, filters = check_k(k), check_filters(filters)
        self.refresh()
        with self._index_lock.reading():
            self.check_open()
            if self._selections.resolve(filters).empty:
                return []
        return self.search_vector(self.text_vector(text), k, filters)

    def text_vector(self, text: str) -> np.ndarray:
        """A query text through the index's own model (its text encoder, one thread at a time)."""
        check_query_text(text, MAX_QUERY_CHARS)
        with self._text_lock:
            return self.text_model.embed_text([text])[0]

    @catalog_errors
    def similar(self, segment_id: int, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        """Segments most like a given one (query by example), itself excluded."""
        check_segment_id(segment_id)
        self.refresh()
        found = list(self.store.embeddings([segment_id])) if 1 <= segment_id <= MAX_SEGMENT_ID else []
        if not found:
            raise NotFoundError(f"no segment with id {segment_id}")
        return self.search_vector(found[0][1][0], k, filters, exclude=frozenset({segment_id}))

    @catalog_errors  # (query, similar_region and search_region search through it)
    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        filters: SearchFilters | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[Hit]:
        """Top ``k`` segments for a unit vector that pass ``filters`` (``SearchFilters``, or a dict of its fields;
        None: no filter), never one of ``exclude``: fewer when ``min_score`` cuts them
        off (only hits scoring at least that are returned).

        ``distinct``: a hit whose mask mostly lies inside, or mostly contains, a
        better-ranked hit of the same image (``hits.DISTINCT_OVERLAP`` of the smaller
        mask, measured on the stored RLEs) is dropped, so k hits are k different regions.

        Filters are resolved in the database first where they are narrow: a path glob
        keeping a small share of the images, or a ``min_area``, class, split or source
        keeping few segments (``selection.py``), becomes an id selection that FAISS
        searches within (a selection of at most
        ``SCAN_UP_TO`` segments is simply scored exactly), so a narrow filter costs
        less than none and one matching nothing costs nothing. Broad filters are
        checked on the candidates instead, fetching more until k hits (k distinct
        images with ``per_image``) are found or none are left: resolving most of the
        index's ids per query would cost more than it saves.

        ``nprobe`` (clusters visited) and ``rerank`` (candidates re-scored exactly)
        trade speed for recall on a compressed index; None: the index's own
        (``calibration.py``: measured on its data)."""
        k, vector = check_k(k), check_query_vector(vector, self.info.dim)
        filters = check_filters(filters)
        per_image, min_score, distinct = filters.per_image, filters.min_score, filters.distinct
        self.refresh()
        with self._index_lock.reading():  # one index throughout: a reader's reload waits for this search
            self.check_open()  # closed since its refresh: its index is given back
            selection = self._selections.resolve(filters)
            if selection.empty:
                return []  # nothing can match
            allowed = selection.allowed
            available = self.index.ntotal if allowed is None else len(allowed)
            checked = selection.images is not None or selection.labels is not None or selection.min_area
            fetch = k if not (per_image or checked or distinct) else max(4 * k, 64)
            if 0 < selection.kept < 1:  # enough candidates at once that about 2k pass the checks
                fetch = min(available, max(fetch, math.ceil(2 * k / selection.kept)))
            # An IVF's search sees only the clusters it visits: where those run out of
            # candidates, or hold far fewer of a filter's segments than the index does (a
            # folder of other content), the filter's best lie in clusters not visited, and
            # fetching more from the same ones cannot find them. Such a search visits 4x
            # the clusters until they are all visited or it has k hits that stop changing
            # (fewer, or none, may be all the clusters visited so far hold). A filter checked
            # on the candidates shows it in their passing share; an id selection searched
            # within cannot (FAISS returns its segments alone, and the clusters visited may
            # hold plenty of them, none its best), so it widens at least once. Its candidates
            # stop at CANDIDATES_MAX: a query with fewer than k matches (per image, on 200
            # photos, k=250) must not re-score the whole index.
            ivf = None if self.index.exact or (allowed is not None and len(allowed) <= SCAN_UP_TO) else self._ivf()
            cap = available if ivf is None else min(available, max(fetch, CANDIDATES_MAX))
            nprobe = filters.nprobe  # None: the index's own (its unfiltered search may then run on a GPU mirror)
            widened: list[int] | None = None  # the hits before the last widening
            while True:
                scores, ids = self._candidates(
                    vector, k, fetch, allowed, exclude, nprobe, filters.rerank, deeper=per_image or distinct
                )
                exhausted = len(ids) < min(fetch, available)  # before the cut: what the visited clusters held
                cut = min_score is not None and bool((scores < min_score).any())
                if cut:
                    scores, ids = scores[scores >= min_score], ids[scores >= min_score]
                hits, share = self._hits(scores, ids, k, selection, bool(checked), per_image, distinct)
                short_of_k = len(hits) < k and not cut  # (a min_score cut: fewer may be all there is)
                if ivf is not None and (_ids(hits) != widened or short_of_k):  # not settled, or still short
                    probed = nprobe or int(ivf.nprobe)
                    rare = checked and share < selection.kept / 2
                    short = exhausted and len(hits) < k and not cut
                    # Per image (or distinct), k hits lie deeper than the k segments
                    # calibration measured: an image's best segment in clusters not visited
                    # lost it its place (per-image recall@10 0.87 at the index's 1.00). Such a
                    # search widens once, from the index's own effort (a --nprobe given is
                    # the user's trade of recall for speed, kept).
                    widen_once = (per_image or distinct) and filters.nprobe is None and widened is None
                    if ((short or widen_once or allowed is not None) and probed < ivf.nlist) or (
                        rare and (probed < ivf.nlist or fetch < cap)
                    ):
                        widened, nprobe = _ids(hits), min(ivf.nlist, probed * 4)
                        if rare:  # candidates deep enough to hold the filter's best
                            fetch = min(cap, fetch * 4)
                        continue
                if len(hits) >= k or fetch >= cap or cut:
                    return hits  # (candidates come best first: past the cut-off there is nothing more)
                fetch = min(cap, fetch * 4)

    def _hits(
        self, scores: np.ndarray, ids: np.ndarray, k: int, selection, checked: bool, per_image: bool, distinct: bool
    ) -> tuple[list[Hit], float]:
        """The first ``k`` hits among the candidates, and the share of them that pass the
        checks a selection leaves to candidates (1.0: none left). Where those are many (a
        widened search of a filter with few of them), each is first read light
        (``segment_facts``), and whole only the passing ones, best first, as many as k hits
        take: 32,768 whole rows had been most of such a search's second."""
        if not (checked and len(ids) > FULL_ROWS_UP_TO):
            whole = self.store.rows(ids.tolist())
            return to_hits(whole, scores, ids, k, per_image, selection, distinct), (
                passing_share(whole, selection) if checked else 1.0
            )
        facts = self.store.segment_facts(ids.tolist())
        passing = [i for i in ids.tolist() if (fact := facts.get(i)) is not None and passes(fact, selection)]
        rows: dict[int, SegmentRow] = {}
        hits: list[Hit] = []
        start, step = 0, max(64, 4 * k)
        while start < len(passing):  # (per_image and distinct may want more than k)
            rows.update(self.store.rows(passing[start : start + step]))
            hits = to_hits(rows, scores, ids, k, per_image, selection, distinct)
            if len(hits) >= k:
                break
            start, step = start + step, 2 * step  # doubling: the hits are made again over all rows read
        return hits, len(passing) / len(facts) if facts else 0.0

    def _ivf(self):
        """The index's IVF (its nlist, and its nprobe as calibrated), or None."""
        return index_kinds.ivf_of(self.index.index)

    def _candidates(
        self, vector, k: int, fetch: int, allowed, exclude, nprobe=None, rerank=None, deeper: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``fetch`` (scores, ids) for a search asking for ``k`` hits. A compressed
        index gives approximate scores: more candidates (as many as ``k`` calls for, or
        ``fetch`` when more are needed to fill ``k`` after filters) are re-scored exactly
        against the embedding files; ``deeper`` (per image, distinct): four times the
        index's own number, since k such hits lie deeper than k segments (a ``rerank``
        given is kept)."""
        if allowed is not None and len(allowed) <= SCAN_UP_TO:  # read where they lie, no lookups
            keep = ~np.isin(allowed[:, 0], np.fromiter(exclude, np.int64, len(exclude))) if exclude else None
            matrix, max_norm = self._selections.rows(allowed)
            positions, scores = top_rows(matrix, vector, fetch, max_norm, keep)
            return ranked(scores, allowed[positions, 0], fetch)
        ids_allowed = None if allowed is None else allowed[:, 0]
        if self.index.exact:
            return self.index.search(vector, fetch, ids_allowed, exclude)
        if rerank is None:  # capped: k=1000 re-scored 100,000 candidates (5 s, 1.1 GB at 210k segments)
            rerank = self.calibration.rerank_for(k) if self.calibration else index_choice.rerank_candidates(k)
            rerank = min(CANDIDATES_MAX, 4 * rerank if deeper else rerank)
        wanted = max(fetch, rerank)
        _, ids = self.index.search(vector, wanted, ids_allowed, exclude, nprobe=nprobe)
        held = self._locations is not None and self._locations.ready
        locations = self._locations.lookup(ids) if held else self.store.segment_locations(ids)  # type: ignore[union-attr]
        return self._exact_top(vector, locations, fetch)

    def _exact_top(self, vector, locations: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``fetch`` (scores, ids) of segments given as [n, 3] (id, chunk, row),
        scored exactly against the embedding files."""
        return ranked(
            self.store.files().scores(locations[:, 1], locations[:, 2], vector, ids=locations[:, 0]),
            locations[:, 0],
            fetch,
        )

    # -- statistics --------------------------------------------------------------
    @catalog_errors
    def stats(self, check_files: bool = False) -> dict[str, Any]:
        """Counts, model, index type and sizes (``index_stats.stats``). ``check_files``
        also counts the image files gone since indexing, the embedding bytes no segment
        refers to and the embedding files gone or cut short: ``usesearch info`` asks for
        them, the web page's every load does not. Brought up to the writer's commits first,
        as a search is (its segments read the catalog, its vectors the index as opened)."""
        self.refresh()
        with self._index_lock.reading():  # not amid a close, which takes the FAISS index away
            self.check_open()
            return index_stats.stats(self, check_files)


def _ids(hits: list[Hit]) -> list[int]:
    return [h.segment_id for h in hits]
