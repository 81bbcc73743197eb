"""`/search` (GET and POST) and `/images/{photo_id}`: validation, the batched query path, image serving."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import date
from functools import lru_cache, partial
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import ValidationError

from clipsearch.compose import gather_images, image_terms, query_kind, require_image_support
from clipsearch.image_input import ImageInputError, QueryImage
from clipsearch.images import image_path, is_safe_photo_id
from clipsearch.query import MAX_FILTER_VALUES, CursorError, Filters, Orientation, QueryError, SearchMode, SortOrder
from clipsearch.query import Query as ClipQuery
from clipsearch.rerank.thumbnails import make_thumbnail
from clipsearch.safe_fetch import FetchError
from clipsearch.settings import Settings
from clipsearch.types import SearchResult
from clipsearch.understand.turn import Turn
from clipsearch.unsplash import photo_image_url
from services.search.batching import ClientDisconnected
from services.search.index_manager import ServingIndex
from services.search.query_adapters import (
    BLANK_CHARS,
    AdapterError,
    Posted,
    from_body,
    from_get,
    max_offset,
    read_request,
    validation_detail,
)
from services.search.schemas import (
    ErrorResponse,
    PageResponse,
    RerankInfo,
    RerankMode,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UnderstandMode,
    Understood,
)
from services.search.state import ServiceState, ServingDep, StateDep, serving_index
from services.search.understanding import describe_turn, outcome_label, read_turn

THUMB_PX = 320
PHOTO_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # clipsearch.images.is_safe_photo_id, stated in the OpenAPI document
# BLANK_CHARS (services.search.query_adapters): what counts as blank around a text; QUERY_PATTERN states it in JSON
# Schema for clients and the contract fuzzer.
__all__ = ["BLANK_CHARS", "QUERY_PATTERN", "build_query", "document_limits", "router"]
# `near` = lat,lon,radius_km with lat in [-90, 90], lon in [-180, 180], radius in (0, 20000]: the documented pattern
# and the check are this one expression, so a client following the document is never refused for `near`.
_LAT = r"-?(?:90(?:\.0+)?|[1-8]?[0-9](?:\.[0-9]+)?)"
_LON = r"-?(?:180(?:\.0+)?|(?:1[0-7][0-9]|[1-9]?[0-9])(?:\.[0-9]+)?)"
_KM = r"(?:(?:[1-9][0-9]{0,3}|1[0-9]{4})(?:\.[0-9]+)?|20000(?:\.0+)?|0\.[0-9]*[1-9][0-9]*)"
NEAR_PATTERN = rf"^{_LAT},{_LON},{_KM}$"
QUERY_PATTERN = r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"  # at least one character that is not blank


# GET /search's parameters: anything else is a 422 naming it (FastAPI would silently ignore it).
FILTER_PARAMS = (
    "orientation",
    "color",
    "min_color_coverage",
    "photographer",
    "country",
    "city",
    "near",
    "submitted_from",
    "submitted_to",
    "camera_make",
    "camera_model",
    "featured",
    "min_width",
    "min_height",
)
GET_PARAMS = frozenset(
    {
        "q",
        "like",
        "not",
        "k",
        "candidates",
        "rerank",
        "mode",
        "offset",
        "cursor",
        "min_score",
        "sort",
        "dedupe",
        *FILTER_PARAMS,
    }
)


def _check_rerank(svc: ServiceState, query: ClipQuery) -> ClipQuery:
    if query.rerank == "on" and not svc.rerank_available:
        raise HTTPException(
            409,
            detail=f"rerank=on was requested but re-ranking is unavailable ({svc.reranker_status}); use rerank=auto or off",
        )
    return query


def build_query(svc: ServiceState, body: SearchRequest, files: dict[str, bytes] | None = None) -> ClipQuery:
    """The request -> the one `Query` value, within the operator's limits; a 422 names the field at fault.

    The terms come from `q`, `like`, `not`, `image_url`, `images` and `terms` (`query_adapters.from_body`); the
    filters, mode, paging, cut-off, sort and de-duplication ride along. Every bound here that does not depend on
    another field is also in the OpenAPI document (`document_limits`), so a client (or the contract fuzzer) that
    follows the document is never refused for it. Fewer candidates than results asked for is not an error: the
    re-ranker then chooses from k."""
    try:
        query = from_body(svc.settings, body, files)
    except AdapterError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from None
    return _check_rerank(svc, query)


def _constrain(node: dict[str, Any], **bounds: object) -> None:
    """Add bounds to a property's schema (to the matching branch of an `anyOf` such as `integer | null`)."""
    branches = node.get("anyOf", [node])
    for branch in branches:
        if branch.get("type") in ("integer", "string"):
            branch.update(bounds)
        elif branch.get("type") == "array" and isinstance(branch.get("items"), dict):
            branch["items"].update(bounds)  # a repeatable parameter: each value


