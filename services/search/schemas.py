"""The service's public JSON shapes (OpenAPI documents them from here)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from clipsearch.query import Term

RerankMode = Literal["auto", "on", "off"]


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
    k: int | None = Field(None, description="How many results to return (default: search.k).", examples=[4])
    candidates: int | None = Field(
        None,
        description="How many nearest neighbours the re-ranker chooses from (default: search.candidates).",
        examples=[10],
    )
    rerank: RerankMode = Field(
        "auto", description="auto: re-rank when a Gemini key is configured; on: required; off: CLIP order."
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


class SearchResponse(BaseModel):
    query: str = Field(..., description="The positive text terms joined (empty for a query by image only).")
    query_truncated: bool = Field(
        ..., description="True when the query was longer than CLIP's 77-token context and was cut."
    )
    understood: Understood | None = None
    results: list[SearchHit]
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
