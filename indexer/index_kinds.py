"""What a FAISS factory string builds: the index, checked before it is used (FAISS
builds some it then fails or crashes on), and the parts found inside one (its IVF, its
HNSW graph, the segment ids it holds)."""

from __future__ import annotations

import re
from typing import Any

import faiss
import numpy as np

from usesearch.errors import BadArgumentError


def new_index(dim: int, factory: str) -> faiss.Index:
    # IVF indexes keep the segment ids in their inverted lists; anything else is
    # wrapped in an IDMap2 (which costs a reverse map, ~50 bytes per vector).
    given = factory  # as the user wrote it, for the messages
    if not factory.startswith("IDMap") and "IVF" not in factory:
        factory = "IDMap2," + factory
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise BadArgumentError(f"invalid FAISS factory string {given!r}: {_faiss_words(exc)}") from None
    if any(part.metric_type != faiss.METRIC_INNER_PRODUCT for part in _parts(index)):
        # FAISS builds HNSW over PQ with L2 whatever the metric asked: the index written
        # was refused as another metric at every open, and rebuilt there (minutes a query).
        raise BadArgumentError(
            f"FAISS factory string {given!r}: FAISS builds it with L2 distances, not the inner product "
            "segments are ranked by; use HNSW32,SQ8 (a compressed graph) or IVF...,PQ..."
        )
    ivf = ivf_of(index)
    if ivf is not None and ivf.nlist < 1:  # FAISS builds it, and every search then fails (nprobe 0)
        raise BadArgumentError(f"invalid FAISS factory string {given!r}: an IVF needs at least one list")
    if _has_part(index, faiss.IndexNSG):  # FAISS adds to it once; a small R's first add may never end
        raise BadArgumentError(f"FAISS factory string {given!r}: an NSG graph cannot grow with the index; use HNSW32")
    if ivf is not None and _has_part(index, faiss.IndexRefine):  # FAISS builds it; its first add then fails
        raise BadArgumentError(
            f"FAISS factory string {given!r}: a Refine over an IVF takes no segment ids; leave it out "
            "(a compressed index's hits are re-scored from the stored embeddings: --rerank)"
        )
    if _sparse_graph(index):  # FAISS builds it; adding to it then crashes the process or never ends
        raise BadArgumentError(f"invalid FAISS factory string {given!r}: a graph (HNSW M) needs 2 links or more")
    if ivf is None and not isinstance(faiss.downcast_index(index), faiss.IndexIDMap2):  # ``index_ids`` lists none
        raise BadArgumentError(
            f"FAISS factory string {given!r}: an IDMap keeps no list of its ids; leave it out "
            "(every index but an IVF is wrapped in an IDMap2)"
        )
    for part in _parts(index):
        # FAISS's factory turns on polysemous training for 8-bit PQ ("PQ64" unless "np"):
        # it reorders each codebook so Hamming distances between codes track real ones,
        # which only a search with ``polysemous_ht`` set uses, and no search here sets
        # it. It was 92% of training IVF256,PQ64 on 20k x 768 vectors (88.5 -> 7.1 s,
        # 2 cores), the GPU path's index; the codes it leaves give the same distances.
        if isinstance(part, (faiss.IndexPQ, faiss.IndexIVFPQ)):
            part.do_polysemous_training = False  # type: ignore[union-attr]  # a SWIG field the stubs lack
    return index


def same_kind(dim: int, factory: str, other: str) -> bool:
    """True where two factory strings build the same index ("HNSW16" and "HNSW16,Flat",
    "Flat" and "IDMap2,Flat"): their empty indexes' bytes are compared, FAISS's own
    spelling of what it built (0.01 s for IVF65536,PQ64 at 768 dimensions)."""
    if factory == other:
        return True
    try:
        built = [faiss.serialize_index(new_index(dim, f)) for f in (factory, other)]
    except ValueError:  # one that today's checks refuse (an index's older type): not the other
        return False
    return bool(np.array_equal(built[0], built[1]))


def _faiss_words(exc: RuntimeError) -> str:
    """FAISS's reason without its C++ frame ("Error in std::unique_ptr<...> at
    .../index_factory.cpp:1228: ") or the failed assertion's code."""
    text = str(exc).strip().splitlines()[-1]
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    if "metric == METRIC_L2" in text:  # (LSH: "Error: 'metric == METRIC_L2' failed", no words of its own)
        return "it computes L2 distances only, not the inner product segments are ranked by"
    return re.sub(r"^Error: '.*?' failed: ", "", text)


def _has_part(index: faiss.Index, kind: type) -> bool:
    """True where the index, or one inside it, is of ``kind``."""
    return any(isinstance(part, kind) for part in _parts(index))


def product_quantizers(index: faiss.Index) -> list:
    """The PQ codebooks inside an index (a plain PQ's, an IVF-PQ's, a refined one's), each
    trained by k-means of its own."""
    return [part.pq for part in _parts(index) if hasattr(part, "pq")]


def opq_matrices(index: faiss.Index) -> list:
    """The OPQ rotations in front of an index (``OPQ16,IVF...``): each trains PQ codebooks
    of its own, by k-means, in every one of its iterations."""
    found = []
    for part in _parts(index):
        if isinstance(part, faiss.IndexPreTransform):
            chain: Any = part.chain  # (a C++ vector, not the list the stubs say)
            transforms = [faiss.downcast_VectorTransform(chain.at(i)) for i in range(chain.size())]
            found += [vt for vt in transforms if isinstance(vt, faiss.OPQMatrix)]
    return found


def _parts(index: faiss.Index) -> list[faiss.Index]:
    """The index and every index inside it (wrapped, refined, an IVF's quantizer)."""
    found, todo = [], [index]
    while todo:
        part = faiss.downcast_index(todo.pop())
        found.append(part)
        todo += [
            getattr(part, name) for name in ("index", "base_index", "refine_index", "quantizer") if hasattr(part, name)
        ]
    return found


def _sparse_graph(index: faiss.Index) -> bool:
    """True where the index, or one inside it (an IVF's quantizer among them), is an HNSW
    graph of fewer than 2 links a node."""
    for part in _parts(index):
        if isinstance(part, faiss.IndexHNSW):
            links = faiss.vector_to_array(part.hnsw.cum_nneighbor_per_level)  # level 0 has 2 M
            if len(links) < 2 or links[1] - links[0] < 4:
                return True
    return False


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside an index, None for any other kind."""
    try:
        return faiss.extract_index_ivf(index)  # also behind an OPQ pre-transform
    except RuntimeError:
        return None


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every segment id the index holds: an IDMap2's id list, or an IVF's lists."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap2):
        return faiss.vector_to_array(outer.id_map).astype(np.int64)
    ivf = ivf_of(index)
    invlists = ivf.invlists if ivf is not None else None
    if invlists is None:
        raise ValueError(f"a {type(outer).__name__} holds no segment ids: an index is an IDMap2 or an IVF")
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
        for i in range(invlists.nlist)
        if invlists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    outer = faiss.downcast_index(index)
    inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexIDMap2) else outer
    return inner if isinstance(inner, faiss.IndexHNSW) else None
