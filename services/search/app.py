"""The search service: FastAPI app with a registry-backed index, Gemini re-ranking, metrics, drift and a chat page.

`uvicorn services.search.app:app` serves it. `create_app(settings)` builds one for tests with other settings.
Start-up (lifespan) loads the encoder, then pulls and verifies the champion index in the background, so
`/healthz` answers at once and `/readyz` turns 200 when a verified index and a warm encoder are in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import lru_cache, partial
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ClipsearchError
from clipsearch.rerank.base import NoopReranker
from clipsearch.rerank.gemini import build_reranker
from clipsearch.settings import Settings, get_settings
from clipsearch.types import SearchResult
from clipsearch.unsplash import photo_image_url
from services.search.batching import QueryBatcher
from services.search.drift import DriftMonitor, DriftResult
from services.search.index_manager import IndexManager, ServingIndex
from services.search.schemas import (
    DriftResponse,
    ErrorResponse,
    ReadyResponse,
    RerankInfo,
    RerankMode,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from services.search.telemetry import Metrics, configure_json_logging, request_id_var

log = logging.getLogger("services.search")

PHOTO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
THUMB_PX = 320


class ServiceState:
    """Everything the routes need, created in the lifespan and reached through `Depends(state)`."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoder = ClipEncoder.from_settings(settings.model)
        images_dir = settings.service.images_dir
        reranker, self.reranker_status = (
            build_reranker(settings.rerank, images_dir)
            if settings.rerank.enabled
            else (NoopReranker(), "CLIP-only: re-ranking disabled in settings")
        )
        self.reranker = reranker
        self.rerank_available = not isinstance(reranker, NoopReranker)
        self.drift = DriftMonitor(
            window=settings.service.drift_window, min_queries=settings.service.drift_min_queries, html=False
        )
        self.index = IndexManager(settings, self.encoder, reranker, on_swap=[self._on_swap])
        self.encoder_ready = False
        self.batcher = QueryBatcher(
            max_batch=settings.service.batch_max_size,
            max_wait_ms=settings.service.batch_max_wait_ms,
            cache_size=settings.service.embedding_cache_size,
        )
        self.tasks: list[asyncio.Task[None]] = []
        self._drift_reference_of: str | None = None

    def _on_swap(self, serving: ServingIndex, stale: bool) -> None:
        self.metrics.set_index(serving.index_version, serving.registry_version, len(serving.engine.artifact), stale)
        if serving.index_version == self._drift_reference_of:
            return  # the same index re-published (e.g. no longer stale): keep the drift window and result
        self._drift_reference_of = serving.index_version
        self.metrics.index_swaps.inc()
        artifact = serving.engine.artifact
        self.drift.set_reference(
            artifact.reference_queries,
            index_version=serving.index_version,
            model_key=artifact.manifest.model.describe(),
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self.tasks.append(asyncio.create_task(self._follow(self.settings.service.poll_interval_s)))
        self.tasks.append(
            asyncio.create_task(self.drift.run_periodically(self.settings.service.drift_interval_s, self._on_drift))
        )

    def _load(self) -> None:
        """Start-up, and its retries: the encoder first (once it works), then the champion or the cache."""
        if not self.encoder_ready:
            try:
                self.encoder.load()
                self.encoder.warmup()
                self.encoder_ready = True
            except Exception as exc:
                self.index.not_ready_reason = f"the CLIP encoder could not be loaded: {exc}"
                log.error("encoder load failed", extra={"reason": str(exc)})
                return
        self.index.load_initial()

    async def _follow(self, interval_s: float) -> None:
        """Poll the registry alias forever; retry start-up while not ready. Never dies on an error."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.index.current is None:
                    await asyncio.to_thread(self._load)
                else:
                    await asyncio.to_thread(self.index.check_for_update)
            except ClipsearchError:
                self.metrics.index_refusals.inc()
            except Exception:
                log.exception("index follow loop error")

    def _on_drift(self, result: DriftResult) -> None:
        self.metrics.drift_score.set(result.drift_score)
        self.metrics.drift_detected.set(1 if result.drift_detected else 0)

    async def stop(self) -> None:
        self.batcher.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain `def` dependency in its threadpool, a needless hop per request
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(state)]


async def serving_index(svc: StateDep) -> ServingIndex:
    """The index this request will use from start to end (a single reference: swaps cannot split it)."""
    current = svc.index.current
    if current is None or not svc.encoder_ready:
        raise HTTPException(503, detail=f"not ready: {svc.index.not_ready_reason or 'warming up'}")
    return current


ServingDep = Annotated[ServingIndex, Depends(serving_index)]


def create_app(settings: Settings | None = None, *, json_logs: bool = True) -> FastAPI:
    settings = settings or get_settings()
    # MLflow's client retries a dead server ~7 times with backoff (minutes); a replica should fall back to its
    # cached index within seconds instead. Operators can still override both.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if json_logs:
        configure_json_logging()
    metrics = Metrics()
    metrics.gemini_quota_rpm.set(settings.rerank.quota_requests_per_minute)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = ServiceState(settings, metrics)
        app.state.service = svc
        log.info(
            "starting",
            extra={
                "reranker": svc.reranker_status,
                "model": f"{settings.model.arch}/{settings.model.pretrained}",
                "registry": settings.registry.tracking_uri,
                "model_name": settings.registry.model_name,
            },
        )
        startup = asyncio.create_task(svc.start())
        try:
            yield
        finally:
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await startup
            await svc.stop()

    app = FastAPI(
        title="clipsearch",
        version="0.1.0",
        description="Semantic image search over Unsplash Lite: CLIP retrieval with optional Gemini re-ranking.",
        lifespan=lifespan,
        responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    app.state.metrics = metrics
    _install_middleware(app, metrics)
    _install_error_handlers(app)
    _install_routes(app, settings)
    if settings.service.ui_enabled:
        from services.search.ui import mount_ui

        mount_ui(app)
    return app


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _install_middleware(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id", "")
        rid = rid if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid) else uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        request.state.request_id = rid
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - start
            route = _route_name(request)
            if route != "/metrics":
                metrics.requests.labels(route=route, status=str(status)).inc()
                metrics.request_latency.labels(route=route).observe(elapsed)
                log.info(
                    "request",
                    extra={"method": request.method, "route": route, "status": status, "ms": round(elapsed * 1000, 2)},
                )
            request_id_var.reset(token)


def _error(request: Request, status: int, detail: str) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    return JSONResponse({"detail": detail, "request_id": rid}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return _error(request, 422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(request, exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(request, 500, "internal error; the request id in this response identifies it in the logs")


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


async def _run_search(
    svc: ServiceState, serving: ServingIndex, request: Request, body: SearchRequest
) -> SearchResponse:
    """Validate, then encode + search in the micro-batcher, then re-rank (network: off the event loop)."""
    text = _validate_query(svc, body.q, body.k, body.candidates, body.rerank)
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
    if result.rerank_applied:
        outcome = "applied"
    elif body.rerank == "off":
        outcome = "not_requested"
    else:
        outcome = result.rerank_fallback_reason or "disabled"
    svc.metrics.observe_search(result.timings_ms, outcome, result.rerank_usage, top1)
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
        query=text,
        query_truncated=result.query_truncated,
        results=hits,
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
        rerank=RerankInfo(
            requested=body.rerank,
            applied=result.rerank_applied,
            fallback_reason=None
            if result.rerank_applied
            else ("not_requested" if body.rerank == "off" else result.rerank_fallback_reason),
            detail=result.rerank_detail,
            model=svc.settings.rerank.model if svc.rerank_available else None,
        ),
        index_version=serving.index_version,
        stale=svc.index.stale,
        request_id=request.state.request_id,
    )


@lru_cache(maxsize=4096)
def _thumbnail(path: str, mtime: float) -> bytes:
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((THUMB_PX, THUMB_PX))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _install_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/search", response_model=SearchResponse, tags=["search"], summary="Search images by text")
    async def search_get(
        request: Request,
        svc: StateDep,
        serving: ServingDep,
        q: Annotated[str, Query(description="What to look for.", examples=["a foggy forest at dawn"])],
        k: Annotated[int, Query(description="Results to return.")] = settings.search.k,
        candidates: Annotated[
            int, Query(description="Nearest neighbours to re-rank from.")
        ] = settings.search.candidates,
        rerank: Annotated[RerankMode, Query(description="auto | on | off")] = "auto",
    ) -> SearchResponse:
        return await _run_search(svc, serving, request, SearchRequest(q=q, k=k, candidates=candidates, rerank=rerank))

    @app.post("/search", response_model=SearchResponse, tags=["search"], summary="Search images by text (JSON body)")
    async def search_post(request: Request, svc: StateDep, serving: ServingDep, body: SearchRequest) -> SearchResponse:
        return await _run_search(svc, serving, request, body)

    @app.get(
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
        if not PHOTO_ID.fullmatch(photo_id):
            raise HTTPException(422, detail="photo_id: not a valid Unsplash photo id")
        try:
            row = serving.engine.artifact.row_of(photo_id)
        except KeyError:
            raise HTTPException(404, detail=f"photo {photo_id} is not in the served index") from None
        images_dir = svc.settings.service.images_dir
        if images_dir is not None:
            local = images_dir / f"{photo_id}.jpg"  # photo_id is validated and known to the index: never a path
            if local.is_file():
                if size == "thumb":
                    data = _thumbnail(str(local), local.stat().st_mtime)
                    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
                return FileResponse(local, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
        source = serving.engine.artifact.candidates_for([row], [0.0])[0].image_url
        width = THUMB_PX if size == "thumb" else svc.settings.dataset.image_width * 2
        return RedirectResponse(photo_image_url(source, width), status_code=307)

    @app.get("/healthz", tags=["ops"], summary="Process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
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

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
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

    @app.post(
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

    @app.get(
        "/admin/drift-window",
        tags=["admin"],
        summary="Recent query embeddings (.npy) for the drift job",
        dependencies=[Depends(require_admin)],
        response_class=Response,
    )
    def drift_window(svc: StateDep) -> Response:
        return Response(svc.drift.window_npy(), media_type="application/octet-stream")


def __getattr__(name: str) -> FastAPI:
    """`uvicorn services.search.app:app` builds the app on first access, not at import (tests import this module)."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)


app: FastAPI
