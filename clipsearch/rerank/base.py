"""The re-ranker protocol, and the no-op re-ranker that keeps CLIP order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from clipsearch.types import Candidate, RankedResult, RerankOutcome


@runtime_checkable
class Reranker(Protocol):
    """Reorders candidates for a query. Must never raise for model trouble: fall back and say why."""

    name: str

    def rerank(self, query: str, candidates: Sequence[Candidate], k: int) -> RerankOutcome:
        """Return the best `k` candidates in final order."""
        ...


def clip_order(candidates: Sequence[Candidate], k: int) -> list[RankedResult]:
    """The first `k` candidates as they came from the index (the fallback every re-ranker shares)."""
    return [RankedResult(candidate=c, rank=i + 1) for i, c in enumerate(candidates[:k])]


class NoopReranker:
    """Keeps CLIP order. Used when no LLM is configured, and by evaluation of the retrieval stage alone."""

    name = "none"

    def rerank(self, query: str, candidates: Sequence[Candidate], k: int) -> RerankOutcome:  # noqa: ARG002 - protocol
        return RerankOutcome(results=clip_order(candidates, k), applied=False, fallback_reason="disabled")
