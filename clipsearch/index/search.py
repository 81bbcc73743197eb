"""Nearest-neighbour search over L2-normalised vectors: exact (numpy) and approximate (FAISS HNSW / IVF).

All indexes rank by inner product, which equals cosine similarity because every stored vector and every
query is L2-normalised. Exact search is the default and the reference: one matrix-vector product over a
million 512-d vectors is a few tens of milliseconds, so approximate structures only pay off beyond that,
and their recall is always measured against `ExactIndex` (see the unit tests and `benchmarks/`).

Every index answers `search(queries, k) -> (scores, rows)` with `k` clamped to the number of stored
vectors. FAISS may leave a slot unfilled (row -1) when its graph or probed lists hold fewer than `k`
vectors; callers drop negative rows (`IndexArtifact.candidates_for` does).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ArtifactError, ConfigError
from clipsearch.settings import IndexSettings

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
RowArray = npt.NDArray[np.int64]
IndexParams = dict[str, int | float | str]

# FAISS k-means wants at least this many training points per centroid; fewer gives poor clusters and a warning.
MIN_POINTS_PER_CENTROID = 39
# ... and uses at most this many (it subsamples beyond), so training on more only costs time.
MAX_POINTS_PER_CENTROID = 256
PQ_BITS = 8


@runtime_checkable
class VectorIndex(Protocol):
    """What the search engine needs from an index: top-k rows by cosine similarity."""

    @property
    def kind(self) -> str:
        """exact, hnsw or ivf (as recorded in the manifest)."""
        ...

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[FloatArray, RowArray]:
        """Scores (n, k') float32 best first and row numbers (n, k') int64, with k' = min(k, len(self))."""
        ...

    def __len__(self) -> int: ...

    @property
    def params(self) -> IndexParams:
        """The parameters recorded in the artifact manifest (enough to rebuild or re-tune the index)."""
        ...


def as_query_matrix(queries: npt.ArrayLike, dim: int) -> FloatArray:
    """Queries as a C-contiguous float32 (n, dim) matrix; a single 1-D vector becomes one row."""
    matrix = np.asarray(queries, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"queries must have shape (n, {dim}); got {np.shape(queries)}")
    return np.ascontiguousarray(matrix)


EXACT_BACKENDS = ("numpy", "faiss")


