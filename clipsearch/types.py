"""Plain data passed between encoder, index, re-ranker and the callers of `SearchEngine`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipsearch.compose import UnderstoodTerm


@dataclass(frozen=True)
class Candidate:
    """One photo returned by the vector index, with the metadata a caller needs to show it."""

    photo_id: str
    score: float  # cosine similarity between the query and the photo
    rank: int  # 1-based position in CLIP order
    image_url: str
    description: str | None = None
    photographer: str | None = None
    width: int | None = None
    height: int | None = None
    blur_hash: str | None = None


@dataclass(frozen=True)
class RankedResult:
    """A candidate in its final position, with the re-ranker's short reason when it gave one."""

    candidate: Candidate
    rank: int  # 1-based final position
    reason: str | None = None


@dataclass
class RerankOutcome:
    """What a re-ranker returned: the final order, whether it was applied and, if not, why."""

    results: list[RankedResult]
    applied: bool
    fallback_reason: str | None = None  # timeout, quota, overloaded, blocked, invalid_output, breaker_open, ...
    detail: str | None = None
    usage: dict[str, float] = field(default_factory=dict)  # prompt/output tokens, estimated cost
    model: str | None = None  # the model that answered (a fallback model when the primary was not found)


@dataclass
class SearchResult:
    """The answer to one query, with per-stage timings in milliseconds."""

    query: str
    results: list[RankedResult]
    timings_ms: dict[str, float]
    rerank_applied: bool
    rerank_fallback_reason: str | None
    query_truncated: bool
    index_version: str | None = None
    rerank_detail: str | None = None
    rerank_usage: dict[str, float] = field(default_factory=dict)
    rerank_model: str | None = None
    understood: tuple[UnderstoodTerm, ...] = ()  # how each term of a composed query was read