def document_limits(openapi: dict[str, Any], settings: Settings) -> None:
    """Write the service's settings-dependent bounds (query length, k, candidates, offset) into its OpenAPI
    document, and `near`'s pattern (checked by `_near` with its own message)."""
    limits = settings.service
    bounds: dict[str, dict[str, object]] = {
        "q": {"minLength": 1, "maxLength": limits.max_query_chars, "pattern": QUERY_PATTERN},
        "k": {"minimum": 1, "maximum": limits.max_k},
        "candidates": {"minimum": 1, "maximum": limits.max_candidates},
        "offset": {"minimum": 0, "maximum": max_offset(settings)},
        "near": {"pattern": NEAR_PATTERN},
        # repeatable: each `not` is a text like q (at least one non-blank character), each `like` a photo id
        "not": {"minLength": 1, "maxLength": limits.max_query_chars, "pattern": QUERY_PATTERN},
        "like": {"pattern": PHOTO_ID_PATTERN},
    }
    get = openapi.get("paths", {}).get("/search", {}).get("get", {})
    for param in get.get("parameters", []):
        if param.get("name") in bounds:
            _constrain(param["schema"], **bounds[param["name"]])
    body = openapi.get("components", {}).get("schemas", {}).get("SearchRequest", {})
    post = openapi.get("paths", {}).get("/search", {}).get("post", {})
    form = post.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema", {})
    for schema in (body, form):  # the JSON body and the multipart form share the field rules
        for name, prop in schema.get("properties", {}).items():
            if name in bounds:
                _constrain(prop, **bounds[name])


def _near(value: str) -> dict[str, float]:
    if not re.fullmatch(NEAR_PATTERN, value):
        raise HTTPException(
            422,
            detail="near: give lat,lon,radius_km with lat -90..90, lon -180..180, radius 0..20000 km in plain "
            "decimals (e.g. near=64.1,-21.9,50)",
        )
    lat, lon, km = (float(v) for v in value.split(","))
    return {"lat": lat, "lon": lon, "radius_km": km}


def filters_from_params(params: dict[str, object]) -> Filters:
    """GET parameters -> Filters (`color` is the singular of `colors`; `near` is lat,lon,radius_km)."""
    fields = {("colors" if k == "color" else k): v for k, v in params.items() if v not in (None, [])}
    if isinstance(fields.get("near"), str):
        fields["near"] = _near(str(fields["near"]))
    try:
        return Filters.model_validate(fields)
    except ValidationError as exc:
        raise HTTPException(422, detail=validation_detail(exc, "filters.")) from None


def _rerank_outcome(requested: RerankMode, result: SearchResult) -> tuple[str | None, str]:
    """The response's `rerank.fallback_reason` (None when applied) and the metrics outcome label, from one rule."""
    if result.rerank_applied:
        return None, "applied"
    reason = "not_requested" if requested == "off" else result.rerank_fallback_reason
    return reason, reason or "disabled"


