"""Exact search equals brute force; FAISS HNSW/IVF reach high recall against it on structured vectors."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from clipsearch.errors import ConfigError
from clipsearch.index.search import (
    ExactIndex,
    FaissHnswIndex,
    FaissHnswSqIndex,
    FaissIvfIndex,
    build_index,
    clamp_nlist,
    exact_refine,
    load_index,
)
from clipsearch.settings import IndexSettings


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def structured(n: int, dim: int, rank: int = 24, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """Low-rank signal plus noise, normalised: clustered like real embeddings, unlike isotropic Gaussians."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim))
    return normalised(rng.normal(size=(n, rank)) @ basis + noise * rng.normal(size=(n, dim)) * np.sqrt(rank))


def recall_at(k: int, approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    hits = sum(len(set(a[:k]) & set(e[:k])) for a, e in zip(approx_rows, exact_rows, strict=True))
    return hits / (k * len(exact_rows))


pytestmark = pytest.mark.usefixtures("single_faiss_thread")


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return structured(5000, 64)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return structured(200, 64, seed=1)


def test_exact_matches_brute_force_order_and_scores() -> None:
    rng = np.random.default_rng(3)
    x = normalised(rng.normal(size=(500, 32)))
    q = normalised(rng.normal(size=(7, 32)))
    scores, rows = ExactIndex(x).search(q, 10)
    full = q @ x.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    assert rows.dtype == np.int64
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_widens_float16_and_accepts_a_single_vector() -> None:
    x = normalised(np.random.default_rng(4).normal(size=(50, 8)))
    index = ExactIndex(x.astype(np.float16))
    scores, rows = index.search(x[5], 1)  # 1-D query -> one row
    assert rows.shape == (1, 1)
    assert rows[0, 0] == 5
    assert scores[0, 0] == pytest.approx(1.0, abs=2e-3)


def test_exact_k_larger_than_corpus_returns_everything_sorted() -> None:
    x = normalised(np.random.default_rng(5).normal(size=(3, 4)))
    scores, rows = ExactIndex(x).search(x[:2], 10)
    assert rows.shape == (2, 3)
    assert sorted(rows[0].tolist()) == [0, 1, 2]
    assert rows[0, 0] == 0
    assert rows[1, 0] == 1
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_equal_scores_come_back_in_row_order_and_repeatably() -> None:
    x = np.tile(normalised(np.ones((1, 4))), (6, 1))
    index = ExactIndex(x)
    _, rows = index.search(x[:1], 4)
    assert rows[0].tolist() == sorted(rows[0].tolist())
    assert len(set(rows[0].tolist())) == 4
    np.testing.assert_array_equal(rows, index.search(x[:1], 4)[1])


def test_exact_rejects_wrong_query_dim() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        ExactIndex(np.eye(4, dtype=np.float32)).search(np.ones((1, 5)), 1)


def test_hnsw_recall_at_10_against_exact(corpus: np.ndarray, queries: np.ndarray) -> None:
    _, exact_rows = ExactIndex(corpus).search(queries, 10)
    index = FaissHnswIndex.build(corpus, m=32, ef_construction=200, ef_search=128)
    scores, rows = index.search(queries, 10)
    assert len(index) == 5000
    assert index.kind == "hnsw"
    assert recall_at(10, rows, exact_rows) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_ivf_flat_recall_and_nlist_clamp(
    corpus: np.ndarray, queries: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    _, exact_rows = ExactIndex(corpus).search(queries, 10)
    with caplog.at_level(logging.WARNING):
        index = FaissIvfIndex.build(corpus, nlist=1024, nprobe=32)
    assert index.params["nlist"] == 5000 // 39  # clamped: k-means needs >= 39 points per cell
    assert "too many cells" in caplog.text
    _, rows = index.search(queries, 10)
    assert recall_at(10, rows, exact_rows) >= 0.85  # 32 of 128 cells probed (measured ~0.91)


def test_ivf_pq_builds_searches_and_round_trips(corpus: np.ndarray, queries: np.ndarray) -> None:
    small = corpus[:2000]
    index = FaissIvfIndex.build(small, nlist=16, nprobe=8, pq_m=16)
    # 2000 vectors support 2000 // 39 = 51 centroids per sub-quantizer -> 5-bit codes (2**5 = 32)
    assert index.params == {"nlist": 16, "nprobe": 8, "pq_m": 16, "pq_nbits": 5}
    _, exact_rows = ExactIndex(small).search(queries, 10)
    scores, rows = index.search(queries, 10)
    assert recall_at(10, rows, exact_rows) >= 0.3  # lossy 80-bit codes (measured ~0.39): chance is 10/2000
    again = load_index("ivf", index.params, small, index.to_bytes())
    scores2, rows2 = again.search(queries, 10)
    np.testing.assert_array_equal(rows, rows2)
    np.testing.assert_allclose(scores, scores2)


def test_ivf_pq_rejects_a_non_divisor() -> None:
    with pytest.raises(ConfigError, match="must divide"):
        FaissIvfIndex.build(structured(500, 64), nlist=4, nprobe=2, pq_m=7)


def test_hnsw_round_trip_keeps_ef_search(corpus: np.ndarray) -> None:
    index = FaissHnswIndex.build(corpus[:1000], m=16, ef_construction=64, ef_search=40)
    again = load_index("hnsw", {**index.params, "ef_search": 64}, corpus[:1000], index.to_bytes())
    assert again.params["ef_search"] == 64
    assert again._index.hnsw.efSearch == 64  # type: ignore[attr-defined]
    assert len(again) == 1000


def test_build_index_dispatches_on_kind(corpus: np.ndarray) -> None:
    assert build_index(corpus[:100], IndexSettings(kind="exact")).kind == "exact"
    assert build_index(corpus[:100], IndexSettings(kind="hnsw", hnsw_m=8)).kind == "hnsw"
    ivf = build_index(corpus[:400], IndexSettings(kind="ivf", ivf_nlist=4, ivf_nprobe=50))
    assert ivf.kind == "ivf"
    assert ivf.params["nprobe"] == 4


def test_clamp_nlist_small_corpus() -> None:
    assert clamp_nlist(1024, 10) == 1
    assert clamp_nlist(8, 10_000) == 8


def test_hnsw_sq_refine_restores_exact_scores_and_recall(corpus: np.ndarray, queries: np.ndarray) -> None:
    exact_scores, exact_rows = ExactIndex(corpus).search(queries, 10)
    index = build_index(
        corpus, IndexSettings(kind="hnsw_sq", hnsw_m=16, hnsw_ef_construction=80, hnsw_ef_search=128, hnsw_pca_dim=48)
    )
    assert isinstance(index, FaissHnswSqIndex)
    assert index.params["pca_dim"] == 48
    assert index.params["refine"] == 4
    scores, rows = index.search(queries, 10)
    assert recall_at(10, rows, exact_rows) >= 0.95
    found = rows == exact_rows
    np.testing.assert_allclose(scores[found], exact_scores[found], atol=1e-5)  # exact, not 8-bit, scores
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    unrefined = FaissHnswSqIndex(index._index, {**index.params, "refine": 0})
    assert recall_at(10, unrefined.search(queries, 10)[1], exact_rows) < recall_at(10, rows, exact_rows)


def test_hnsw_sq_round_trips_with_the_artifact_vectors(corpus: np.ndarray, queries: np.ndarray) -> None:  # noqa: ARG001
    x = corpus[:1000]
    index = FaissHnswSqIndex.build(x, m=8, ef_construction=40, ef_search=32, refine=4, pca_dim=0)
    again = load_index("hnsw_sq", {**index.params, "ef_search": 48}, x.astype(np.float16), index.to_bytes())
    assert again.kind == "hnsw_sq"
    assert len(again) == 1000
    assert again.hnsw.efSearch == 48  # type: ignore[attr-defined]
    assert again.search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]


def test_exact_refine_drops_unfilled_slots() -> None:
    vectors = normalised(np.eye(4, 8, dtype=np.float32) + 0.01)
    rows = np.array([[2, -1, 0, -1]])
    scores, top = exact_refine(vectors, vectors[2:3], rows, 3)
    assert top.tolist() == [[2, 0, -1]]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_hnsw_sq_rejects_a_pca_dim_above_the_dimension() -> None:
    with pytest.raises(ConfigError, match="hnsw_pca_dim"):
        FaissHnswSqIndex.build(structured(100, 16), m=8, ef_construction=16, ef_search=16, refine=0, pca_dim=32)
