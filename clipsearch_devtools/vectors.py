"""Synthetic CLIP-like embeddings for drift tests and benchmarks (one definition)."""

from __future__ import annotations

import numpy as np


def embeddings(n: int, seed: int, shift: float = 0.0, *, dim: int = 512, rank: int = 16) -> np.ndarray:
    """CLIP-like vectors: a shared low-rank structure plus noise, offset from the origin, L2-normalised.

    The basis is the same for every call (seed 7), so two calls with shift 0 sample one distribution; `shift`
    moves the mean along the first latent direction (users asking about something else).
    """
    basis = np.random.default_rng(7).normal(size=(rank, dim)) / 4
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, rank))
    latent[:, 0] += shift
    x = latent @ basis + 0.3 * rng.normal(size=(n, dim)) + 3 * basis.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
