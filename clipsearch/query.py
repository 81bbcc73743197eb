"""The composed query: one value that describes what a user asks, built by every entry point.

GET parameters, the JSON and multipart bodies of `POST /search`, the CLI, the chat page and (later) Gemini's
reading of a sentence are thin adapters onto `Query`; `SearchEngine` is the one thing that answers it. So the
rules live here once: what a term is, what a filter may say, which limits hold. Limits that an operator tunes
(query length, k, candidates) come from `ServiceSettings` and are checked by `check_limits`, so a hand-written
query and a machine-written one meet the same bounds.

How the engine reads it (see DESIGN.md, "The query, as it grows"):
- terms -> one query vector: the normalised weighted sum of the terms' unit vectors (text and images encoded by
  CLIP, a photo id by its stored vector); negative weights push away.
- filters -> an exact allowed-id selection over the index's metadata (AND across fields, OR within one).
- mode -> vector, keyword (BM25 over the photo's text) or hybrid (both, fused by reciprocal rank fusion).
- min_score, dedupe, sort, offset/cursor and k -> what comes back; rerank -> whether Gemini orders page one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import date
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from clipsearch.errors import ConfigError
from clipsearch.images import is_safe_photo_id

RerankMode = Literal["auto", "on", "off"]
SearchMode = Literal["vector", "hybrid", "keyword"]
Orientation = Literal["landscape", "portrait", "square"]
SortOrder = Literal["relevance", "newest", "most_downloaded"]


def _a_date(value: object) -> object:
    """A day as JSON spells it (YYYY-MM-DD) or a `date`: pydantic would also read 0 or "1600000000" as a timestamp."""
    if isinstance(value, date) or (isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value)):
        return value
    raise ValueError("must be a date written YYYY-MM-DD")


def a_number(value: object) -> object:
    """JSON numbers only: pydantic's lax mode would read `true` as 1 and "2" as 2, which the documented schema
    (type number / integer) forbids; an integral float such as 2.0 stays valid, as JSON Schema says."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a number")
    return value


Number = Annotated[float, BeforeValidator(a_number)]
Integer = Annotated[int, BeforeValidator(a_number)]
Day = Annotated[date, BeforeValidator(_a_date)]

MAX_TERMS = 8
MAX_WEIGHT = 10.0
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # decoded size of one uploaded image
MAX_FILTER_VALUES = 20  # values in one field's OR-list


class QueryError(ConfigError):
    """A query that cannot be answered as given; the message names the field (the API answers 422)."""


class CursorError(QueryError):
    """A `cursor` that does not point into this index version's results for this query (the API answers 404:
    the page it names is not there; the client starts again without it)."""

    status = 404


