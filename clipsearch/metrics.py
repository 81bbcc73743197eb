"""Ranking quality metrics (Precision@k, Recall@k, nDCG@k, MRR) and latency percentiles. Pure functions.

Judgments are positives-only (see `clipsearch.relevance`): `relevant` maps photo_id -> grade >= 1, and a
photo not in it is *unknown*, not irrelevant. The metrics below treat unknown as 0, so they are lower bounds
on true quality and are meaningful for comparing two systems over the same judgments, not as absolutes.

Conventions: a photo that appears twice in a ranking counts once (at its first position); Precision@k
divides by k even when the ranking is shorter; with no relevant photos every metric is 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Relevant = Mapping[str, int]


def _gains(ranked_ids: Sequence[str], relevant: Relevant, k: int | None) -> list[int]:
    """The grade of each ranked position (0 when not relevant or a repeat), cut at k."""
    seen: set[str] = set()
    grades: list[int] = []
    for photo_id in ranked_ids if k is None else ranked_ids[:k]:
        grades.append(relevant.get(photo_id, 0) if photo_id not in seen else 0)
        seen.add(photo_id)
    return grades


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def precision_at_k(ranked_ids: Sequence[str], relevant: Relevant, k: int) -> float:
    """Share of the first k positions holding a relevant photo."""
    _check_k(k)
    return sum(1 for g in _gains(ranked_ids, relevant, k) if g > 0) / k


def recall_at_k(ranked_ids: Sequence[str], relevant: Relevant, k: int) -> float:
    """Share of the relevant photos found in the first k positions."""
    _check_k(k)
    n_relevant = sum(1 for g in relevant.values() if g > 0)
    if n_relevant == 0:
        return 0.0
    return sum(1 for g in _gains(ranked_ids, relevant, k) if g > 0) / n_relevant


def _dcg(grades: Iterable[int]) -> float:
    return sum((2.0**g - 1.0) / math.log2(i + 2) for i, g in enumerate(grades))


def ndcg_at_k(ranked_ids: Sequence[str], relevant: Relevant, k: int) -> float:
    """Normalised discounted cumulative gain with graded gains (2^g - 1) / log2(position + 1)."""
    _check_k(k)
    ideal = _dcg(sorted((g for g in relevant.values() if g > 0), reverse=True)[:k])
    if ideal == 0.0:
        return 0.0
    return _dcg(_gains(ranked_ids, relevant, k)) / ideal


def reciprocal_rank(ranked_ids: Sequence[str], relevant: Relevant, k: int | None = None) -> float:
    """1 / position of the first relevant photo (within the first k when given); 0 when none is found."""
    if k is not None:
        _check_k(k)
    for position, grade in enumerate(_gains(ranked_ids, relevant, k), start=1):
        if grade > 0:
            return 1.0 / position
    return 0.0


def evaluate_rankings(
    rankings: Iterable[tuple[Sequence[str], Relevant]],
    *,
    precision_k: int = 4,
    recall_k: int = 10,
    ndcg_k: int = 4,
) -> dict[str, float]:
    """Mean metrics over queries: keys precision_at_<p>, recall_at_<r>, ndcg_at_<n>, mrr.

    Raises ValueError for an empty set of rankings (a mean over nothing would hide a broken judgment set).
    """
    rows = [
        (
            precision_at_k(ranked, rel, precision_k),
            recall_at_k(ranked, rel, recall_k),
            ndcg_at_k(ranked, rel, ndcg_k),
            reciprocal_rank(ranked, rel),
        )
        for ranked, rel in rankings
    ]
    if not rows:
        raise ValueError("no rankings to evaluate: the judged query set is empty")
    means = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
    return {
        f"precision_at_{precision_k}": float(means[0]),
        f"recall_at_{recall_k}": float(means[1]),
        f"ndcg_at_{ndcg_k}": float(means[2]),
        "mrr": float(means[3]),
    }


def latency_summary(ms: Iterable[float]) -> dict[str, float]:
    """p50 / p95 / p99 (linear interpolation) and mean of latencies in milliseconds."""
    values = np.asarray(list(ms), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latencies to summarise")
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(values.mean())}
