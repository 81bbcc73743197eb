"""Nearest-neighbour search: latency of one query (the service's case), recall@10 against exact, build time, memory.

For each `--size`, structured synthetic vectors (low-rank signal plus noise, L2-normalised, like CLIP
embeddings) and held-out queries from the same space; ground truth is exact inner-product search. Variants
of one family (exact backends; HNSW efSearch; IVF nprobe) are timed round-robin per query, so load from other
processes hits them alike. FAISS runs on one OpenMP thread: one query cannot use more, and spin-waiting
OpenMP threads on a shared 2-core machine only add tail latency.

Memory is the serialised FAISS index (what the service holds) or the numpy array; "bytes/vector" extrapolates
to other sizes (the coarse quantizer's fixed cost is separate and small).

    python -m benchmarks.bench_search --size 25000
    python -m benchmarks.bench_search --size 1000000 --no-hnsw     # IVF family only, ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from benchmarks.common import percentiles_ms, print_table, recall_at_k, structured_vectors, write_result
from clipsearch.index.search import ExactIndex, FaissHnswIndex, FaissIvfIndex, VectorIndex

DIM = 512
K = 10
# Two synthetic regimes (see benchmarks/README.md): topics that separate cleanly, and topics that overlap so
# a query's neighbours spread over many IVF cells. Real CLIP data sits between; report both.
DATA = {
    "clustered": {"clusters": 1000, "spread": 0.6, "noise": 0.1},
    "diffuse": {"clusters": 1000, "spread": 1.5, "noise": 0.1},
}

Search = Callable[[np.ndarray], np.ndarray]  # one query (1, dim) -> rows (1, k)


def _round_robin(variants: dict[str, Search], queries: np.ndarray) -> dict[str, list[float]]:
    """Time every variant on every query, variants interleaved per query (after a short warm-up)."""
    for fn in variants.values():
        for i in range(min(5, len(queries))):
            fn(queries[i : i + 1])
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(len(queries)):
        q = queries[i : i + 1]
        for name, fn in variants.items():
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
    return times


def _rows(fn: Search, queries: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(queries[i : i + 1]) for i in range(len(queries))])


def _faiss_bytes(index: Any) -> int:
    return int(faiss.serialize_index(index).size)


def _measure(
    family: str,
    variants: dict[str, tuple[Search, dict[str, Any]]],
    queries: np.ndarray,
    truth: np.ndarray,
    n: int,
) -> list[dict[str, Any]]:
    times = _round_robin({name: fn for name, (fn, _) in variants.items()}, queries)
    rows = []
    for name, (fn, info) in variants.items():
        recall = recall_at_k(K, _rows(fn, queries), truth)
        memory = info.get("memory_bytes")
        rows.append(
            {
                "family": family,
                "variant": name,
                "n": n,
                **percentiles_ms(times[name]),
                "recall_at_10": round(recall, 4),
                "build_s": info.get("build_s"),
                "memory_mb": round(memory / 2**20, 1) if memory else None,
                "bytes_per_vector": round(memory / n, 1) if memory else None,
                **{k: v for k, v in info.items() if k not in ("memory_bytes", "build_s")},
            }
        )
    return rows


def _searcher(index: VectorIndex, setup: Callable[[], None] | None = None) -> Search:
    def run(q: np.ndarray) -> np.ndarray:
        if setup is not None:
            setup()
        return index.search(q, K)[1]

    return run


def bench_exact(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    n = len(x)
    numpy_index = ExactIndex(x)
    t = time.perf_counter()
    faiss32 = ExactIndex(x, backend="faiss")
    build32 = time.perf_counter() - t
    x16 = x.astype(np.float16)
    t = time.perf_counter()
    faiss16 = ExactIndex(x16, backend="faiss")
    build16 = time.perf_counter() - t
    del x16
    variants = {
        "exact numpy f32 (default)": (_searcher(numpy_index), {"memory_bytes": x.nbytes, "build_s": 0.0}),
        "exact faiss f32": (_searcher(faiss32), {"memory_bytes": _faiss_bytes(faiss32._flat), "build_s": build32}),
        "exact faiss fp16": (_searcher(faiss16), {"memory_bytes": _faiss_bytes(faiss16._flat), "build_s": build16}),
    }
    return _measure("exact", variants, queries, truth, n)


def bench_hnsw(
    x: np.ndarray, queries: np.ndarray, truth: np.ndarray, m: int, ef_construction: int, efs: list[int]
) -> list[dict[str, Any]]:
    faiss.omp_set_num_threads(2)  # building parallelises well; searching is measured on one thread
    t = time.perf_counter()
    index = FaissHnswIndex.build(x, m=m, ef_construction=ef_construction, ef_search=efs[0])
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    memory = _faiss_bytes(index._index)
    hnsw = index._index.hnsw

    def with_ef(ef: int) -> Callable[[], None]:
        def setup() -> None:
            hnsw.efSearch = ef

        return setup

    variants = {
        f"hnsw M{m} efC{ef_construction} ef{ef}": (
            _searcher(index, with_ef(ef)),
            {"memory_bytes": memory, "build_s": round(build_s, 1), "ef_search": ef},
        )
        for ef in efs
    }
    return _measure("hnsw", variants, queries, truth, len(x))


def bench_ivf(
    x: np.ndarray, queries: np.ndarray, truth: np.ndarray, nlist: int, pq_m: int, nprobes: list[int]
) -> list[dict[str, Any]]:
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index = FaissIvfIndex.build(x, nlist=nlist, nprobe=nprobes[0], pq_m=pq_m)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    memory = _faiss_bytes(index._index)
    raw = index._index
    label = f"ivf{index.params['nlist']}" + (f" pq{pq_m}x{index.params.get('pq_nbits')}" if pq_m else " flat")

    def with_nprobe(p: int) -> Callable[[], None]:
        def setup() -> None:
            raw.nprobe = p

        return setup

    variants = {
        f"{label} nprobe{p}": (
            _searcher(index, with_nprobe(p)),
            {"memory_bytes": memory, "build_s": round(build_s, 1), "nprobe": p},
        )
        for p in nprobes
    }
    return _measure("ivf-pq" if pq_m else "ivf-flat", variants, queries, truth, len(x))


def bench_ivf_sq8(
    x: np.ndarray, queries: np.ndarray, truth: np.ndarray, nlist: int, nprobes: list[int]
) -> list[dict[str, Any]]:
    """IVF with 8-bit scalar quantisation (FAISS factory; not a clipsearch index kind yet): 512 B/vector."""
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    n_train = min(len(x), nlist * 256)
    sample = np.random.default_rng(0).choice(len(x), size=n_train, replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    memory = _faiss_bytes(index)
    ivf: Any = faiss.extract_index_ivf(index)

    def searcher(p: int) -> Search:
        def run(q: np.ndarray) -> np.ndarray:
            ivf.nprobe = p
            return index.search(q, K)[1]

        return run

    variants = {
        f"ivf{nlist} sq8 nprobe{p} (faiss only)": (
            searcher(p),
            {"memory_bytes": memory, "build_s": round(build_s, 1), "nprobe": p},
        )
        for p in nprobes
    }
    return _measure("ivf-sq8", variants, queries, truth, len(x))


def run_size(n: int, n_queries: int, hnsw: bool, ivf: bool, data: str) -> list[dict[str, Any]]:
    t = time.perf_counter()
    d = DATA[data]
    x = structured_vectors(n, DIM, seed=0, clusters=int(d["clusters"]), spread=d["spread"], noise=d["noise"])
    queries = structured_vectors(
        n_queries, DIM, seed=1, clusters=int(d["clusters"]), spread=d["spread"], noise=d["noise"]
    )
    print(f"[{n}] generated {n} x {DIM} in {time.perf_counter() - t:.1f} s", flush=True)
    faiss.omp_set_num_threads(2)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    truth_scores, truth = flat.search(queries, K)
    print(f"[{n}] {data}: mean top-1 cosine {truth_scores[:, 0].mean():.3f}, 10th {truth_scores[:, -1].mean():.3f}")
    del flat
    faiss.omp_set_num_threads(1)
    rows = bench_exact(x, queries, truth)
    print(f"[{n}] exact done", flush=True)
    gc.collect()
    nlist = 1024 if n >= 200_000 else max(16, int(4 * np.sqrt(n)) // 16 * 16)
    if hnsw:
        m, efc = (32, 200) if n <= 100_000 else (16, 100)
        rows += bench_hnsw(x, queries, truth, m, efc, [32, 64, 128])
        print(f"[{n}] hnsw done", flush=True)
        gc.collect()
    if ivf:
        nprobes = [4, 8, 16, 32, 64]
        rows += bench_ivf(x, queries, truth, nlist, 0, nprobes)
        print(f"[{n}] ivf-flat done", flush=True)
        gc.collect()
        rows += bench_ivf_sq8(x, queries, truth, nlist, nprobes)
        print(f"[{n}] ivf-sq8 done", flush=True)
        gc.collect()
        rows += bench_ivf(x, queries, truth, nlist, 64, [8, 32, 64])
        print(f"[{n}] ivf-pq done", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, action="append", help="corpus size (repeatable); default 25000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-hnsw", action="store_true", help="skip HNSW (its build dominates at 1M)")
    parser.add_argument("--no-ivf", action="store_true")
    parser.add_argument("--data", choices=sorted(DATA), default="clustered", help="synthetic regime")
    parser.add_argument("--name", default="", help="result file name (default search_<sizes>)")
    args = parser.parse_args(argv)
    sizes = args.size or [25_000]
    rows: list[dict[str, Any]] = []
    for n in sizes:
        rows += run_size(n, args.queries, hnsw=not args.no_hnsw, ivf=not args.no_ivf, data=args.data)
    cols = ["variant", "n", "p50_ms", "p95_ms", "p99_ms", "recall_at_10", "build_s", "memory_mb", "bytes_per_vector"]
    print_table(rows, cols, "search, one query, k=10, FAISS on 1 thread; targets: 25K p50<=1 ms; 1M p95<=2 ms @R>=0.95")
    name = args.name or f"search_{args.data}_" + "_".join(str(n) for n in sizes)
    payload = {
        "dim": DIM,
        "k": K,
        "queries": args.queries,
        "data": args.data,
        "data_params": {"rank": 64, **DATA[args.data]},
    }
    print(f"\nwrote {write_result(name, {**payload, 'results': rows})}")


if __name__ == "__main__":
    main()
