"""The real `/search` route, `/ui` page and query understanding over a fake index, for API and browser tests.

Everything on the understanding path is real (SearchRequest/SearchResponse, `read_turn`, `Turns`, signed
conversations, `GeminiUnderstander` through google-genai to a Gemini stand-in at `rerank.base_url`); only CLIP
and the index are replaced: `FakeEngine` answers every text with the same twelve photos, in an order derived
from the text, so a changed query visibly changes the results.

Run it for a browser: `GEMINI_API_KEY=x CLIPSEARCH_RERANK__BASE_URL=http://127.0.0.1:PORT
uvicorn tests.support.understanding_app:app` (the Gemini stand-in listens at PORT, in the test process).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI

from clipsearch.engine import QueryVector
from clipsearch.rerank.base import clip_order
from clipsearch.settings import Settings, load_settings
from clipsearch.types import Candidate, SearchResult
from services.search import search_routes, state
from services.search.app import _install_error_handlers, _install_middleware
from services.search.batching import Retrieved
from services.search.telemetry import Metrics
from services.search.ui import mount_ui
from services.search.understanding import build_turns

PHOTO_IDS = tuple(f"Photo{i:04d}Ab" for i in range(12))
INDEX_VERSION = "fake-understanding-1"


def _pool(text: str, n: int) -> list[Candidate]:
    key = lambda pid: hashlib.sha256(f"{text}|{pid}".encode()).hexdigest()  # noqa: E731
    ids = sorted(PHOTO_IDS, key=key)[:n]
    return [
        Candidate(
            photo_id=pid,
            score=round(0.4 - i * 0.01, 4),
            rank=i + 1,
            image_url=f"https://images.example/{pid}.jpg",
            description=f"Photo {pid}",
        )
        for i, pid in enumerate(ids)
    ]


class FakeEngine:
    index_version = INDEX_VERSION

    def __init__(self) -> None:
        self.texts: list[str] = []

    def rank(self, query: str, encoded: QueryVector, pool: list[Candidate], **kw: Any) -> SearchResult:
        self.texts.append(query)
        return SearchResult(
            query=query,
            results=clip_order(pool, kw["k"]),
            timings_ms={**kw["timings_ms"], "rerank": 0.0, "total": 0.2},
            rerank_applied=False,
            rerank_fallback_reason="not_requested" if not kw["rerank"] else "disabled",
            query_truncated=False,
            index_version=INDEX_VERSION,
        )


class FakeBatcher:
    async def retrieve(self, engine: FakeEngine, text: str, candidates: int) -> Retrieved:
        return Retrieved(
            encoded=QueryVector(np.zeros(4, dtype=np.float32), False),
            pool=_pool(text, candidates),
            timings_ms={"encode": 0.1, "search": 0.1},
            cached=False,
            batch_size=1,
        )

    def close(self) -> None:
        pass


@dataclass
class FakeServing:
    engine: FakeEngine = field(default_factory=FakeEngine)
    index_version: str = INDEX_VERSION


class _Drift:
    def record(self, *args: Any) -> None:
        pass


class _Index:
    stale = False


class FakeService:
    """Quacks like ServiceState for the search route."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.drift = _Drift()
        self.index = _Index()
        self.rerank_available = False
        self.reranker_status = "CLIP-only (test)"
        self.batcher = FakeBatcher()
        self.turns = build_turns(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI()
    svc = FakeService(settings)
    serving = FakeServing()
    app.state.service = svc
    app.state.serving = serving

    _install_middleware(app, svc.metrics)
    _install_error_handlers(app)

    async def fake_state() -> Any:
        return svc

    async def fake_serving() -> Any:
        return serving

    app.dependency_overrides[state.state] = fake_state
    app.dependency_overrides[state.serving_index] = fake_serving
    app.include_router(search_routes.router)
    mount_ui(app)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use, so importing this module reads no settings
        return create_app()
    raise AttributeError(name)
