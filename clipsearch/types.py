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
    rank: int  # 1-based position in relevance order (CLIP order in vector mode; fused or BM25 order otherwise)
    image_url: str
    description: str | None = None
    photographer: str | None = None
    width: int | None = None
    height: int | None = None
    blur_hash: str | None = None
    submitted_at: str | None = None  # ISO date (UTC) the photo was submitted, when the index carries it
    downloads: int | None = None


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
class PageInfo:
    """Where a page sits in the ranked set, and what shaped that set (see `SearchEngine.search`)."""

    offset: int = 0  # results skipped before this page (in the set left after a cursor's exclusions)
    total: int | None = None  # results above the cut-off (after de-duplication) in the ranked set
    total_exact: bool = True  # False: the ranked set was cut at search.max_results, so `total` is a lower bound
    matched: int | None = None  # photos matching the filters (None: no filters, every photo)
    order: str = "relevance"  # this page's order: relevance, reranked, newest or most_downloaded
    relevance: str = "cosine"  # what relevance means in this mode: cosine, rrf (hybrid) or bm25 (keyword)
    below_cutoff: int = 0  # ranked photos dropped by min_score
    dropped_duplicates: int = 0  # ranked photos collapsed by dedupe
    fewer_than_k: str | None = None  # why the page is short: end_of_results, min_score, filters, no_keyword_match
    next_cursor: str | None = None  # pass as `cursor` for the next page; None when there is none
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    understood: dict[str, object] = field(default_factory=dict)  # how the query was read


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
    page: PageInfo = field(default_factory=PageInfo)
    understood: tuple[UnderstoodTerm, ...] = ()  # how each term of a composed query was read
