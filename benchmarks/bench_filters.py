"""Filtered and hybrid search: what a filter and the keyword index add to one query, and whether results are exact.

For `--size` photos: structured synthetic vectors (as bench_search) and synthetic metadata with known
selectivities: a country held by exactly 1% / 0.1% of photos (an inverted-list filter), a submitted-date window
holding 1% / 0.1% (a scanned filter), and the two combined with an orientation. Each query is timed unfiltered
(`VectorIndex.search`) and filtered (`PhotoAttributes.select` + `search_selected`, the engine's path), variants
interleaved per query so background load hits them alike. FAISS and BLAS run on one thread (one query uses one). Every filtered answer is checked against brute force
over the selection: `exact` is the share of queries whose k rows equal it, `k_back` the share that got k rows.

With `--hybrid`, a BM25 keyword index over synthetic captions (a vocabulary of 5,000 words, 12 words per photo)
is built and timed: `keyword` (BM25 over all documents) and `hybrid` (vector + keyword top-`--depth` lists and
RRF), against `vector` with the same depth; its size per photo is reported.

    python -m benchmarks.bench_filters --size 25000 --kinds exact --hybrid
    python -m benchmarks.bench_filters --size 1000000 --kinds exact,ivf
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import pandas as pd

from benchmarks.common import percentiles_ms, print_table, structured_vectors, write_result
from clipsearch.engine import rrf
from clipsearch.index.filters import PhotoAttributes
from clipsearch.index.search import ExactIndex, FaissHnswIndex, FaissIvfIndex, VectorIndex, search_selected
from clipsearch.query import Filters

DIM = 512
K = 10
RARE_1 = "Atlantis"  # exactly 1% of photos
RARE_01 = "Lemuria"  # exactly 0.1% of photos


def metadata(n: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, tuple[pd.Timestamp, pd.Timestamp]]]:
    rng = np.random.default_rng(seed)
    country = rng.choice([f"country{i}" for i in range(60)], size=n).astype(object)
    perm = rng.permutation(n)
    country[perm[: n // 100]] = RARE_1
    country[perm[n // 100 : n // 100 + n // 1000]] = RARE_01
    start = pd.Timestamp("2015-01-01", tz="UTC")
    seconds = rng.integers(0, 9 * 365 * 86400, size=n)
    stamps = start + pd.to_timedelta(seconds, unit="s")
    order = np.sort(seconds)
    windows = {}
    for name, share in (("1%", 0.01), ("0.1%", 0.001)):
        lo = int(n * 0.5)
        hi = lo + int(n * share) - 1
        windows[name] = (start + pd.Timedelta(seconds=int(order[lo])), start + pd.Timedelta(seconds=int(order[hi])))
    sizes = rng.choice([(4000, 3000), (3000, 4000), (3000, 3000)], size=n, p=[0.6, 0.3, 0.1])
    frame = pd.DataFrame(
        {
            "photo_id": [f"p{i}" for i in range(n)],
            "width": sizes[:, 0],
            "height": sizes[:, 1],
            "photographer_username": rng.integers(0, max(1, n // 50), size=n).astype(str),
            "country": country,
            "city": None,
            "latitude": np.nan,
            "longitude": np.nan,
            "submitted_at": stamps,
            "camera_make": rng.choice(["Canon", "SONY", "FUJIFILM", "Apple"], size=n),
            "camera_model": None,
            "featured": rng.random(n) < 0.1,
            "downloads": rng.integers(0, 100_000, size=n),
        }
    )
    return frame, windows


def cases(windows: dict[str, tuple[pd.Timestamp, pd.Timestamp]]) -> dict[str, Filters]:
    out = {
        "country 1%": Filters(country=[RARE_1]),
        "country 0.1%": Filters(country=[RARE_01]),
        "country 1% + landscape": Filters(country=[RARE_1], orientation=["landscape"]),
    }
    for name, (lo, hi) in windows.items():
        out[f"date window {name}"] = Filters(submitted_from=lo.date(), submitted_to=hi.date())
    return out


def build(kind: str, vectors: np.ndarray) -> VectorIndex:
    if kind == "exact":
        return ExactIndex(vectors)
    if kind == "exact_faiss":
        return ExactIndex(vectors.astype(np.float16), backend="faiss")
    if kind == "hnsw":
        return FaissHnswIndex.build(vectors, m=32, ef_construction=100, ef_search=128)
    n = len(vectors)
    return FaissIvfIndex.build(vectors, nlist=max(16, min(1024, n // 1000)), nprobe=16)


def bench_filters(
    vectors: np.ndarray, stored: np.ndarray, queries: np.ndarray, kinds: list[str], attrs: PhotoAttributes, filt: dict
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        t0 = time.perf_counter()
        index = build(kind, vectors)
        built_s = time.perf_counter() - t0
        for name, filters in filt.items():
            selection = attrs.select(filters)
            assert selection is not None
            truth = []
            for q in queries:
                scores = np.asarray(stored[selection.rows], dtype=np.float32) @ q
                truth.append(selection.rows[np.lexsort((selection.rows, -scores))][:K].tolist())
            found: list[list[int]] = []

            def unfiltered(q: np.ndarray, index: VectorIndex = index) -> object:
                return index.search(q[None, :], K)

            def filtered(
                q: np.ndarray, index: VectorIndex = index, filters: Filters = filters, found: list = found
            ) -> object:
                sel = attrs.select(filters)
                assert sel is not None
                _, rows_, strategy = search_selected(index, stored, q, K, sel.rows)
                found.append(rows_.tolist())
                return strategy

            def select_only(q: np.ndarray, filters: Filters = filters) -> object:  # noqa: ARG001
                return attrs.select(filters)

            times = round_robin({"unfiltered": unfiltered, "filtered": filtered, "select": select_only}, queries)
            strategies = {str(filtered(queries[0]))}
            found = found[-len(queries) - 1 : -1]
            unf, fil, sel = (percentiles_ms(times[v]) for v in ("unfiltered", "filtered", "select"))
            rows.append(
                {
                    "kind": kind,
                    "filter": name,
                    "matched": len(selection),
                    "selectivity": f"{100 * selection.selectivity:.2f}%",
                    "unfiltered_p50": unf["p50_ms"],
                    "unfiltered_p95": unf["p95_ms"],
                    "filtered_p50": fil["p50_ms"],
                    "filtered_p95": fil["p95_ms"],
                    "extra_p95": round(fil["p95_ms"] - unf["p95_ms"], 3),
                    "select_p95": sel["p95_ms"],
                    "k_back": sum(len(f) == min(K, len(selection)) for f in found) / len(found),
                    "exact": sum(f == t for f, t in zip(found, truth, strict=True)) / len(found),
                    "strategy": ",".join(sorted(strategies)),
                    "build_s": round(built_s, 1),
                }
            )
        del index
    return rows


def round_robin(variants: dict[str, Callable[[np.ndarray], object]], queries: np.ndarray) -> dict[str, list[float]]:
    for fn in variants.values():
        for q in queries[:5]:
            fn(q)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for q in queries:
        for name, fn in variants.items():
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
    return times


def bench_hybrid(vectors: np.ndarray, queries: np.ndarray, depth: int, seed: int = 0) -> tuple[list[dict], dict]:
    from clipsearch.index.keyword import KeywordIndex

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    docs = [" ".join(rng.choice(vocab, size=12, p=zipf)) for _ in range(len(vectors))]
    t0 = time.perf_counter()
    keyword = KeywordIndex.build(docs)
    built_s = time.perf_counter() - t0
    size = len(keyword.to_bytes())
    texts = [" ".join(rng.choice(vocab[:2000], size=3)) for _ in range(len(queries))]
    index = ExactIndex(vectors)
    pairs = list(zip(queries, texts, strict=True))

    def vector(pair: Any) -> object:
        return index.search(pair[0][None, :], depth)

    def keyword_only(pair: Any) -> object:
        return keyword.search(pair[1], depth)

    def hybrid(pair: Any) -> object:
        _, rows = index.search(pair[0][None, :], depth)
        return rrf([rows[0], keyword.search(pair[1], depth)[1]], 60)

    times = round_robin({"vector": vector, "keyword": keyword_only, "hybrid": hybrid}, pairs)  # type: ignore[arg-type]
    table = [{"mode": m, "depth": depth, **percentiles_ms(t)} for m, t in times.items()]
    info = {
        "keyword_index_bytes": size,
        "bytes_per_photo": round(size / len(vectors), 1),
        "build_s": round(built_s, 1),
        "hybrid_extra_p95_ms": round(
            percentiles_ms(times["hybrid"])["p95_ms"] - percentiles_ms(times["vector"])["p95_ms"], 3
        ),
    }
    return table, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=25_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="exact", help="comma-separated: exact, exact_faiss, hnsw, ivf")
    parser.add_argument("--hybrid", action="store_true", help="also time keyword and hybrid modes")
    parser.add_argument("--depth", type=int, default=1000, help="candidate list depth for hybrid (search.max_results)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one query runs on one thread in the service's worker; BLAS threads only contend here

    stored = structured_vectors(args.size, DIM, spread=1.5).astype(np.float16)  # what an artifact stores
    vectors = stored.astype(np.float32)  # what the index is built from (write_artifact widens the stored ones)
    queries = structured_vectors(args.queries, DIM, spread=1.5, seed=7)
    meta, windows = metadata(args.size)
    t0 = time.perf_counter()
    attrs = PhotoAttributes(meta)
    attrs_s = time.perf_counter() - t0
    rows = bench_filters(vectors, stored, queries, args.kinds.split(","), attrs, cases(windows))
    load = os.getloadavg()
    print_table(
        rows,
        [
            "kind",
            "filter",
            "matched",
            "selectivity",
            "unfiltered_p50",
            "unfiltered_p95",
            "filtered_p50",
            "filtered_p95",
            "extra_p95",
            "select_p95",
            "k_back",
            "exact",
            "strategy",
        ],
        title=f"filtered search, {args.size} x {DIM}, k={K}, {args.queries} queries (ms); load average {load}",
    )
    payload: dict[str, Any] = {
        "size": args.size,
        "queries": args.queries,
        "k": K,
        "attributes_build_s": round(attrs_s, 2),
        "load_average": load,
        "filters": rows,
    }
    if args.hybrid:
        table, info = bench_hybrid(vectors, queries, args.depth)
        print_table(
            table, ["mode", "depth", "p50_ms", "p95_ms", "p99_ms"], title=f"vector vs keyword vs hybrid (ms); {info}"
        )
        payload["hybrid"] = {"modes": table, **info}
    print("wrote", write_result(f"filters_{args.size}", payload))


if __name__ == "__main__":
    main()
