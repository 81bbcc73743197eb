"""The service's public JSON shapes (OpenAPI documents them from here)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from clipsearch.query import Filters, Integer, SearchMode, SortOrder, Term, a_number
from clipsearch.understand.conversation import MAX_TOKEN_CHARS

RerankMode = Literal["auto", "on", "off"]
UnderstandMode = Literal["auto", "on", "off"]


def _from_base64(value: object) -> object:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not valid base64") from exc
    return value


Base64Bytes = Annotated[bytes, BeforeValidator(_from_base64)]


class SearchRequest(BaseModel):
    """Body of `POST /search` (JSON; the same fields as multipart form fields). Give any mix of `q`, `like`,
    `not`, `image_url`, `images` and `terms`; together they are the query's terms (at most 8). The query vector
    is the normalised weighted sum of the terms' unit vectors (negative weights push away)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    q: str | None = Field(
        None, description="What to look for, in plain words (weight 1).", examples=["a foggy forest at dawn"]
    )
    like: list[str] = Field(
        default_factory=list,
        description="Photo ids of the served index: 'more like this' (weight 1 each; the photo itself is left out).",
        examples=[["Xy3kP0aZ9bQ"]],
    )
    not_: list[str] = Field(
        default_factory=list,
        alias="not",
        description="Things to avoid (a text term with weight -1 each; CLIP does not understand 'without').",
        examples=[["people"]],
    )
    image_url: list[str] = Field(
        default_factory=list,
        description="Example images by http(s) URL (fetched with timeouts and a byte cap; public addresses only).",
        examples=[["https://images.unsplash.com/photo-1?w=400"]],
    )
    images: list[Base64Bytes] = Field(
        default_factory=list,
        description="Example images, base64 (JPEG, PNG, WebP or GIF first frame), weight 1 each.",
    )
    terms: list[Term | dict[str, Any]] | None = Field(
        None,
        description="Weighted terms, each exactly one of text, image (base64), image_url or photo_id, with a weight "
        'in [-10, 10] (default 1). In a multipart form a term may be {"file": "<part name>", "weight": 2}.',
        examples=[[{"text": "snow", "weight": 2}, {"photo_id": "Xy3kP0aZ9bQ"}, {"text": "people", "weight": -1}]],
    )
    k: Integer | None = Field(None, description="How many results to return (default: search.k).", examples=[4])
    candidates: Integer | None = Field(
        None,
        description="How many nearest neighbours the re-ranker chooses from (default: search.candidates).",
        examples=[10],
    )
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
    # -- query understanding and conversation (clipsearch.understand) --
    understand: UnderstandMode = Field(
        "auto",
        description="auto: Gemini reads `q` into terms (negative and 'more like' ones too) and filters unless it is a "
        "few plain words; on: always (409 when unavailable); off: search the text as typed. What the request gives "
        "explicitly (like, not, images, terms, filters, mode, paging, k, ...) wins over what was understood.",
    )
    conversation_id: str | None = Field(
        None,
        max_length=MAX_TOKEN_CHARS,
        description="The `conversation_id` of the previous answer: `q` then refines that query (a follow-up); "
        "without `q`, the conversation's query is searched again (e.g. with a `cursor` or `remove`). One this "
        "service did not issue is a 404.",
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


class UnderstoodTerm(BaseModel):
    """One term as the service read it."""

    kind: Literal["text", "image", "image_url", "photo_id"]
    weight: float = Field(..., description="As given; negative pushes away.", examples=[1.0])
    share: float = Field(
        ..., description="weight / sum of |weights|: this term's part of the query vector.", examples=[0.5]
    )
    text: str | None = None
    photo_id: str | None = None
    image_url: str | None = None
    image: str | None = Field(None, description="What the image was, e.g. 'PNG 640x480, 20512 bytes'.")
    truncated: bool = Field(False, description="A text longer than CLIP's 77-token context: only its start was used.")
    notes: list[str] = Field(default_factory=list, description="e.g. 'EXIF orientation applied', 'first of 12 frames'.")


class Understood(BaseModel):
    """How the query was understood: its kind, its terms with their weights, what was cut and left out."""

    kind: Literal["text", "image", "photo_id", "composed"] = Field(..., description="The metrics label.")
    terms: list[UnderstoodTerm]
    rule: str = Field(
        "normalised weighted sum of the terms' unit vectors", description="How the terms became one query vector."
    )
    excluded: list[str] = Field(
        default_factory=list, description="Photos left out of the results (the photos of `like` terms)."
    )
    truncated: list[int] = Field(default_factory=list, description="Indexes of the text terms that were cut.")
    mode: SearchMode = Field("vector", description="vector | hybrid | keyword: the candidate lists used.")
    filters: dict[str, Any] = Field(default_factory=dict, description="The filters applied (empty: none).")
    sort: SortOrder = "relevance"
    min_score: float | None = None
    dedupe: bool = False
    vector_search: str = Field(
        "none", description="How the vector list was searched: index, brute_force, masked_scan (none: keyword mode)."
    )
    keyword_terms: list[str] | None = Field(None, description="The words the keyword index matched (keyword, hybrid).")
    fusion: str | None = Field(None, description="How the lists were fused (hybrid), e.g. rrf(k=60).")


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
        default_factory=list,
        description="Parts the engine could not apply to the search (empty: the engine answers the whole "
        "understood query, terms and filters).",
    )
    model: str | None = None
    cached: bool = False
    conversation: str | None = Field(None, description="Set when a conversation could not be continued, and why.")


class SearchResponse(BaseModel):
    query: str = Field(..., description="The positive text terms joined (empty for a query by image only).")
    query_truncated: bool = Field(
        ..., description="True when the query was longer than CLIP's 77-token context and was cut."
    )
    understood: Understood | None = Field(
        None, description="How the query was read: kind, terms and weights, exclusions, mode, filters, search path."
    )
    results: list[SearchHit]
    page: PageResponse
    facets: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Counts per orientation and per top colour over the ranked set."
    )
    timings_ms: dict[str, float]
    rerank: RerankInfo
    index_version: str
    stale: bool = Field(..., description="True when the registry was unreachable and a cached version is served.")
    request_id: str
    understanding: UnderstandingInfo | None = Field(
        None,
        description="POST only: how Gemini read `q` (parts to remove by key, changes, notes, fallback reason); "
        "`understood` above is the resulting query as the engine ran it. Null for GET.",
    )
    conversation_id: str | None = Field(
        None,
        description="POST only: send it back with the next request to refine this query (opaque, signed, expires).",
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
