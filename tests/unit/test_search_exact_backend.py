"""`index.exact_backend: faiss`: the same exact top-k as the numpy reference, FAISS's flat kernels doing the scan."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import ConfigError
from clipsearch.index.search import ExactIndex, build_index, load_index
from clipsearch.settings import IndexSettings


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def structured(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(16, dim))
    return normalised(rng.normal(size=(n, 16)) @ basis + 0.3 * 4 * rng.normal(size=(n, dim)))


pytestmark = pytest.mark.usefixtures("single_faiss_thread")


@pytest.mark.parametrize("n_queries", [1, 7, 40])  # FAISS switches to BLAS from 20 queries on
def test_faiss_backend_equals_numpy(n_queries: int) -> None:
    x, q = structured(3000, 64, seed=0), structured(n_queries, 64, seed=1)
    ref_scores, ref_rows = ExactIndex(x).search(q, 10)
    scores, rows = ExactIndex(x, backend="faiss").search(q, 10)
    assert rows.dtype == np.int64
    assert scores.dtype == np.float32
    assert rows.shape == (n_queries, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6, rtol=0)


def test_faiss_backend_keeps_float16_vectors_exactly() -> None:
    x16 = structured(2000, 32, seed=2).astype(np.float16)
    q = structured(5, 32, seed=3)
    ref_scores, ref_rows = ExactIndex(x16).search(q, 20)  # numpy widens the same float16 values
    scores, rows = ExactIndex(x16, backend="faiss").search(q, 20)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6, rtol=0)


def test_faiss_backend_ties_in_row_order_and_k_past_the_end() -> None:
    x = np.tile(normalised(np.ones((1, 4))), (6, 1))
    index = ExactIndex(x, backend="faiss")
    assert index.search(x[:1], 4)[1][0].tolist() == [0, 1, 2, 3]
    _, rows = index.search(x[:1], 50)
    assert rows[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert len(index) == 6
    assert index.dim == 4
    assert index.search(x[:1], 0)[1].shape == (1, 0)


def test_backend_is_recorded_and_restored() -> None:
    x = structured(300, 16, seed=4)
    built = build_index(x, IndexSettings(kind="exact", exact_backend="faiss"))
    assert built.params == {"backend": "faiss"}
    assert build_index(x, IndexSettings(kind="exact")).params == {}  # default: numpy, manifest unchanged
    loaded = load_index("exact", dict(built.params), x.astype(np.float16), None)
    assert isinstance(loaded, ExactIndex)
    assert loaded.params == {"backend": "faiss"}
    np.testing.assert_array_equal(loaded.search(x[:3], 5)[1], ExactIndex(x).search(x[:3], 5)[1])


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="exact_backend"):
        ExactIndex(np.eye(4, dtype=np.float32), backend="cupy")
