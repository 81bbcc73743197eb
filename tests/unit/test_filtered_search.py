"""Filtered vector search is exact for every index kind: k results when k photos match, all of them matching.

The reference is brute force over the selection (numpy). Small selections (here 0.1% of the rows) are
brute-forced by every kind, so their results equal the reference exactly; large selections on HNSW / IVF go
through FAISS's IDSelectorBitmap, whose results must all match and whose recall is measured; an approximate
search that comes back short falls back to brute force, so k come back anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from clipsearch.index.search import ExactIndex, FaissHnswIndex, FaissIvfIndex, VectorIndex, search_selected
from tests.unit.test_search_index import structured

N, DIM, K = 20_000, 32, 10


@pytest.fixture(autouse=True, scope="module")
def single_faiss_thread() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return structured(N, DIM, seed=11)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return structured(20, DIM, seed=12)


@pytest.fixture(scope="module")
def indexes(vectors: np.ndarray) -> dict[str, VectorIndex]:
    return {
        "exact": ExactIndex(vectors),
        "exact_faiss": ExactIndex(vectors.astype(np.float16), backend="faiss"),
        "hnsw": FaissHnswIndex.build(vectors, m=16, ef_construction=64, ef_search=32),
        "ivf": FaissIvfIndex.build(vectors, nlist=64, nprobe=4),
    }


def stored(vectors: np.ndarray, kind: str) -> np.ndarray:
    """The vectors the index holds: the FAISS exact backend keeps float16 (as an artifact stores them)."""
    return vectors.astype(np.float16).astype(np.float32) if kind == "exact_faiss" else vectors


def reference(vectors: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    scores = vectors[rows] @ q
    order = np.lexsort((rows, -scores))
    return rows[order][:k]


def selection(share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(N, size=max(1, int(N * share)), replace=False)).astype(np.int64)


@pytest.mark.parametrize("kind", ["exact", "exact_faiss", "hnsw", "ivf"])
def test_sparse_selection_is_exact_for_every_kind(indexes, vectors, queries, kind: str) -> None:
    """0.1% selectivity (20 of 20,000 rows): k come back and they are the brute-force top-k."""
    vectors = stored(vectors, kind)
    for i, q in enumerate(queries):
        rows = selection(0.001, seed=i)
        scores, found, strategy = search_selected(indexes[kind], vectors, q, K, rows)
        assert found.tolist() == reference(vectors, q, K, rows).tolist(), strategy
        assert np.all(np.diff(scores) <= 1e-6)
        assert strategy == "brute_force"


@pytest.mark.parametrize("kind", ["exact", "exact_faiss", "hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.01, 0.3, 0.8])
def test_dense_selection_returns_k_matching_rows(indexes, vectors, queries, kind: str, share: float) -> None:
    """Force the index's own filtered search (brute_force_max=0): k rows, all selected, recall against brute force."""
    hits = total = 0
    vectors = stored(vectors, kind)
    for i, q in enumerate(queries):
        rows = selection(share, seed=100 + i)
        scores, found, strategy = search_selected(indexes[kind], vectors, q, K, rows, brute_force_max=0)
        assert len(found) == K, strategy
        assert set(found.tolist()) <= set(rows.tolist())
        expected = reference(vectors, q, K, rows)
        hits += len(set(found.tolist()) & set(expected.tolist()))
        total += K
        if kind.startswith("exact"):
            np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(scores, vectors[found] @ q, atol=2e-3)
    # Filtering must not cost recall beyond what the approximate index loses unfiltered.
    assert hits / total >= (
        1.0 if kind.startswith("exact") else unfiltered_recall(indexes[kind], vectors, queries) - 0.05
    )


def unfiltered_recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    _, found = index.search(queries, K)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    return sum(len(set(f) & set(e)) for f, e in zip(found.tolist(), expected.tolist(), strict=True)) / (
        K * len(queries)
    )


def test_fewer_matches_than_k_returns_them_all(indexes, vectors, queries) -> None:
    rows = np.array([5, 17, 4000], dtype=np.int64)
    for kind, index in indexes.items():
        _, found, _ = search_selected(index, vectors, queries[0], K, rows, brute_force_max=0)
        assert sorted(found.tolist()) == rows.tolist(), kind
        _, none, strategy = search_selected(index, vectors, queries[0], K, np.empty(0, np.int64))
        assert none.size == 0
        assert strategy == "empty"


def test_short_approximate_answers_fall_back_to_brute_force(vectors, queries) -> None:
    """An IVF probing one cell of a sparse selection finds too few rows; the answer is still the exact top-k."""
    ivf = FaissIvfIndex.build(vectors, nlist=64, nprobe=1)
    rows = selection(0.002, seed=5)
    shortfalls = 0
    for q in queries:
        _, found, strategy = search_selected(ivf, vectors, q, K, rows, brute_force_max=0)
        assert found.tolist() == reference(vectors, q, K, rows).tolist() or strategy == "ivf_selector"
        assert len(found) == K
        shortfalls += strategy == "ivf_selector_fallback"
    assert shortfalls > 0


def test_hnsw_brute_force_reads_the_graphs_own_float32_vectors(indexes, vectors) -> None:
    """HNSW-Flat stores float32 vectors: small selections are scored from a zero-copy view of them (also after a
    serialise/deserialise round trip, as an artifact loads it)."""
    hnsw = indexes["hnsw"]
    assert isinstance(hnsw, FaissHnswIndex)
    view = hnsw.stored_vectors()
    assert view is not None
    assert view.dtype == np.float32
    assert not view.flags["OWNDATA"]
    np.testing.assert_array_equal(view, vectors)
    again = FaissHnswIndex.from_bytes(hnsw.to_bytes(), hnsw.params)
    np.testing.assert_array_equal(again.stored_vectors(), vectors)
