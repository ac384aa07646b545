"""Which FAISS index an index folder holds, chosen from its size as autofaiss would.

Small collections are searched exactly (every vector, float32 in memory). Past
``EXACT_UP_TO`` segments the vectors in memory are compressed: an inverted file of
``nlist`` clusters with product-quantised codes of 64 bytes per vector, and each
query's top candidates are re-scored exactly against the float16 embedding files,
so recall stays high with under 100 bytes per segment in memory.

On a CPU the codes are 4-bit "fast-scan" PQ (``PQ128x4fs``: 128 sub-quantisers of
16 centroids, scored with SIMD shuffles from lookup tables held in registers). At
the same 64 bytes it matched or beat 8-bit ``OPQ64 ... PQ64`` codes in recall on
``benchmarks/scale.py``'s vectors, and searches 5-8x faster, trains 1.7x faster (4.7
against 7.8 s for IVF256 on 20k x 768 vectors, 2 cores; it was 7x while FAISS still
trained 8-bit codes polysemously: ``index_kinds.new_index``). On a GPU (where faiss has
no fast-scan) the codes are 8-bit ``PQ64``, which GPU IVF-PQ searches. OPQ is not in
the automatic choice: on the benchmark's vectors it gained nothing and made training
the slowest step; ``--factory "OPQ64,IVF4096,PQ64"``
asks for it on collections where it pays.

The choice is data: a factory string, the reasons and the costs, shown by
``usesearch info``. ``--factory`` forces one and turns the automatic choice off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AUTOMATIC = "auto"  # as a factory: the index its size calls for, chosen again as it grows
EXACT_UP_TO = 200_000  # segments; an exact scan of 200k x 768 float32 takes ~60 ms on 2 cores
PQ_BYTES = 64  # bytes per vector in a compressed index
EXACT_ID_BYTES = 60  # IDMap2: an id list and a reverse hash map
IVF_ID_BYTES = 8  # an IVF keeps each id once, in its inverted list
RERANK_MIN = 1000  # candidates re-scored exactly per query, at least: near-ties in a
RERANK_PER_HIT = 100  # big cluster need it (or this many per hit asked for)
TRAIN_PER_CLUSTER = 64  # training sample size per IVF cluster (FAISS warns below 39)
TRAIN_MAX = 400_000  # ... and never more than this many vectors in memory for training
# Segment ids per FAISS shard of a new index: each periodic write of a long run rewrites
# the last shard only (~0.7 GB of IVF-PQ codes), not the whole index (7 GB at 10^8).
SHARD_SIZE = 10_000_000


@dataclass(frozen=True)
class IndexChoice:
    factory: str
    reason: str
    exact: bool  # False: candidates are re-scored against the embedding files
    nprobe: int | None = None
    train_size: int = 0

    def bytes_per_segment(self, dim: int) -> int:
        return 4 * dim + EXACT_ID_BYTES if self.exact else PQ_BYTES + IVF_ID_BYTES

    def describe(self, n: int, dim: int) -> str:
        memory = self.bytes_per_segment(dim) * n
        return (
            f"{self.factory}: {self.reason}; about {self.bytes_per_segment(dim)} bytes per segment in memory "
            f"({memory / 2**20:.0f} MiB now)"
        )


def nlist_for(n: int) -> int:
    """Clusters: about sqrt(n), a power of two, 1024..65536. autofaiss goes up to
    16 sqrt(n); on a few CPU cores training and assigning to that many clusters
    costs more than the shorter lists save, and re-scoring restores the recall."""
    return int(min(65536, max(1024, 2 ** round(math.log2(math.sqrt(n))))))


def nprobe_for(nlist: int) -> int:
    """Clusters visited per query: enough for recall once candidates are re-scored."""
    return max(16, nlist // 64)


def train_size_for(n: int, nlist: int) -> int:
    """Vectors to train on: TRAIN_PER_CLUSTER per cluster, within [10k, TRAIN_MAX]."""
    return min(n, TRAIN_MAX, max(TRAIN_PER_CLUSTER * nlist, 10_000))


def pq_m(dim: int, bits: int = 8) -> int:
    """Sub-quantisers of ``bits`` bits filling PQ_BYTES, or the largest divisor of dim below that."""
    return max(m for m in range(1, PQ_BYTES * 8 // bits + 1) if dim % m == 0)


def choose(n: int, dim: int, gpu: bool = False) -> IndexChoice:
    """The index for n segments of dim dimensions; ``gpu``: it will be searched on a GPU."""
    if n <= EXACT_UP_TO:
        return IndexChoice(
            "IDMap2,Flat", f"{n} segments are few enough to compare every one exactly (up to {EXACT_UP_TO})", True
        )
    nlist = nlist_for(n)
    bits = 8 if gpu else 4  # GPU IVF-PQ searches 8-bit codes; on a CPU, 4-bit fast-scan
    m = pq_m(dim, bits)
    return IndexChoice(
        f"IVF{nlist},PQ{m}" + ("" if gpu else "x4fs"),
        f"{n} segments: past {EXACT_UP_TO} an exact scan costs too much time and memory, so {nlist} clusters "
        f"with {m * bits // 8}-byte codes ({'8-bit, as GPU IVF-PQ searches them' if gpu else '4-bit fast-scan'}), "
        "top candidates re-scored exactly",
        False,
        nprobe=nprobe_for(nlist),
        train_size=train_size_for(n, nlist),
    )


def outgrown(current_factory: str, n: int, dim: int, gpu: bool = False) -> bool:
    """True when the automatic choice for n segments is another index than the current
    one: exact past the threshold, or an IVF with a quarter (or four times) the
    clusters it should have."""
    wanted = choose(n, dim, gpu)
    if wanted.factory == current_factory:
        return False
    if wanted.exact != ("IVF" not in current_factory):
        return True
    if wanted.exact:
        return False
    have = int(current_factory.split("IVF")[1].split(",")[0])
    return not (nlist_for(n) / 4 <= have <= nlist_for(n) * 4)


def rerank_candidates(k: int) -> int:
    return max(RERANK_MIN, RERANK_PER_HIT * k)
