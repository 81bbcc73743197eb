"""`/search` (GET and POST) and `/images/{photo_id}`: validation, the batched query path, image serving."""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import ValidationError

from clipsearch.images import image_path, is_safe_photo_id
from clipsearch.query import Query as ClipQuery
from clipsearch.rerank.thumbnails import make_thumbnail
from clipsearch.types import SearchResult
from clipsearch.unsplash import photo_image_url
from services.search.index_manager import ServingIndex
from services.search.schemas import (
    ErrorResponse,
    RerankInfo,
    RerankMode,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from services.search.state import ServiceState, ServingDep, StateDep
from services.search.understanding import describe_turn, outcome_label, read_turn, text_for_engine

THUMB_PX = 320


def _validate_query(svc: ServiceState, q: str, k: int, candidates: int, rerank: RerankMode) -> str:
    limits = svc.settings.service
    text = q.strip()
    if not text:
        raise HTTPException(422, detail="q: the query is empty; type a few words describing the image")
    if len(text) > limits.max_query_chars:
        raise HTTPException(
            422, detail=f"q: the query is {len(text)} characters; the limit is {limits.max_query_chars}"
        )
    if not 1 <= k <= limits.max_k:
        raise HTTPException(422, detail=f"k: must be between 1 and {limits.max_k}")
    if not 1 <= candidates <= limits.max_candidates:
        raise HTTPException(422, detail=f"candidates: must be between 1 and {limits.max_candidates}")
    if candidates < k:
        raise HTTPException(422, detail=f"candidates ({candidates}) must be at least k ({k})")
    if rerank == "on" and not svc.rerank_available:
        raise HTTPException(
            409,
            detail=f"rerank=on was requested but re-ranking is unavailable ({svc.reranker_status}); use rerank=auto or off",
        )
    return text


def _rerank_outcome(requested: RerankMode, result: SearchResult) -> tuple[str | None, str]:
    """The response's `rerank.fallback_reason` (None when applied) and the metrics outcome label, from one rule."""
    if result.rerank_applied:
        return None, "applied"
    reason = "not_requested" if requested == "off" else result.rerank_fallback_reason
    return reason, reason or "disabled"


async def _run_search(
    svc: ServiceState, serving: ServingIndex, request: Request, body: SearchRequest
) -> SearchResponse:
    """Validate, read the request (understanding, conversation), then encode + search in the micro-batcher, then
    re-rank (network: off the event loop)."""
    budget, t_read = svc.turns.budget(), time.perf_counter()
    if body.q.strip() or not (body.conversation_id or body.remove):
        _validate_query(svc, body.q, body.k, body.candidates, body.rerank)
    turn = await read_turn(svc.turns, body, _base_query(body), budget)
    text, not_applied = text_for_engine(turn.query)
    text = _validate_query(svc, text, body.k, body.candidates, body.rerank)
    understand_ms = (time.perf_counter() - t_read) * 1000.0
    engine = serving.engine
    start = time.perf_counter()
    got = await svc.batcher.retrieve(engine, text, max(body.k, body.candidates))
    encoded = got.encoded
    use_rerank = body.rerank != "off" and svc.rerank_available
    rank = partial(
        engine.rank, text, encoded, got.pool, k=body.k, rerank=use_rerank, started_at=start, timings_ms=got.timings_ms
    )
    result: SearchResult = await asyncio.to_thread(rank) if use_rerank else rank()
    top1 = result.results[0].candidate.score if result.results else None
    fallback_reason, outcome = _rerank_outcome(body.rerank, result)
    svc.metrics.observe_search(result.timings_ms, outcome, result.rerank_usage, top1)
    svc.metrics.observe_understanding(outcome_label(turn), turn.usage)
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
    conversation_id, seal_notes = svc.turns.end(turn, [h.photo_id for h in hits])
    return SearchResponse(
        query=text,
        query_truncated=result.query_truncated,
        results=hits,
        timings_ms={k: round(v, 3) for k, v in {"understand": understand_ms, **result.timings_ms}.items()},
        rerank=RerankInfo(
            requested=body.rerank,
            applied=result.rerank_applied,
            fallback_reason=fallback_reason,
            detail=result.rerank_detail,
            model=result.rerank_model or (svc.settings.rerank.model if svc.rerank_available else None),
        ),
        index_version=serving.index_version,
        stale=svc.index.stale,
        request_id=request.state.request_id,
        understanding=describe_turn(body.understand, turn, not_applied=not_applied, notes=seal_notes),
        conversation_id=conversation_id,
    )


def _base_query(body: SearchRequest) -> ClipQuery:
    """The request's own fields as a Query (its text as one term) for understanding to build on."""
    try:
        return ClipQuery.from_text(body.q.strip() or "photo", k=body.k, candidates=body.candidates, rerank=body.rerank)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise HTTPException(422, detail=f"{where}: {first.get('msg', 'invalid')}") from None


@lru_cache(maxsize=4096)
def _thumbnail(path: str, mtime: float) -> bytes:
    """A cached thumbnail of a local image (keyed by mtime, so a replaced file is re-read)."""
    return make_thumbnail(Path(path).read_bytes(), THUMB_PX)


router = APIRouter(tags=["search"])
"""`/search` and `/images/{photo_id}`; `app.include_router(router)` wires them (see `app.create_app`)."""


@router.get("/search", response_model=SearchResponse, tags=["search"], summary="Search images by text")
async def search_get(
    request: Request,
    svc: StateDep,
    serving: ServingDep,
    q: Annotated[str, Query(description="What to look for.", examples=["a foggy forest at dawn"])],
    k: Annotated[int | None, Query(description="Results to return (default: search.k).")] = None,
    candidates: Annotated[
        int | None, Query(description="Nearest neighbours to re-rank from (default: search.candidates).")
    ] = None,
    rerank: Annotated[RerankMode, Query(description="auto | on | off")] = "auto",
) -> SearchResponse:
    defaults = svc.settings.search
    body = SearchRequest(
        q=q,
        k=defaults.k if k is None else k,
        candidates=defaults.candidates if candidates is None else candidates,
        rerank=rerank,
        understand="off",  # GET /search is unchanged: the text as typed
    )
    return await _run_search(svc, serving, request, body)


@router.post("/search", response_model=SearchResponse, tags=["search"], summary="Search images by text (JSON body)")
async def search_post(request: Request, svc: StateDep, serving: ServingDep, body: SearchRequest) -> SearchResponse:
    return await _run_search(svc, serving, request, body)


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
