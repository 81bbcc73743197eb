"""`/search` (GET and POST) and `/images/{photo_id}`: validation, the batched query path, image serving."""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from clipsearch.compose import QueryVector, gather_images, image_terms, query_kind
from clipsearch.image_input import ImageInputError, QueryImage
from clipsearch.images import image_path, is_safe_photo_id
from clipsearch.query import Query as SearchQuery
from clipsearch.query import QueryError
from clipsearch.rerank.base import rerank_context
from clipsearch.rerank.thumbnails import make_thumbnail
from clipsearch.safe_fetch import FetchError
from clipsearch.types import SearchResult
from clipsearch.unsplash import photo_image_url
from services.search.index_manager import ServingIndex
from services.search.query_adapters import AdapterError, from_get, from_request
from services.search.schemas import (
    ErrorResponse,
    RerankInfo,
    RerankMode,
    SearchHit,
    SearchResponse,
    Understood,
    UnderstoodTerm,
)
from services.search.state import ServiceState, ServingDep, StateDep

THUMB_PX = 320


def _check_rerank(svc: ServiceState, rerank: RerankMode) -> None:
    if rerank == "on" and not svc.rerank_available:
        raise HTTPException(
            409,
            detail=f"rerank=on was requested but re-ranking is unavailable ({svc.reranker_status}); use rerank=auto or off",
        )


def _rerank_outcome(requested: RerankMode, result: SearchResult) -> tuple[str | None, str]:
    """The response's `rerank.fallback_reason` (None when applied) and the metrics outcome label, from one rule."""
    if result.rerank_applied:
        return None, "applied"
    reason = "not_requested" if requested == "off" else result.rerank_fallback_reason
    return reason, reason or "disabled"


async def _run_search(svc: ServiceState, serving: ServingIndex, request: Request, query: SearchQuery) -> SearchResponse:
    """Decode/fetch images (off the event loop), then encode + compose + search in the micro-batcher, then
    re-rank (network: off the event loop). Every refusal is a 4xx with a reason."""
    kind = query_kind(query)
    try:
        return await _answer(svc, serving, request, query, kind)
    except HTTPException as exc:
        svc.metrics.observe_query(kind, exc.status_code, None)
        raise
    except (QueryError, ImageInputError, FetchError) as exc:
        status = getattr(exc, "status", 422)
        svc.metrics.observe_query(kind, status, None)
        raise HTTPException(status, detail=str(exc)) from None


async def _answer(
    svc: ServiceState, serving: ServingIndex, request: Request, query: SearchQuery, kind: str
) -> SearchResponse:
    _check_rerank(svc, query.rerank)
    engine = serving.engine
    start = time.perf_counter()
    images: dict[str, QueryImage] = {}
    input_ms = None
    if image_terms(query):
        images = await asyncio.to_thread(gather_images, query, svc.image_limits, svc.fetcher)
        input_ms = (time.perf_counter() - start) * 1000.0
    depth = max(query.k, query.candidates)
    if all(t.photo_id is not None for t in query.terms):
        # no encoder on the path ("more like this"): stored vectors and one index search, without waiting for
        # the micro-batcher's company or queueing behind text encodes
        got = await svc.batcher.retrieve_direct(engine, query, depth)
    else:
        got = await svc.batcher.retrieve_query(engine, query, images, depth)
    encoded = got.encoded
    timings = {**({"image_input": input_ms} if input_ms is not None else {}), **got.timings_ms}
    use_rerank = query.rerank != "off" and svc.rerank_available

    def rank() -> SearchResult:
        # the query images' thumbnails for the re-ranker are made here, off the event loop
        context = rerank_context(query, encoded, engine.artifact) if use_rerank else None
        return engine.rank(
            query.text,
            encoded,
            got.pool,
            k=query.k,
            rerank=use_rerank,
            started_at=start,
            timings_ms=timings,
            context=context,
        )

    result: SearchResult = await asyncio.to_thread(rank) if use_rerank else rank()
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
                reason=r.reason,
            )
        )
    return SearchResponse(
        query=query.text,
        query_truncated=result.query_truncated,
        understood=understood(kind, encoded),
        results=hits,
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
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
    )


def understood(kind: str, encoded: QueryVector) -> Understood:
    """The response's echo of the query (see `clipsearch.compose.UnderstoodTerm`)."""
    terms = [UnderstoodTerm(**t.as_dict()) for t in encoded.terms]
    return Understood(
        kind=kind,
        terms=terms,
        excluded=list(encoded.exclude),
        truncated=[i for i, t in enumerate(terms) if t.truncated],
    )


@lru_cache(maxsize=4096)
def _thumbnail(path: str, mtime: float) -> bytes:
    """A cached thumbnail of a local image (keyed by mtime, so a replaced file is re-read)."""
    return make_thumbnail(Path(path).read_bytes(), THUMB_PX)


router = APIRouter(tags=["search"])
"""`/search` and `/images/{photo_id}`; `app.include_router(router)` wires them (see `app.create_app`)."""


@router.get(
    "/search",
    response_model=SearchResponse,
    tags=["search"],
    summary="Search images by text, by example photos ('like') and with things to avoid ('not')",
    responses={422: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
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
) -> SearchResponse:
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
        )
    except AdapterError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from None
    return await _run_search(svc, serving, request, query)


@router.post(
    "/search",
    response_model=SearchResponse,
    tags=["search"],
    summary="Search with a composed query: JSON (images as base64) or multipart (image files)",
    responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def search_post(request: Request, svc: StateDep, serving: ServingDep) -> SearchResponse:
    """The body is `SearchRequest` as JSON, or the same fields as a multipart form with image files (`image`);
    see the request body's examples. The answer's `understood` says how each term was read."""
    try:
        query = await from_request(request, svc.settings)
    except AdapterError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from None
    return await _run_search(svc, serving, request, query)


@router.get(
    "/images/{photo_id}",
    tags=["search"],
    summary="An indexed image (local cache or a redirect to Unsplash)",
    responses={200: {"content": {"image/jpeg": {}}}, 307: {}, 404: {"model": ErrorResponse}},
)
def image(
    photo_id: str,
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