async def _run_search(
    svc: ServiceState, serving: ServingIndex, request: Request, query: ClipQuery, posted: Posted | None = None
) -> SearchResponse:
    """Rate limits; for a POST, query understanding and the conversation (Gemini off the event loop, within its
    own budget: the understood Query merged with the request's explicit fields); decode/fetch query images (off
    the event loop); then encode + compose + retrieve + page in the micro-batcher (a photo-id-only query on the
    direct thread); then re-rank page one (network: off the event loop). Every refusal is a 4xx with a reason,
    counted by query kind."""
    kind = query_kind(query)
    try:
        svc.limiter.check(request, reranked=query.rerank != "off" and svc.rerank_available)
        understood: tuple[Turn, UnderstandMode, float] | None = None
        if posted is not None:
            started = time.perf_counter()
            turn = await read_turn(
                svc.turns, posted.body, query, svc.turns.budget(), explicit_terms=posted.explicit_terms
            )
            understood = turn, posted.body.understand, (time.perf_counter() - started) * 1000.0
            query = turn.query
            kind = query_kind(query)
        return await _answer(svc, serving, request, query, kind, understood)
    except HTTPException as exc:
        svc.metrics.observe_query(kind, exc.status_code, None)
        raise
    except (QueryError, ImageInputError, FetchError) as exc:
        status = getattr(exc, "status", 422)
        svc.metrics.observe_query(kind, status, None)
        raise HTTPException(status, detail=str(exc)) from None


async def _answer(
    svc: ServiceState,
    serving: ServingIndex,
    request: Request,
    query: ClipQuery,
    kind: str,
    understood: tuple[Turn, UnderstandMode, float] | None = None,
) -> SearchResponse:
    engine = serving.engine
    start = time.perf_counter()
    images: dict[str, QueryImage] = {}
    input_ms = None
    if image_terms(query):
        require_image_support(engine.encoder, query)  # a torch-free replica refuses before fetching anything
        images = await asyncio.to_thread(gather_images, query, svc.image_limits, svc.fetcher)
        input_ms = (time.perf_counter() - start) * 1000.0
    try:
        if all(t.photo_id is not None for t in query.terms):
            # no encoder on the path ("more like this"): stored vectors and the index, without waiting for the
            # micro-batcher's company nor queueing behind text encodes
            got = await svc.batcher.retrieve_direct(engine, query)
        else:
            got = await svc.batcher.retrieve(
                engine, query, disconnected=partial(until_disconnected, request), images=images
            )
    except CursorError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except ClientDisconnected:
        raise HTTPException(499, detail="client closed the request before its query started") from None
    encoded = got.encoded
    if input_ms is not None:
        got.prepared.timings_ms = {"image_input": input_ms, **got.prepared.timings_ms}
    finish = partial(engine.finish, got.prepared, started_at=start)
    # re-ranking (and the query images' thumbnails it shows Gemini) runs off the event loop
    result: SearchResult = await asyncio.to_thread(finish) if got.prepared.pool else finish()
    top1 = result.results[0].candidate.score if result.results else None
    fallback_reason, outcome = _rerank_outcome(query.rerank, result)
    svc.metrics.observe_search(result.timings_ms, outcome, result.rerank_usage, top1)
    svc.metrics.observe_query(kind, 200, result.timings_ms.get("total"))
    if kind == "text":  # the drift reference is text queries: image and photo vectors would read as drift
        svc.drift.record(encoded.vector, top1)
    base = str(request.base_url).rstrip("/")
    hits = []
    for r in result.results:
        c = r.candidate
        hits.append(
            SearchHit(
                rank=r.rank,
                photo_id=c.photo_id,
                score=round(c.score, 6),
                clip_rank=c.rank,
                image_url=f"{base}/images/{c.photo_id}",
                thumbnail_url=f"{base}/images/{c.photo_id}?size=thumb",
                source_url=c.image_url,
                description=c.description,
                photographer=c.photographer,
                width=c.width,
                height=c.height,
                submitted_at=c.submitted_at,
                downloads=c.downloads,
                reason=r.reason,
            )
        )
    page = result.page
    understanding, conversation_id = None, None
    timings = result.timings_ms
    if understood is not None:
        turn, requested, understand_ms = understood
        svc.metrics.observe_understanding(outcome_label(turn), turn.usage)
        conversation_id, seal_notes = svc.turns.end(turn, [h.photo_id for h in hits])
        understanding = describe_turn(requested, turn, notes=seal_notes)
        timings = {"understand": understand_ms, **timings}
    return SearchResponse(
        query=query.text,
        query_truncated=result.query_truncated,
        understood=Understood.model_validate(page.understood) if page.understood else None,
        results=hits,
        page=PageResponse(
            offset=page.offset,
            k=query.k,
            returned=len(hits),
            total=page.total,
            total_exact=page.total_exact,
            matched=page.matched,
            order=page.order,
            relevance=page.relevance,
            below_cutoff=page.below_cutoff,
            dropped_duplicates=page.dropped_duplicates,
            fewer_than_k=page.fewer_than_k,
            next_cursor=page.next_cursor,
        ),
        facets=page.facets,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
        rerank=RerankInfo(
            requested=query.rerank,
            applied=result.rerank_applied,
            fallback_reason=fallback_reason,
            detail=result.rerank_detail,
            model=result.rerank_model or (svc.settings.rerank.model if svc.rerank_available else None),
        ),
        index_version=serving.index_version,
        stale=svc.index.stale,
        request_id=request.state.request_id,
        understanding=understanding,
        conversation_id=conversation_id,
    )


