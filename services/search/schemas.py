"""The service's public JSON shapes (OpenAPI documents them from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

RerankMode = Literal["auto", "on", "off"]
UnderstandMode = Literal["auto", "on", "off"]


class SearchRequest(BaseModel):
    """Body of `POST /search`; the same fields as the `GET /search` query parameters."""

    q: str = Field(..., description="What to look for, in plain words.", examples=["a foggy forest at dawn"])
    k: int = Field(4, description="How many results to return.")
    candidates: int = Field(10, description="How many nearest neighbours the re-ranker chooses from.")
    rerank: RerankMode = Field(
        "auto", description="auto: re-rank when a Gemini key is configured; on: required; off: CLIP order."
    )
    # -- query understanding and conversation (clipsearch.understand) --
    understand: UnderstandMode = Field(
        "auto",
        description="auto: Gemini reads the request into terms and filters unless it is a few plain words; on: "
        "always (409 when unavailable); off: search the text as typed.",
    )
    conversation_id: str | None = Field(
        None,
        description="The `conversation_id` of the previous answer: `q` then refines that query (a follow-up).",
    )
    remove: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Keys of parts of the conversation's query to take away (`understanding.parts[].key`); `q` may "
        "then be empty.",
    )


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
    reason: str | None = Field(None, description="The re-ranker's short reason, when it gave one.")


class RerankInfo(BaseModel):
    requested: RerankMode
    applied: bool
    fallback_reason: str | None = Field(
        None,
        description="Why CLIP order was served: disabled, not_requested, timeout, quota, overloaded, blocked, invalid_output, breaker_open, model_unavailable, error.",
    )
    detail: str | None = None
    model: str | None = Field(
        None, description="The model that answered (a fallback model when the configured one was not found)."
    )


class QueryPart(BaseModel):
    key: str = Field(..., description="Send it in `remove` to take this part away (`terms.1`, `filters.country`).")
    label: str = Field(..., examples=["Iceland", "2021-", "not: people"])
    kind: Literal["term", "filter"]


class UnderstandingInfo(BaseModel):
    """How the request was read: the query as understood, part by part, and why Gemini did not read it."""

    requested: UnderstandMode
    understood: bool = Field(..., description="True when Gemini's reading was used; false: searched as typed.")
    reason: str | None = Field(
        None,
        description="Why not: not_needed (a few plain words), not_requested, disabled, spend_guard, timeout, quota, "
        "overloaded, blocked, invalid_output, breaker_open, model_unavailable, error.",
    )
    detail: str | None = None
    summary: str = Field(..., examples=["Iceland, 2021-, landscape, not: people"])
    parts: list[QueryPart]
    changes: list[str] = Field(default_factory=list, description="What this turn changed: '+ night', '- snow'.")
    notes: list[str] = Field(default_factory=list, description="What was dropped from Gemini's answer, and why.")
    not_applied: list[str] = Field(
        default_factory=list, description="Parts this engine version could not apply to the search."
    )
    model: str | None = None
    cached: bool = False
    conversation: str | None = Field(None, description="Set when a conversation could not be continued, and why.")


class SearchResponse(BaseModel):
    query: str
    query_truncated: bool = Field(
        ..., description="True when the query was longer than CLIP's 77-token context and was cut."
    )
    results: list[SearchHit]
    timings_ms: dict[str, float]
    rerank: RerankInfo
    index_version: str
    stale: bool = Field(..., description="True when the registry was unreachable and a cached version is served.")
    request_id: str
    understanding: UnderstandingInfo | None = None
    conversation_id: str | None = Field(
        None, description="Send it back with the next request to refine this query (opaque, signed, expires)."
    )


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
