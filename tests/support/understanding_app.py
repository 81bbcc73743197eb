"""The real `/search` route, `/ui` page and query understanding over a small synthetic index, for API and browser
tests.

Everything on the search path is real: SearchRequest/SearchResponse, `query_adapters`, `read_turn`, `Turns`, signed
conversations, `GeminiUnderstander` through google-genai to a Gemini stand-in at `rerank.base_url`, the
`QueryBatcher` and `SearchEngine` (composed terms, negative and photo-id terms, filters, paging). Only the model and
the data are small: the test-only `clipsearch-tiny` CLIP with random weights, and `PHOTO_COUNT` photos whose
metadata cycle through countries, orientations and submission years, so an understood filter visibly narrows
the results (`PHOTOS` holds that metadata for assertions).

Run it for a browser: `GEMINI_API_KEY=x CLIPSEARCH_RERANK__BASE_URL=http://127.0.0.1:PORT
uvicorn tests.support.understanding_app:app` (the Gemini stand-in listens at PORT, in the test process).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI

from clipsearch.encoder import ClipEncoder
from clipsearch.engine import SearchEngine, load_engine
from clipsearch.image_input import ImageLimits
from clipsearch.index.artifact import write_artifact
from clipsearch.index.keyword import KeywordIndex
from clipsearch.safe_fetch import FetchPolicy, SafeFetcher
from clipsearch.settings import IndexSettings, ModelSettings, Settings, load_settings
from clipsearch_devtools.artifacts import metadata_frame
from services.search import search_routes, state
from services.search.app import _install_error_handlers, _install_middleware
from services.search.batching import QueryBatcher
from services.search.query_adapters import document_search_body
from services.search.ratelimit import RequestLimiter
from services.search.telemetry import Metrics
from services.search.ui import mount_ui
from services.search.understanding import build_turns

PHOTO_COUNT = 48
PHOTO_IDS = tuple(f"Photo{i:04d}Ab" for i in range(PHOTO_COUNT))
INDEX_VERSION = "fake-understanding-2"
COUNTRIES = ("Iceland", "Norway", "Portugal", None)
SIZES = {"landscape": (4000, 3000), "portrait": (3000, 4000), "square": (2000, 2000)}
THEMES = ("forest", "people", "mountain", "beach", "snow", "city")


def _photo(i: int) -> dict[str, Any]:
    orientation = tuple(SIZES)[i % 3]
    width, height = SIZES[orientation]
    return {
        "photo_id": PHOTO_IDS[i],
        "orientation": orientation,
        "width": width,
        "height": height,
        "country": COUNTRIES[(i // 3) % len(COUNTRIES)],
        "submitted_at": pd.Timestamp(f"{2018 + i % 7}-06-01", tz="UTC"),
        "description": f"a photo of {THEMES[i % len(THEMES)]} number {i}",
    }


PHOTOS = {p["photo_id"]: p for p in (_photo(i) for i in range(PHOTO_COUNT))}
TINY_MODEL = ModelSettings(
    arch="clipsearch-tiny", pretrained="random", device="cpu", precision="fp32", batch_size=16, text_backend="torch"
)


def build_engine(out_dir: Path) -> SearchEngine:
    """A real engine over `PHOTOS`: exact index, keyword index, metadata for every filter the tests use."""
    encoder = ClipEncoder(TINY_MODEL).load()
    rows = list(PHOTOS.values())
    meta = metadata_frame(
        PHOTO_IDS,
        description=[p["description"] for p in rows],
        width=[p["width"] for p in rows],
        height=[p["height"] for p in rows],
        country=[p["country"] for p in rows],
        city=None,
        submitted_at=[p["submitted_at"] for p in rows],
        downloads=list(range(PHOTO_COUNT)),
    )
    rng = np.random.default_rng(14)
    vectors = rng.normal(size=(PHOTO_COUNT, encoder.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_artifact(
        out_dir,
        vectors,
        list(PHOTO_IDS),
        meta,
        encoder.identity,
        IndexSettings(kind="exact", dtype="float32"),
        "understanding@0",
        keyword_index=KeywordIndex.build([p["description"] for p in rows]),
    )
    return load_engine(out_dir, encoder)


@dataclass
class FakeServing:
    engine: SearchEngine
    index_version: str = INDEX_VERSION


class _Drift:
    def record(self, *args: Any) -> None:
        pass


class _Index:
    stale = False
    current: FakeServing | None = None
    not_ready_reason = None


class FakeService:
    """Quacks like ServiceState for the search route (no registry, no re-ranker)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.drift = _Drift()
        self.index = _Index()
        self.encoder_ready = True
        self.rerank_available = False
        self.reranker_status = "CLIP-only (test)"
        self.batcher = QueryBatcher()
        self.limiter = RequestLimiter(settings.service, self.metrics)
        self.image_limits = ImageLimits.from_settings(settings.inputs)
        self.fetcher = SafeFetcher(FetchPolicy.from_settings(settings.inputs))
        self.turns = build_turns(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI()
    svc = FakeService(settings)
    workdir = Path(tempfile.mkdtemp(prefix="understanding-app-"))
    serving = FakeServing(build_engine(workdir / "index"))
    svc.index.current = serving
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
    document_search_body(app)
    mount_ui(app)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use, so importing this module reads no settings
        return create_app()
    raise AttributeError(name)