async def until_disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the request body, if any, was already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@lru_cache(maxsize=4096)
def _thumbnail(path: str, mtime: float) -> bytes:  # noqa: ARG001 - mtime is part of the cache key
    """A cached thumbnail of a local image (keyed by mtime, so a replaced file is re-read)."""
    return make_thumbnail(FilePath(path).read_bytes(), THUMB_PX)


SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "The cursor does not point into the served index version's results for this query; a "
        "`like` / photo_id term names a photo the served index does not hold; or (POST) the conversation_id is "
        "not one this service issued, or names no query to refine or remove from.",
    },
    409: {
        "model": ErrorResponse,
        "description": "rerank=on (or, POST, understand=on) was asked for and it is unavailable.",
    },
    429: {
        "model": ErrorResponse,
        "description": "This client's search or re-rank rate limit is reached (service.rate_limit_*).",
        "headers": {
            "Retry-After": {"description": "Seconds until a request is allowed.", "schema": {"type": "integer"}}
        },
    },
}

router = APIRouter(tags=["search"])
"""`/search` and `/images/{photo_id}`; `app.include_router(router)` wires them (see `app.create_app`)."""


@router.get(
    "/search",
    response_model=SearchResponse,
    tags=["search"],
    summary="Search images by text, by example photos ('like') and with things to avoid ('not')",
    responses=SEARCH_RESPONSES,
)
async def search_get(
    request: Request,
    svc: StateDep,
    serving: ServingDep,
    q: Annotated[
        str | None, Query(description="What to look for (weight 1).", examples=["a foggy forest at dawn"])
    ] = None,
    like: Annotated[
        list[str] | None,
        Query(
            description="A photo id of the served index: 'more like this' (repeatable; weight 1 each; the photo "
            "itself is left out of the results).",
            examples=["Xy3kP0aZ9bQ"],
        ),
    ] = None,
    not_: Annotated[
        list[str] | None,
        Query(alias="not", description="Something to avoid (repeatable; weight -1 each).", examples=["people"]),
    ] = None,
    k: Annotated[int | None, Query(description="Results to return (default: search.k).")] = None,
    candidates: Annotated[
        int | None, Query(description="Nearest neighbours to re-rank from (default: search.candidates).")
    ] = None,
    rerank: Annotated[RerankMode, Query(description="auto | on | off")] = "auto",
    mode: Annotated[SearchMode | None, Query(description="vector | hybrid | keyword (default: search.mode).")] = None,
    offset: Annotated[
        int, Query(description="Skip this many results (offset + k must fit in search.max_results).")
    ] = 0,
    cursor: Annotated[
        str | None, Query(max_length=4096, description="`page.next_cursor` of the previous page; empty means none.")
    ] = None,
    min_score: Annotated[
        float | None, Query(ge=-1, le=1, description="Drop results with a lower cosine score.")
    ] = None,
    sort: Annotated[SortOrder, Query(description="relevance | newest | most_downloaded")] = "relevance",
    dedupe: Annotated[bool, Query(description="Collapse near-duplicates to the best one.")] = False,
    orientation: Annotated[
        list[Orientation] | None,
        Query(max_length=MAX_FILTER_VALUES, description="landscape | portrait | square (repeat for OR)."),
    ] = None,
    color: Annotated[
        list[str] | None, Query(max_length=MAX_FILTER_VALUES, description="Colour keyword, e.g. blue (repeat for OR).")
    ] = None,
    min_color_coverage: Annotated[
        float | None, Query(ge=0, le=1, description="Share a colour must cover (default 0.1).")
    ] = None,
    photographer: Annotated[
        list[str] | None, Query(max_length=MAX_FILTER_VALUES, description="Photographer username.")
    ] = None,
    country: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    city: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    near: Annotated[str | None, Query(description="lat,lon,radius_km")] = None,
    submitted_from: Annotated[date | None, Query(description="YYYY-MM-DD, inclusive.")] = None,
    submitted_to: Annotated[date | None, Query(description="YYYY-MM-DD, inclusive.")] = None,
    camera_make: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    camera_model: Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)] = None,
    featured: Annotated[bool | None, Query()] = None,
    min_width: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    min_height: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> SearchResponse:
    unknown = sorted(set(request.query_params) - GET_PARAMS)
    if unknown:
        raise HTTPException(
            422, detail=f"{unknown[0]}: unknown parameter; known parameters are {', '.join(sorted(GET_PARAMS))}"
        )
    params = dict(locals())
    filters = filters_from_params({name: params[name] for name in FILTER_PARAMS})
    defaults = svc.settings.search
    try:
        query = from_get(
            svc.settings,
            q=q,
            like=like or [],
            not_=not_ or [],
            k=defaults.k if k is None else k,
            candidates=defaults.candidates if candidates is None else candidates,
            rerank=rerank,
            filters=filters,
            mode=mode,
            offset=offset,
            cursor=cursor,
            min_score=min_score,
            sort=sort,
            dedupe=dedupe,
        )
    except AdapterError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from None
    return await _run_search(svc, serving, request, _check_rerank(svc, query))


@router.post(
    "/search",
    response_model=SearchResponse,
    tags=["search"],
    summary="Search with a composed query: JSON (images as base64) or multipart (image files)",
    responses={
        **SEARCH_RESPONSES,
        400: {"model": ErrorResponse, "description": "The body could not be read (not UTF-8 or not parseable)."},
        413: {
            "model": ErrorResponse,
            "description": "The body is larger than service.max_body_bytes (JSON), or an image file is larger than "
            "inputs.max_image_bytes (multipart).",
        },
        415: {"model": ErrorResponse, "description": "Neither application/json nor multipart/form-data."},
    },
)
async def search_post(request: Request, svc: StateDep) -> SearchResponse:
    """The body is `SearchRequest` as JSON, or the same fields as a multipart form with image files (`image`);
    see the request body's examples. The answer's `understood` says how each term was read."""
    try:
        posted = await read_request(request, svc.settings)
    except AdapterError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from None
    # the body is read (and refused when bad) before readiness, as when FastAPI parsed it
    serving = await serving_index(svc)
    return await _run_search(svc, serving, request, _check_rerank(svc, posted.query), posted)


@router.get(
    "/images/{photo_id}",
    tags=["search"],
    summary="An indexed image (local cache or a redirect to Unsplash)",
    responses={200: {"content": {"image/jpeg": {}}}, 307: {}, 404: {"model": ErrorResponse}},
)
def image(
    photo_id: Annotated[str, Path(pattern=PHOTO_ID_PATTERN, description="An Unsplash photo id.")],
    serving: ServingDep,
    svc: StateDep,
    size: Annotated[str, Query(pattern="^(full|thumb)$")] = "full",
) -> Response:
    if not is_safe_photo_id(photo_id):
        raise HTTPException(422, detail="photo_id: not a valid Unsplash photo id")
    try:
        row = serving.engine.artifact.row_of(photo_id)
    except KeyError:
        raise HTTPException(404, detail=f"photo {photo_id} is not in the served index") from None
    images_dir = svc.settings.service.images_dir
    if images_dir is not None:
        local = image_path(images_dir, photo_id)  # photo_id is validated and known to the index: never a path
        if local.is_file():
            if size == "thumb":
                data = _thumbnail(str(local), local.stat().st_mtime)
                return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
            return FileResponse(local, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
    source = serving.engine.artifact.candidates_for([row], [0.0])[0].image_url
    width = THUMB_PX if size == "thumb" else svc.settings.dataset.image_width * 2
    return RedirectResponse(photo_image_url(source, width), status_code=307)
