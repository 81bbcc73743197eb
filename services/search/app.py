"""The search service: FastAPI app with a registry-backed index, Gemini re-ranking, metrics, drift and a chat page.

`uvicorn services.search.app:app` serves it. `create_app(settings)` builds one for tests with other settings.
Start-up (lifespan) loads the encoder, then pulls and verifies the champion index in the background, so
`/healthz` answers at once and `/readyz` turns 200 when a verified index and a warm encoder are in place.

This module wires the app (lifespan, request-id/metrics middleware, error handlers); the parts live beside it:
`state.py` (what routes depend on), `search_routes.py`, `ops_routes.py`, `ui.py`, `index_manager.py`,
`batching.py`, `telemetry.py`, `drift.py`, `ratelimit.py` (per-client limits), `surface.py` (security headers,
body cap), `drain.py` (SIGTERM drain).

Every status an endpoint can answer is in the OpenAPI document with its error model (`ErrorResponse`); an e2e
test fuzzes the live service against that document with schemathesis (tests/e2e/test_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp

from clipsearch.settings import Settings, get_settings
from services.search import ops_routes, search_routes
from services.search.admission import Overloaded
from services.search.drain import install_sigterm_drain
from services.search.query_adapters import document_search_body, upload_cap
from services.search.schemas import ErrorResponse, OverloadedResponse
from services.search.state import ServiceState
from services.search.surface import SurfaceMiddleware
from services.search.telemetry import Metrics, configure_json_logging, request_id_var

log = logging.getLogger("services.search")


class SearchApp(FastAPI):
    """FastAPI with `SurfaceMiddleware` outside everything, the server-error handler included, so that every
    response (a 500 too) carries the security headers and no oversized body reaches any other layer."""

    surface_options: dict[str, object]

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        metrics: Metrics = self.state.metrics
        return SurfaceMiddleware(
            inner,
            max_body_bytes=int(getattr(self.state, "max_body_bytes", 16384)),
            draining=lambda: bool(getattr(getattr(self.state, "service", None), "draining", False)),
            on_refused=_count_refusal(metrics),
            upload_paths=frozenset({"/search"}),  # multipart query images (services.search.query_adapters)
            upload_bytes=int(getattr(self.state, "upload_bytes", 0)),
        )


def _count_refusal(metrics: Metrics) -> Callable[[int], None]:
    def refused(status: int) -> None:
        metrics.requests.labels(route="unmatched", status=str(status)).inc()
        log.info("request", extra={"route": "unmatched", "status": status, "reason": "body too large"})

    return refused


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
        restore_sigterm = install_sigterm_drain(svc, settings.service.drain_s)
        try:
            yield
        finally:
            if restore_sigterm is not None:
                restore_sigterm()
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await startup
            await svc.stop()

    app = SearchApp(
        title="clipsearch",
        version="0.1.0",
        description="Semantic image search over Unsplash Lite: CLIP retrieval with optional Gemini re-ranking.",
        lifespan=lifespan,
        responses={
            413: {"model": ErrorResponse, "description": "The request body is larger than service.max_body_bytes."},
            422: {"model": ErrorResponse, "description": "A parameter or the body is invalid; `detail` says which."},
            503: {
                "model": ErrorResponse,
                "description": "Not ready (no verified index or encoder yet), or overloaded: shed by admission control with "
                "Retry-After, `reason` and `retry_after_s`.",
            },
        },
    )
    app.state.metrics = metrics
    app.state.max_body_bytes = settings.service.max_body_bytes
    app.state.upload_bytes = upload_cap(settings)
    _install_middleware(app, metrics)
    if settings.service.cors_allow_origins:  # closed by default: no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.service.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            allow_credentials=False,
            max_age=600,
        )
    _install_error_handlers(app)
    app.include_router(search_routes.router)
    document_search_body(app)  # POST /search reads JSON or multipart itself: its OpenAPI body is written there
    app.include_router(ops_routes.router)
    _document_settings_bounds(app, settings)
    if settings.service.ui_enabled:
        from services.search.ui import mount_ui

        mount_ui(app)
    return app


def _document_settings_bounds(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document states the bounds this service's settings enforce (query length, k, candidates)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            search_routes.document_limits(generate(), settings)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        shed = exc.shed
        body = OverloadedResponse(
            detail=shed.detail,
            request_id=getattr(request.state, "request_id", None),
            reason=shed.reason,
            retry_after_s=shed.retry_after_s,
            predicted_wait_ms=shed.predicted_wait_ms,
        )
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": str(shed.retry_after_s)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(request, exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; GET and POST /search are two routes.
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001 - handler signature
        log.exception("unhandled error")
        return _error(request, 500, "internal error; the request id in this response identifies it in the logs")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (for a 405's `Allow` header)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def __getattr__(name: str) -> FastAPI:
    """`uvicorn services.search.app:app` builds the app on first access, not at import (tests import this module)."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)


app: FastAPI
