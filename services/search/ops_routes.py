"""Operations endpoints: health, readiness, Prometheus metrics, drift, and the token-protected admin routes."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clipsearch.errors import ClipsearchError
from services.search.schemas import DriftResponse, ReadyResponse
from services.search.state import StateDep

router = APIRouter()
"""Health, readiness, metrics, drift and admin routes; `app.include_router(router)` wires them."""


@router.get("/healthz", tags=["ops"], summary="Process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    tags=["ops"],
    summary="Index loaded and encoder warm",
    responses={503: {"model": ReadyResponse}},
)
def readyz(svc: StateDep) -> JSONResponse:
    current = svc.index.current
    ready = current is not None and svc.encoder_ready
    body = ReadyResponse(
        ready=ready,
        reason=None if ready else (svc.index.not_ready_reason or "warming up"),
        index_version=current.index_version if current else None,
        registry_version=current.registry_version if current else None,
        stale=svc.index.stale,
        index_size=len(current.engine.artifact) if current else None,
        model=f"{svc.settings.model.arch}/{svc.settings.model.pretrained}",
        reranker=svc.reranker_status,
    )
    if ready and svc.index.stale:
        body.reason = f"serving a cached version: {svc.index.last_error}"
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/drift",
    tags=["ops"],
    summary="Latest embedding drift check",
    response_model=DriftResponse,
    responses={200: {"content": {"text/html": {}}}},
)
async def drift(svc: StateDep, format: Annotated[str, Query(pattern="^(json|html)$")] = "json") -> Response:
    current = svc.index.current
    if format == "html":
        html = await asyncio.to_thread(svc.drift.render_html)
        if html is None:
            raise HTTPException(
                404,
                detail="no drift report yet: it is computed every "
                f"{svc.settings.service.drift_interval_s:.0f}s once {svc.settings.service.drift_min_queries} queries arrived",
            )
        return Response(html, media_type="text/html")
    payload = svc.drift.to_response()
    payload["index_version"] = current.index_version if current else None
    return JSONResponse(DriftResponse(**payload).model_dump())


def require_admin(svc: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    token = svc.settings.service.admin_token
    if not token:
        raise HTTPException(403, detail="admin endpoints are disabled: set CLIPSEARCH_SERVICE__ADMIN_TOKEN")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, detail="missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})


@router.post(
    "/admin/reload",
    tags=["admin"],
    summary="Check the registry now and swap to the champion",
    dependencies=[Depends(require_admin)],
)
async def reload(svc: StateDep) -> dict[str, str | None]:
    try:
        outcome = await asyncio.to_thread(svc.index.check_for_update, True)
    except ClipsearchError as exc:
        svc.metrics.index_refusals.inc()
        raise HTTPException(409, detail=f"reload refused; the current version keeps serving: {exc}") from None
    current = svc.index.current
    return {"result": outcome, "index_version": current.index_version if current else None}


@router.get(
    "/admin/drift-window",
    tags=["admin"],
    summary="Recent query embeddings (.npy) for the drift job",
    dependencies=[Depends(require_admin)],
    response_class=Response,
)
def drift_window(svc: StateDep) -> Response:
    return Response(svc.drift.window_npy(), media_type="application/octet-stream")