class ExactIndex:
    """Brute-force inner product over all vectors: the reference every approximate index is measured against.

    Two ways to score, same results up to float rounding (`index.exact_backend`, recorded in the manifest):

    - `numpy` (default): vectors held as contiguous float32 for BLAS. Float16-stored vectors are widened once,
      because float16 matrix products in numpy are emulated and many times slower than float32 BLAS.
    - `faiss`: FAISS's flat kernels (IndexFlatIP; IndexScalarQuantizer fp16 when the vectors are float16, which
      decodes each stored value exactly). One query over 25K x 512 is a memory-bound scan; FAISS's SIMD loop is
      2-4x faster than OpenBLAS's single-vector product there, and fp16 halves the bytes read (and the RAM).

    Either way the top-k comes back score-descending with equal scores in row order.
    """

    kind = "exact"

    def __init__(self, vectors: npt.ArrayLike, backend: str = "numpy") -> None:
        matrix = np.asarray(vectors)
        if matrix.ndim != 2:
            raise ValueError(f"vectors must be 2-D (n, dim); got shape {matrix.shape}")
        if backend not in EXACT_BACKENDS:
            raise ConfigError(f"unknown index.exact_backend {backend!r}; use {' or '.join(EXACT_BACKENDS)}")
        self._backend = backend
        self._n, self._dim = int(matrix.shape[0]), int(matrix.shape[1])
        self._vectors: FloatArray | None = None
        self._flat: Any = None
        if backend == "faiss":
            self._flat = _faiss_flat(matrix)
        else:
            self._vectors = np.ascontiguousarray(matrix, dtype=np.float32)

    def __len__(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def params(self) -> IndexParams:
        return {"backend": "faiss"} if self._backend == "faiss" else {}

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[FloatArray, RowArray]:
        q = as_query_matrix(queries, self.dim)
        n_items = len(self)
        k_eff = max(0, min(int(k), n_items))
        if k_eff == 0:
            return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
        if self._flat is not None:
            top_scores, top = self._flat.search(q, k_eff)
            return _score_then_row_order(top_scores.astype(np.float32, copy=False), top.astype(np.int64, copy=False))
        assert self._vectors is not None
        scores = q @ self._vectors.T  # (n, N)
        if k_eff < n_items:
            top = np.argpartition(scores, n_items - k_eff, axis=1)[:, n_items - k_eff :]
        else:
            top = np.broadcast_to(np.arange(n_items), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        return _score_then_row_order(top_scores.astype(np.float32, copy=False), top.astype(np.int64, copy=False))


def _score_then_row_order(scores: FloatArray, rows: RowArray) -> tuple[FloatArray, RowArray]:
    """Sort each row's hits by score descending, equal scores by row ascending: the same input, the same order."""
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _faiss_flat(matrix: np.ndarray) -> Any:
    """A FAISS flat inner-product index over `matrix`: fp16 storage for float16 input (lossless), else float32."""
    faiss = _faiss()
    dim = int(matrix.shape[1])
    if matrix.dtype == np.float16:
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexFlatIP(dim)
    block = 65536  # widen in blocks: a float32 copy of a large float16 matrix is never held at once
    for start in range(0, matrix.shape[0], block):
        index.add(np.ascontiguousarray(matrix[start : start + block], dtype=np.float32))
    return index


class FaissIndex:
    """Shared behaviour of the FAISS-backed indexes: search, trim to k, (de)serialise."""

    kind: str

    def __init__(self, index: Any, params: IndexParams) -> None:
        self._index = index
        self._params = dict(params)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def params(self) -> IndexParams:
        return dict(self._params)

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[FloatArray, RowArray]:
        q = as_query_matrix(queries, self.dim)
        k_eff = max(0, min(int(k), len(self)))
        if k_eff == 0:
            return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
        scores, rows = self._index.search(q, k_eff)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)

    def to_bytes(self) -> bytes:
        """The index in FAISS's own binary format (what `faiss.write_index` writes)."""
        import faiss

        return bytes(faiss.serialize_index(self._index))


def _faiss() -> Any:
    """Import FAISS on first use, so exact-only deployments never pay for (or need) it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a pinned dependency
        raise ConfigError(
            "index.kind needs FAISS but `faiss` cannot be imported; install faiss-cpu (pinned in pyproject.toml) "
            "or set index.kind: exact"
        ) from exc
    return faiss


class FaissHnswIndex(FaissIndex):
    """HNSW graph (IndexHNSWFlat, inner product): high recall, no training, memory ~ (d*4 + 2*M*4) per vector."""

    kind = "hnsw"

    @classmethod
    def build(cls, vectors: npt.ArrayLike, *, m: int, ef_construction: int, ef_search: int) -> FaissHnswIndex:
        faiss = _faiss()
        x = _as_build_matrix(vectors)
        index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        index.add(x)
        return cls(index, {"m": m, "ef_construction": ef_construction, "ef_search": ef_search})

    @classmethod
    def from_bytes(cls, data: bytes, params: IndexParams) -> FaissHnswIndex:
        index = _deserialize(data)
        index.hnsw.efSearch = int(params.get("ef_search", index.hnsw.efSearch))
        return cls(index, params)

    def stored_vectors(self) -> FloatArray | None:
        """The graph's own float32 vectors as a zero-copy (n, d) view (HNSW-Flat keeps them in an IndexFlat), so
        brute force over a selection reads float32 without widening the artifact's float16 copy. Valid while this
        index lives; None for other storages."""
        view: FloatArray | None = getattr(self, "_stored_view", None)
        if view is None:
            faiss = _faiss()
            storage = faiss.downcast_index(self._index.storage)
            if not isinstance(storage, faiss.IndexFlat) or storage.ntotal == 0:
                return None
            view = faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * storage.d).reshape(storage.ntotal, storage.d)
            self._stored_view = view
        return view


class FaissIvfIndex(FaissIndex):
    """Inverted lists over k-means cells (IVF-Flat, or IVF-PQ when `pq_m` > 0 for ~16-64x less memory)."""

    kind = "ivf"

    @classmethod
    def build(cls, vectors: npt.ArrayLike, *, nlist: int, nprobe: int, pq_m: int = 0, seed: int = 0) -> FaissIvfIndex:
        faiss = _faiss()
        x = _as_build_matrix(vectors)
        n, dim = x.shape
        nlist_eff = clamp_nlist(nlist, n)
        if pq_m and dim % pq_m:
            raise ConfigError(
                f"index.ivf_pq_m={pq_m} must divide the vector dimension {dim}; pick a divisor such as "
                f"{', '.join(str(m) for m in (8, 16, 32, 64) if dim % m == 0) or 'a divisor of ' + str(dim)}"
            )
        quantizer = faiss.IndexFlatIP(dim)
        nbits = PQ_BITS
        if pq_m:
            # Each sub-quantizer runs k-means with 2**nbits centroids; keep >= 39 points per centroid like nlist.
            nbits = max(1, min(PQ_BITS, int(math.log2(max(n // MIN_POINTS_PER_CENTROID, 2)))))
            if nbits < PQ_BITS:
                logger.warning("IVF-PQ: %d vectors are too few for %d-bit codes; using %d bits", n, PQ_BITS, nbits)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist_eff, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist_eff, faiss.METRIC_INNER_PRODUCT)
        n_train = min(n, nlist_eff * MAX_POINTS_PER_CENTROID)
        if pq_m:
            n_train = max(n_train, min(n, 2**nbits * MAX_POINTS_PER_CENTROID))
        sample = np.random.default_rng(seed).choice(n, size=n_train, replace=False) if n_train < n else None
        index.train(x if sample is None else x[np.sort(sample)])
        index.add(x)
        nprobe_eff = min(nprobe, nlist_eff)
        index.nprobe = nprobe_eff
        params: IndexParams = {"nlist": nlist_eff, "nprobe": nprobe_eff, "pq_m": pq_m}
        if pq_m:
            params["pq_nbits"] = nbits
        return cls(index, params)

    @classmethod
    def from_bytes(cls, data: bytes, params: IndexParams) -> FaissIvfIndex:
        index = _deserialize(data)
        index.nprobe = int(params.get("nprobe", index.nprobe))
        return cls(index, params)


KMEANS_ITERATIONS = 10
SQ8_TRAIN_POINTS = 65536  # the 8-bit scalar quantizer learns per-dimension ranges: a sample is plenty


def exact_refine(vectors: npt.ArrayLike, queries: FloatArray, rows: RowArray, k: int) -> tuple[FloatArray, RowArray]:
    """Re-score approximate candidates `rows` (n, k') with the stored vectors and keep the exact top `k`.

    `vectors` may be float16 and memory-mapped: only the candidates' rows are read (k' x dim x 2 bytes a query).
    Unfilled slots (row -1) stay last with score -inf and are dropped from the result when fewer than k remain.
    """
    store = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
    n, width = rows.shape
    safe = np.where(rows < 0, 0, rows)
    picked = np.asarray(store[safe.reshape(-1)], dtype=np.float32).reshape(n, width, -1)
    scores = np.einsum("nkd,nd->nk", picked, queries).astype(np.float32, copy=False)
    scores[rows < 0] = -np.inf
    k_eff = min(k, width)
    order = np.lexsort((rows, -scores), axis=1)[:, :k_eff]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_rows = np.take_along_axis(rows, order, axis=1)
    top_rows = np.where(np.isfinite(top_scores), top_rows, -1)
    return top_scores, top_rows


class _RefinedFaissIndex(FaissIndex):
    """A FAISS index over 8-bit codes, optionally re-scored exactly against the artifact's stored vectors."""

    def __init__(self, index: Any, params: IndexParams) -> None:
        super().__init__(index, params)
        self._refine = int(params.get("refine", 0))
        self._vectors: np.ndarray | None = None

    def attach_vectors(self, vectors: np.ndarray) -> None:
        """The stored vectors (float16, possibly memory-mapped) that the exact refine reads."""
        self._vectors = vectors

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[FloatArray, RowArray]:
        if not self._refine or self._vectors is None:
            return super().search(queries, k)
        q = as_query_matrix(queries, self.dim)
        k_eff = max(0, min(int(k), len(self)))
        if k_eff == 0:
            return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
        _, rows = self._index.search(q, min(len(self), k_eff * self._refine))
        return exact_refine(self._vectors, q, rows.astype(np.int64, copy=False), k_eff)


def _sq8_train(index: Any, x: FloatArray, seed: int, n_train: int) -> None:
    sample = np.random.default_rng(seed).choice(len(x), size=n_train, replace=False) if n_train < len(x) else None
    index.train(x if sample is None else x[np.sort(sample)])


class FaissHnswSqIndex(_RefinedFaissIndex):
    """HNSW over compact codes for large collections: an optional PCA to `pca_dim`, 8-bit scalar codes, an HNSW
    graph over them, then an exact refine of the top `k x refine` against the artifact's stored vectors.

    Memory per vector is pca_dim (codes) + ~8*M (graph) bytes instead of 2048 + 8*M for float32 HNSW. CLIP-like
    embeddings have a low intrinsic dimension, so the graph walk in the reduced space finds the neighbours and
    the refine restores the exact scores and order (see benchmarks/bench_ann.py for recall at 1M).
    """

    kind = "hnsw_sq"

    @classmethod
    def build(
        cls,
        vectors: npt.ArrayLike,
        *,
        m: int,
        ef_construction: int,
        ef_search: int,
        refine: int,
        pca_dim: int = 0,
        seed: int = 0,
    ) -> FaissHnswSqIndex:
        faiss = _faiss()
        x = _as_build_matrix(vectors)
        dim = x.shape[1]
        if pca_dim < 0 or pca_dim > dim:
            raise ConfigError(f"index.hnsw_pca_dim={pca_dim} must be between 0 (no PCA) and the vector dimension {dim}")
        inner_dim = pca_dim or dim
        graph = faiss.IndexHNSWSQ(inner_dim, faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        index: Any = faiss.IndexPreTransform(faiss.PCAMatrix(dim, pca_dim), graph) if pca_dim else graph
        _sq8_train(index, x, seed, min(len(x), SQ8_TRAIN_POINTS))
        index.add(x)
        graph.hnsw.efSearch = ef_search
        params: IndexParams = {
            "m": m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "refine": refine,
            "pca_dim": pca_dim,
        }
        return cls(index, params)

    @property
    def hnsw(self) -> Any:
        """The graph's parameters (efSearch), under the PCA transform when there is one."""
        faiss = _faiss()
        inner = faiss.downcast_index(self._index.index) if hasattr(self._index, "chain") else self._index
        return inner.hnsw

    @classmethod
    def from_bytes(cls, data: bytes, params: IndexParams) -> FaissHnswSqIndex:
        out = cls(_deserialize(data), params)
        out.hnsw.efSearch = int(params.get("ef_search", out.hnsw.efSearch))
        return out


def clamp_nlist(nlist: int, n_vectors: int) -> int:
    """The number of IVF cells actually used: at most n / 39 so k-means has enough points per cell."""
    limit = max(1, n_vectors // MIN_POINTS_PER_CENTROID)
    if nlist > limit:
        logger.warning(
            "index.ivf_nlist=%d is too many cells for %d vectors; using %d (>= %d vectors per cell)",
            nlist,
            n_vectors,
            limit,
            MIN_POINTS_PER_CENTROID,
        )
        return limit
    return nlist


def _as_build_matrix(vectors: npt.ArrayLike) -> FloatArray:
    x = np.ascontiguousarray(np.asarray(vectors), dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"cannot build a FAISS index from vectors of shape {x.shape}")
    return x


def _deserialize(data: bytes) -> Any:
    faiss = _faiss()
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise ArtifactError(
            f"faiss.index could not be read by FAISS {faiss.__version__} ({exc}); "
            "rebuild the artifact with `dvc repro build_index`"
        ) from exc


def build_index(vectors: npt.ArrayLike, settings: IndexSettings) -> VectorIndex:
    """The index `settings.kind` asks for, built over `vectors` (row i of the result = vector i)."""
    if settings.kind == "exact":
        return ExactIndex(vectors, backend=settings.exact_backend)
    if settings.kind == "hnsw":
        return FaissHnswIndex.build(
            vectors, m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction, ef_search=settings.hnsw_ef_search
        )
    if settings.kind == "hnsw_sq":
        index = FaissHnswSqIndex.build(
            vectors,
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
            refine=settings.hnsw_refine,
            pca_dim=min(settings.hnsw_pca_dim, int(np.shape(vectors)[1])),
        )
        index.attach_vectors(np.asarray(vectors))
        return index
    if settings.kind == "ivf":
        return FaissIvfIndex.build(
            vectors, nlist=settings.ivf_nlist, nprobe=settings.ivf_nprobe, pq_m=settings.ivf_pq_m
        )
    raise ConfigError(f"unknown index.kind {settings.kind!r}; use exact, hnsw, ivf or hnsw_sq")


def load_index(kind: str, params: IndexParams, vectors: npt.ArrayLike, faiss_bytes: bytes | None) -> VectorIndex:
    """Rebuild a searchable index from an artifact: exact from the vectors, FAISS kinds from their bytes."""
    if kind == "exact":
        return ExactIndex(vectors, backend=str(params.get("backend", "numpy")))
    if kind not in ("hnsw", "ivf", "hnsw_sq"):
        raise ArtifactError(
            f"manifest names index kind {kind!r}, which this version cannot serve (exact, hnsw, ivf, hnsw_sq)"
        )
    if faiss_bytes is None:
        raise ArtifactError(
            f"the manifest says the index is {kind} but faiss.index is missing; rebuild with `dvc repro build_index`"
        )
    if kind == "hnsw":
        return FaissHnswIndex.from_bytes(faiss_bytes, params)
    if kind == "hnsw_sq":
        index = FaissHnswSqIndex.from_bytes(faiss_bytes, params)
        index.attach_vectors(np.asarray(vectors))
        return index
    return FaissIvfIndex.from_bytes(faiss_bytes, params)


# ------------------------------------------------------------------------------------------ filtered search

# Selections up to this many rows are scored by brute force over their gathered vectors: exact for every
# index kind, and cheaper than steering a graph or inverted lists around the rows that do not match
# (10K rows x 512 dims is ~5M multiply-adds, about a millisecond).
DEFAULT_BRUTE_FORCE_MAX = 20_000
# Exact index, larger selection: above this share of all rows, score everything and mask (one BLAS pass);
# below it, gather the selected rows and score those.
FULL_SCAN_SHARE = 0.25
MAX_FILTERED_EF = 4096


def search_selected(
    index: VectorIndex,
    vectors: np.ndarray,
    query: npt.ArrayLike,
    k: int,
    rows: RowArray,
    *,
    brute_force_max: int = DEFAULT_BRUTE_FORCE_MAX,
) -> tuple[FloatArray, RowArray, str]:
    """The top-k of one query among `rows` (sorted, unique): scores, rows, and the strategy used.

    Exactness (every index kind): whenever the selection holds at least k rows, k rows come back, all of them
    in the selection. How:
    - `brute_force`: selections up to `brute_force_max` rows (any kind) and exact indexes below FULL_SCAN_SHARE
      are scored against their own stored vectors: the exact top-k of the selection.
    - `masked_scan`: an exact index over a large selection scores every row and masks the rest.
    - `hnsw_selector` / `ivf_selector`: FAISS's search with an IDSelectorBitmap (non-matching rows are never
      returned; HNSW's efSearch and IVF's nprobe are raised for sparser selections). If the approximate
      search comes back short of k, the selection is brute-forced instead (`..._fallback`), so k come back.
    Scores are best first with equal scores in row order.
    """
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    rows = np.asarray(rows, dtype=np.int64)
    n_items = len(index)
    k_eff = max(0, min(int(k), int(rows.size)))
    if k_eff == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64), "empty"
    if index.kind == "exact":
        if rows.size >= FULL_SCAN_SHARE * n_items:
            return (*_masked_scan(index, q, k_eff, rows, n_items), "masked_scan")
        return (*_brute_force(_exact_matrix(index, vectors), q, k_eff, rows), "brute_force")
    if rows.size <= brute_force_max:
        return (*_brute_force(_exact_matrix(index, vectors), q, k_eff, rows), "brute_force")
    scores, found = _faiss_selected(index, q, k_eff, rows, n_items)
    if int((found >= 0).sum()) >= k_eff:
        return scores, found, f"{index.kind}_selector"
    return (*_brute_force(_exact_matrix(index, vectors), q, k_eff, rows), f"{index.kind}_selector_fallback")


def _exact_matrix(index: VectorIndex, vectors: np.ndarray) -> np.ndarray:
    """float32 vectors to brute-force from when the index holds them (no float16 widening), else `vectors`."""
    held = getattr(index, "_vectors", None)  # ExactIndex (numpy backend) keeps a float32 copy
    if held is None and isinstance(index, FaissHnswIndex):
        held = index.stored_vectors()
    if held is not None and held.shape == vectors.shape:
        return held
    return vectors


def _brute_force(vectors: np.ndarray, q: FloatArray, k: int, rows: RowArray) -> tuple[FloatArray, RowArray]:
    block = np.asarray(vectors[rows], dtype=np.float32)
    scores = block @ q
    top = np.argpartition(-scores, k - 1)[:k] if k < rows.size else np.arange(rows.size)
    top_scores, top_rows = scores[top].astype(np.float32), rows[top]
    order = np.lexsort((top_rows, -top_scores))
    return top_scores[order], top_rows[order]


def _masked_scan(
    index: VectorIndex, q: FloatArray, k: int, rows: RowArray, n_items: int
) -> tuple[FloatArray, RowArray]:
    held = getattr(index, "_vectors", None)
    if held is not None:
        scores = held @ q
        masked = np.full(n_items, -np.inf, dtype=np.float32)
        masked[rows] = scores[rows]
        top = np.argpartition(-masked, k - 1)[:k]
        top_scores, top_rows = masked[top], top.astype(np.int64)
        order = np.lexsort((top_rows, -top_scores))
        return top_scores[order], top_rows[order]
    return _faiss_selected(index, q, k, rows, n_items)


def _faiss_selected(
    index: VectorIndex, q: FloatArray, k: int, rows: RowArray, n_items: int
) -> tuple[FloatArray, RowArray]:
    faiss = _faiss()
    inner: Any = getattr(index, "_index", None) or getattr(index, "_flat", None)
    bitmap = np.packbits(_mask(rows, n_items), bitorder="little")
    selector = faiss.IDSelectorBitmap(n_items, faiss.swig_ptr(bitmap))
    widen = (max(1, n_items) / max(1, rows.size)) ** 0.5
    if index.kind == "hnsw":
        ef = int(index.params.get("ef_search", 64))
        # a sparser selection leaves fewer matching nodes per visited neighbourhood: widen the beam by 1/sqrt(s)
        params: Any = faiss.SearchParametersHNSW(
            sel=selector, efSearch=min(MAX_FILTERED_EF, max(ef, k, round(ef * widen)))
        )
    elif index.kind == "ivf":
        nprobe = int(index.params.get("nprobe", 1))
        nlist = int(index.params.get("nlist", nprobe))
        params = faiss.SearchParametersIVF(sel=selector, nprobe=min(nlist, max(nprobe, round(nprobe * widen))))
    else:
        params = faiss.SearchParameters(sel=selector)
    scores, found = inner.search(q[None, :], k, params=params)
    del bitmap  # kept alive until here: the selector points into it
    scores, found = scores[0].astype(np.float32), found[0].astype(np.int64)
    keep = found >= 0
    scores, found = scores[keep], found[keep]
    order = np.lexsort((found, -scores))
    return scores[order], found[order]


def _mask(rows: RowArray, n: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask
