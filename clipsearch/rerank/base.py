"""The re-ranker protocol, and the no-op re-ranker that keeps CLIP order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clipsearch.types import Candidate, RankedResult, RerankOutcome

if TYPE_CHECKING:
    from clipsearch.compose import QueryVector
    from clipsearch.index.artifact import IndexArtifact
    from clipsearch.query import Query

MAX_QUERY_IMAGES = 3  # example images shown to the re-ranker beside the candidates (each costs prompt tokens)


@dataclass(frozen=True)
class RerankContext:
    """What a composed query adds to its text for the re-ranker: example images and things to avoid.

    `images`: JPEG thumbnails of the positive image terms (uploads, URLs); `examples`: indexed photos given as
    positive terms (photo ids, shown by their thumbnails); `avoid`: the negative text terms."""

    images: tuple[bytes, ...] = ()
    examples: tuple[Candidate, ...] = ()
    avoid: tuple[str, ...] = ()

    def cache_key(self) -> tuple[object, ...]:
        import hashlib

        return (
            tuple(hashlib.sha256(i).hexdigest()[:16] for i in self.images),
            tuple(c.photo_id for c in self.examples),
            self.avoid,
        )


def rerank_context(query: Query, encoded: QueryVector, artifact: IndexArtifact) -> RerankContext | None:
    """The re-rank context of a composed query, or None for plain text (the re-ranker sees just the text)."""
    images = tuple(img.thumbnail() for img in encoded.images[:MAX_QUERY_IMAGES])
    examples: list[Candidate] = []
    for term in query.terms:
        if term.photo_id is not None and term.weight > 0 and len(examples) + len(images) < MAX_QUERY_IMAGES:
            try:
                examples.append(artifact.candidates_for([artifact.row_of(term.photo_id)], [1.0])[0])
            except KeyError:
                continue
    avoid = tuple(query.avoid)
    if not images and not examples and not avoid:
        return None
    return RerankContext(images=images, examples=tuple(examples), avoid=avoid)


@runtime_checkable
class Reranker(Protocol):
    """Reorders candidates for a query. Must never raise for model trouble: fall back and say why."""

    name: str

    def rerank(
        self, query: str, candidates: Sequence[Candidate], k: int, *, context: RerankContext | None = None
    ) -> RerankOutcome:
        """Return the best `k` candidates in final order (`context`: query images and terms to avoid)."""
        ...


def clip_order(candidates: Sequence[Candidate], k: int) -> list[RankedResult]:
    """The first `k` candidates as they came from the index (the fallback every re-ranker shares)."""
    return [RankedResult(candidate=c, rank=i + 1) for i, c in enumerate(candidates[:k])]


class NoopReranker:
    """Keeps CLIP order. Used when no LLM is configured, and by evaluation of the retrieval stage alone."""

    name = "none"

    def rerank(
        self,
        query: str,  # noqa: ARG002 - protocol
        candidates: Sequence[Candidate],
        k: int,
        *,
        context: RerankContext | None = None,  # noqa: ARG002 - protocol
    ) -> RerankOutcome:
        return RerankOutcome(results=clip_order(candidates, k), applied=False, fallback_reason="disabled")