class UnknownPhotoError(QueryError):
    """A photo id term ("more like this") that the served index does not hold: the API answers 404, as
    `/images/{photo_id}` does for the same id."""

    status = 404


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Term(_Strict):
    """One thing to look for (or, with a negative weight, to look away from): exactly one of the four sources."""

    text: str | None = Field(None, description="Words to look for.", examples=["a foggy forest at dawn"])
    image: bytes | None = Field(
        None,
        description="An example image (JPEG, PNG, WebP or GIF's first frame; at most inputs.max_image_bytes and "
        "inputs.max_image_pixels); base64 in JSON, a file part in multipart.",
    )
    image_url: str | None = Field(
        None,
        description="An example image fetched from an http(s) URL (public addresses only, timeouts, byte cap).",
    )
    photo_id: str | None = Field(
        None,
        description="A photo of the served index ('more like this'); its stored vector is used and the photo "
        "itself is left out of the results.",
    )
    weight: Number = Field(
        1.0,
        ge=-MAX_WEIGHT,
        le=MAX_WEIGHT,
        description="How much this term counts; negative pushes results away from it (e.g. -1 for 'not people').",
        examples=[1.0, -1.0, 2.0],
    )

    @field_validator("image", mode="before")
    @classmethod
    def _decode_base64(cls, value: object) -> object:
        """JSON carries images as base64 text; multipart adapters pass raw bytes."""
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("image: not valid base64") from exc
        if isinstance(value, bytes) and len(value) > MAX_IMAGE_BYTES:
            raise ValueError(f"image: {len(value)} bytes; the limit is {MAX_IMAGE_BYTES}")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Term:
        given = [n for n in ("text", "image", "image_url", "photo_id") if getattr(self, n) not in (None, b"", "")]
        if len(given) != 1:
            raise ValueError(
                "a term has exactly one of text, image, image_url or photo_id"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.weight == 0:
            raise ValueError("weight: 0 would ignore the term; use a positive or negative weight")
        if self.text is not None and not self.text.strip():
            raise ValueError("text: empty; type a few words describing the image")
        if self.image_url is not None and not self.image_url.startswith(("http://", "https://")):
            raise ValueError("image_url: must be an http(s) URL")
        if self.photo_id is not None and not is_safe_photo_id(self.photo_id):
            raise ValueError("photo_id: not a valid Unsplash photo id")
        return self

    @property
    def kind(self) -> Literal["text", "image", "image_url", "photo_id"]:
        if self.text is not None:
            return "text"
        if self.image is not None:
            return "image"
        return "image_url" if self.image_url is not None else "photo_id"


class GeoRadius(_Strict):
    """Photos taken within `radius_km` of a point (great-circle distance; photos without coordinates never match)."""

    lat: Number = Field(..., ge=-90, le=90)
    lon: Number = Field(..., ge=-180, le=180)
    radius_km: Number = Field(..., gt=0, le=20_000)


def _values(max_len: int = MAX_FILTER_VALUES) -> object:
    return Field(None, min_length=1, max_length=max_len)


class Filters(_Strict):
    """Metadata filters: AND across fields, OR within one field's list. Unknown fields are rejected (422)."""

    orientation: Annotated[list[Orientation] | None, _values()] = None
    colors: Annotated[list[str] | None, _values()] = Field(
        None, description="Colour keywords from Unsplash Lite's colors table (e.g. 'blue')."
    )
    min_color_coverage: Number = Field(
        0.1, ge=0, le=1, description="Share of the photo a colour must cover to count (with `colors`)."
    )
    photographer: Annotated[list[str] | None, _values()] = Field(None, description="Photographer usernames.")
    country: Annotated[list[str] | None, _values()] = None
    city: Annotated[list[str] | None, _values()] = None
    near: GeoRadius | None = None
    submitted_from: Day | None = Field(None, description="Submitted on or after this day.")
    submitted_to: Day | None = Field(
        None, description="Submitted on or before this day (before submitted_from: an empty window, nothing matches)."
    )
    camera_make: Annotated[list[str] | None, _values()] = None
    camera_model: Annotated[list[str] | None, _values()] = None
    featured: StrictBool | None = None  # strict: 0 / "yes" are refused, not read as booleans
    # bounds before the validator inside one Annotated: written as `Integer | None = Field(ge=...)`, pydantic puts
    # `ge` (not `minimum`) in the JSON schema, so clients could not see them
    min_width: Annotated[int, Field(ge=1, le=100_000), BeforeValidator(a_number)] | None = None
    min_height: Annotated[int, Field(ge=1, le=100_000), BeforeValidator(a_number)] | None = None

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True, exclude={"min_color_coverage"})


class Query(_Strict):
    """Everything a user asks, in one value."""

    terms: list[Term] = Field(..., min_length=1, max_length=MAX_TERMS)
    filters: Filters = Field(default_factory=Filters)
    mode: SearchMode = Field(
        "vector", description="vector: CLIP; keyword: BM25 over the photo's text; hybrid: both, fused."
    )
    k: int = Field(4, ge=1, description="How many results to return (one page).")
    candidates: int = Field(10, ge=1, description="How many nearest neighbours the re-ranker chooses from.")
    offset: int = Field(0, ge=0, le=10_000, description="Skip this many results (page = offset / k).")
    cursor: str | None = Field(
        None,
        max_length=4096,
        description="Opaque position returned by the previous page as `next_cursor` (`offset`, when also given, "
        "skips that many more); it "
        "also skips what a re-ranked first page showed.",
    )
    min_score: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Drop results whose cosine score is below this (results may then be fewer than k).",
    )
    sort: SortOrder = Field(
        "relevance",
        description="relevance (the mode's order); newest (submitted_at) or most_downloaded, applied to the set "
        "above the cut-off (at most search.max_results photos).",
    )
    dedupe: bool = Field(
        False,
        description="Collapse near-duplicate photos (image vectors with cosine >= search.dedupe_threshold, default "
        "0.95) to the best-ranked one.",
    )
    rerank: RerankMode = Field("auto", description="auto: re-rank when a Gemini key is configured; on; off.")

    @model_validator(mode="after")
    def _coherent(self) -> Query:
        if not any(t.weight > 0 for t in self.terms):
            raise ValueError("terms: at least one term needs a positive weight (negative terms only push away)")
        if self.mode == "keyword" and not any(t.kind == "text" for t in self.terms):
            raise ValueError("mode keyword needs a text term")
        return self

    @classmethod
    def from_text(cls, text: str, **fields: object) -> Query:
        """The plain query every entry point started with: one text term."""
        return cls(terms=[Term(text=text)], **fields)

    @property
    def text(self) -> str:
        """The positive text terms joined: what a keyword index and a re-ranker read as 'the query'."""
        return " ".join(t.text for t in self.terms if t.text is not None and t.weight > 0)

    @property
    def avoid(self) -> list[str]:
        """Negative text terms: what the re-ranker is told to avoid."""
        return [t.text for t in self.terms if t.text is not None and t.weight < 0]


