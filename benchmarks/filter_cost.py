"""What a filter costs a search on an existing index: the first query (which resolves
the filter, or samples the catalog to decide not to) and the p50 of the next ones,
for each filter against none. Random unit queries; run on a quiet machine.

    python benchmarks/filter_cost.py --db DIR [--queries 20] [--filter source=proposal ...]

On the 1M-segment index of ``scale.py`` (all proposals), before labelled filters were
checked on the candidates, ``source=proposal`` took 1,182 ms first and 82 ms p50 (a 1M-id
selection handed to FAISS); now 177 ms first (the sample) and 32 ms p50, as no filter.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from usesearch.indexer import SearchFilters, SegmentIndex

DEFAULT_FILTERS = ["source=proposal", "source=annotation", "min_area=2", "path=*"]


def parsed(text: str) -> SearchFilters:
    """``name=value`` as the field's type (SearchFilters refuses a string for a number or a flag)."""
    name, _, value = text.partition("=")
    kind = {f.name: f.type for f in dataclasses.fields(SearchFilters)}[name]
    if "bool" in str(kind):
        return SearchFilters(**{name: value.lower() in ("1", "true", "yes")})
    if "int" in str(kind):
        return SearchFilters(**{name: int(value)})
    return SearchFilters(**{name: float(value) if "float" in str(kind) else value})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--filter", action="append", help="name=value of a SearchFilters field; repeatable")
    args = parser.parse_args()
    index = SegmentIndex.open(args.db)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries + 1, index.info.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index.search_vector(queries[0], 10)  # warm: the index and its first rows
    import torch  # noqa: F401 - a query's process has it (its text model): "first" is the filter's own cost

    print(f"{index.index.ntotal:,} segments; k=10")
    for name in ["none", *(args.filter or DEFAULT_FILTERS)]:
        filters = SearchFilters() if name == "none" else parsed(name)
        start = time.perf_counter()
        index.search_vector(queries[0], 10, filters)
        first = time.perf_counter() - start
        times, found = [], 0
        for q in queries[1:]:
            start = time.perf_counter()
            found = len(index.search_vector(q, 10, filters))
            times.append(time.perf_counter() - start)
        print(f"{name:<20} first {first * 1000:7.0f} ms   then p50 {np.median(times) * 1000:6.1f} ms   {found} hits")
    index.close()


if __name__ == "__main__":
    main()
