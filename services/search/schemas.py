"""The service's public JSON shapes (OpenAPI documents them from here)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from clipsearch.query import Filters, Integer, SearchMode, SortOrder, a_number

RerankMode = Literal["auto", "on", "off"]


class SearchRequest(BaseModel):
    """Body of `POST /search`; the same fields as the `GET /search` query parameters (filters as an object).

    An unknown field, here or in `filters`, is a 422 that names it. The route turns this into one
    `clipsearch.query.Query`, the value every entry point builds.
    """

    model_config = ConfigDict(extra="forbid")

    q: str = Field(..., description="What to look for, in plain words.", examples=["a foggy forest at dawn"])
    k: Integer = Field(4, description="How many results to return.")
    candidates: Integer = Field(10, description="How many nearest neighbours the re-ranker chooses from.")
    rerank: RerankMode = Field(
        "auto", description="auto: re-rank when a Gemini key is configured; on: required; off: CLIP order."
    )
    mode: SearchMode | None = Field(None, description="vector | hybrid | keyword (default: search.mode).")
    filters: Filters = Field(default_factory=Filters, description="Metadata filters: AND across fields, OR within.")
    offset: Integer = Field(0, ge=0, description="Skip this many results (offset + k must fit in search.max_results).")
    cursor: str | None = Field(
        None,
        max_length=4096,
        description="`page.next_cursor` of the previous page; empty means none. A cursor from another index version "
        "or another query is a 404.",
    )
    min_score: Annotated[float, Field(ge=-1, le=1), BeforeValidator(a_number)] | None = Field(
        None, description="Drop results whose cosine score is below this."
    )
    sort: SortOrder = Field("relevance", description="relevance | newest | most_downloaded.")
    dedupe: StrictBool = Field(False, description="Collapse near-duplicate photos to the best one.")


class SearchHit(BaseModel):
    rank: int = Field(..., description="1-based final position.")
    photo_id: str
    score: float = Field(..., description="Cosine similarity between the query and the image (CLIP).")
    clip_rank: int = Field(..., description="Position in CLIP order before re-ranking.")
    image_url: str = Field(..., description="This service's URL for the image (`/images/{photo_id}`).")
    thumbnail_url: str = Field(..., description="A small version of the image for grids.")
    source_url: str = Field(..., description="The original Unsplash image URL.")
    description: str | None = None
    photographer: str | None = None
    width: int | None = None
    height: int | None = None
    submitted_at: str | None = Field(None, description="The day the photo was submitted to Unsplash (UTC).")
    downloads: int | None = None
    reason: str | None = Field(None, description="The re-ranker's short reason, when it gave one.")


class RerankInfo(BaseModel):
    requested: RerankMode
    applied: bool
    fallback_reason: str | None = Field(
        None,
        description="Why CLIP order was served: disabled, not_requested, timeout, quota, overloaded, blocked, invalid_output, breaker_open, model_unavailable, budget (the spend guard's limit is reached), error.",
    )
    detail: str | None = None
    model: str | None = Field(
        None, description="The model that answered (a fallback model when the configured one was not found)."
    )


class PageResponse(BaseModel):
    """Where this page sits in the ranked set and what shaped it."""

    offset: int
    k: int
    returned: int = Field(..., description="Results on this page (fewer than k at the end or under a cut-off).")
    total: int | None = Field(None, description="Results above the cut-off (after de-duplication).")
    total_exact: bool = Field(True, description="False: `total` is a lower bound (the ranked set is capped).")
    matched: int | None = Field(None, description="Photos matching the filters (null: no filters).")
    order: str = Field(..., description="This page's order: relevance, reranked, newest or most_downloaded.")
    relevance: str = Field(..., description="What relevance means in this mode: cosine, rrf or bm25.")
    below_cutoff: int = Field(0, description="Ranked photos dropped by min_score.")
    dropped_duplicates: int = Field(0, description="Ranked photos collapsed by dedupe.")
    fewer_than_k: str | None = Field(
        None, description="Why the page is short: end_of_results, min_score, filters or no_keyword_match."
    )
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null when there is none.")


class SearchResponse(BaseModel):
    query: str
    query_truncated: bool = Field(
        ..., description="True when the query was longer than CLIP's 77-token context and was cut."
    )
    results: list[SearchHit]
    page: PageResponse
    facets: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Counts per orientation and per top colour over the ranked set."
    )
    understood: dict[str, Any] = Field(
        default_factory=dict, description="How the query was read: mode, terms, filters, sort, cut-off, search path."
    )
    timings_ms: dict[str, float]
    rerank: RerankInfo
    index_version: str
    stale: bool = Field(..., description="True when the registry was unreachable and a cached version is served.")
    request_id: str


class ReadyResponse(BaseModel):
    ready: bool
    reason: str | None = None
    index_version: str | None = None
    registry_version: str | None = Field(None, description="The MLflow model version being served.")
    stale: bool = False
    index_size: int | None = None
    model: str | None = None
    reranker: str | None = Field(
        None,
        description="Which Gemini model answers, or `unavailable: <model> was not found` (retired or renamed). "
        "Readiness does not depend on it: CLIP-only search still serves, so /readyz stays 200.",
    )


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = None


class OverloadedResponse(ErrorResponse):
    """503 from admission control: why, and how long to wait (also in the Retry-After header)."""

    reason: str = Field(description="queue_full, deadline or expired")
    retry_after_s: int
    predicted_wait_ms: float | None = None


class DriftResponse(BaseModel):
    available: bool
    reason: str | None = None
    drift_score: float | None = None
    drift_detected: bool | None = None
    method: str | None = None
    threshold: float | None = None
    n_current: int | None = None
    n_reference: int | None = None
    computed_at: str | None = None
    index_version: str | None = None