def check_limits(query: Query, *, max_query_chars: int, max_k: int, max_candidates: int) -> None:
    """The operator's limits (ServiceSettings); a QueryError names the field that exceeds one."""
    for i, term in enumerate(query.terms):
        if term.text is not None and len(term.text.strip()) > max_query_chars:
            raise QueryError(
                f"terms[{i}].text: the text is {len(term.text.strip())} characters; the limit is {max_query_chars}"
            )
    if query.k > max_k:
        raise QueryError(f"k: must be between 1 and {max_k}")
    if query.candidates > max_candidates:
        raise QueryError(f"candidates: must be between 1 and {max_candidates}")
    if query.candidates < query.k:
        raise QueryError(f"candidates ({query.candidates}) must be at least k ({query.k})")


def query_data(query: Query, *, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, object]:
    """The query as JSON-able data with every uploaded image replaced by `sha256:<hex>` of its bytes: what cache
    keys and cursor fingerprints are made of, so an image's megabytes never go into a key (and two uploads of
    the same bytes share one). `exclude`: top-level fields to leave out."""
    spec: dict[str, object] = dict.fromkeys(exclude, True)
    spec["terms"] = {"__all__": {"image"}}
    data = query.model_dump(mode="json", exclude=spec)  # type: ignore[arg-type]
    for term, raw in zip(data["terms"], query.terms, strict=True):
        if raw.image is not None:
            term["image"] = "sha256:" + hashlib.sha256(raw.image).hexdigest()
    return data


def query_key(query: Query, *, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """`query_data` as canonical JSON: two queries share a key only when nothing (but `exclude`) differs."""
    return json.dumps(query_data(query, exclude=exclude), sort_keys=True, separators=(",", ":"))


def query_fingerprint(query: Query, *, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """A short hash of `query_key` (cursors carry it)."""
    return hashlib.sha256(query_key(query, exclude=exclude).encode()).hexdigest()[:16]


# Filter fields that take a list (OR within the field); `color` is accepted as the singular of `colors`.
LIST_FILTERS = frozenset({"orientation", "colors", "photographer", "country", "city", "camera_make", "camera_model"})
FILTER_ALIASES = {"color": "colors", "colour": "colors", "colours": "colors"}


# Filter fields whose command-line string is read as a number or boolean first (dates stay strings: 2021 is a year).
TYPED_FILTERS = frozenset({"min_color_coverage", "min_width", "min_height", "featured"})


def scalar_from_text(value: str) -> object:
    """A command-line or form value as the JSON value it spells (numbers and booleans): the models take JSON types."""
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def filters_from_pairs(pairs: list[str]) -> Filters:
    """`key=value` strings (the CLI's repeatable `--filter`) -> Filters. A list field repeated is an OR; a value
    may also be comma-separated (`orientation=landscape,square`); `near=lat,lon,radius_km`. A QueryError names
    the field that is unknown or bad."""
    fields: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = FILTER_ALIASES.get(key.strip(), key.strip())
        if not sep or not key:
            raise QueryError(f"filter {pair!r}: write key=value, e.g. orientation=landscape")
        if key not in Filters.model_fields:
            raise QueryError(f"filters.{key}: unknown filter; known filters are {', '.join(Filters.model_fields)}")
        if key in LIST_FILTERS:
            existing = fields.setdefault(key, [])
            assert isinstance(existing, list)
            existing.extend(v.strip() for v in value.split(",") if v.strip())
        elif key == "near":
            parts = value.split(",")
            if len(parts) != 3:
                raise QueryError("filters.near: write near=lat,lon,radius_km (e.g. near=64.1,-21.9,50)")
            fields[key] = dict(zip(("lat", "lon", "radius_km"), map(scalar_from_text, parts), strict=True))
        else:
            fields[key] = scalar_from_text(value) if key in TYPED_FILTERS else value.strip()
    try:
        return Filters.model_validate(fields)
    except ValidationError as exc:
        named = [f"filters.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise QueryError("; ".join(named)) from None
