"""A stand-in search service for browser tests of the chat page: the real `/ui` router, a fake `/search`.

`/search` answers with a valid `SearchResponse` (built from the service's own models, so a contract change breaks
this too) whose image URLs point at PNGs this app draws and serves itself, like the real `/images/{photo_id}`.
Some text is hostile on purpose (HTML in a description) so tests can prove the page escapes it.

Special queries:
- `ERROR_QUERY` answers 422 with `{"detail", "request_id"}`, like the real service's validation errors;
- `DOWN_QUERY` answers 503 `{"detail"}`, like a service with no index loaded yet.
Every search waits `SEARCH_DELAY_S`, so a test can see the page's in-flight state.

Filters, paging and the cut-off behave like the real engine on a tiny scale, so the page's chips, "show more" and
relevance slider can be driven: `orientation` and `color` keep the photos with that attribute (OR within one,
AND across), `submitted_from` keeps photos submitted that day or later, `min_score` drops results below it, and
`cursor` (the `page.next_cursor` this app returns) continues the same ranked list. The last request's parameters
are kept at `/last-request` for assertions.

Run it: `uvicorn tests.support.fake_search_app:app --host 127.0.0.1 --port 8765` from the repository root.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageDraw

from services.search.schemas import PageResponse, RerankInfo, RerankMode, SearchHit, SearchRequest, SearchResponse
from services.search.ui import mount_ui

ERROR_QUERY = "!fail"
ERROR_DETAIL = "The query is not allowed here: this stand-in rejects '!fail' on purpose. Change the query."
DOWN_QUERY = "!down"
DOWN_DETAIL = "No index loaded yet: the registry has no champion version. Try again after the first promotion."
HOSTILE_DESCRIPTION = 'Neon sign reading <b>OPEN</b> <img src=x onerror="document.body.dataset.pwned=1">'
INDEX_VERSION = "fake-7"
SEARCH_DELAY_S = 0.25
THUMB_SIZE = 256


@dataclass(frozen=True)
class Photo:
    photo_id: str
    description: str | None
    photographer: str | None
    color: tuple[int, int, int]
    width: int = 640
    height: int = 480
    color_name: str = "gray"
    submitted_at: str = "2020-06-01"


PHOTOS = (
    Photo("fog01", "Misty pine forest at sunrise", "Aino Virtanen", (92, 130, 110), 480, 640, "green", "2018-03-02"),
    Photo(
        "dog02",
        "A golden retriever running along a sandy beach",
        "Mateo Ruiz",
        (214, 170, 90),
        640,
        480,
        "orange",
        "2021-07-09",
    ),
    Photo(
        "city03",
        "City lights at night seen from a skyscraper",
        "Hana Sato",
        (40, 48, 96),
        640,
        480,
        "blue",
        "2022-11-20",
    ),
    Photo("neon04", HOSTILE_DESCRIPTION, "<script>alert(1)</script>", (190, 60, 140), 500, 500, "purple", "2019-01-15"),
    Photo("lake05", None, "Olu Adeyemi", (70, 140, 200), 640, 480, "blue", "2023-05-30"),
    Photo("desert06", "Sand dunes under a clear blue sky", None, (222, 190, 140), 480, 640, "orange", "2017-09-09"),
    Photo(
        "snow07",
        "Snowy mountain ridge with a lone hiker",
        "Lena Brandt",
        (200, 215, 235),
        640,
        480,
        "white",
        "2024-01-04",
    ),
    Photo(
        "tulip08", "A field of red tulips in spring", "Pieter de Vries", (200, 60, 60), 640, 480, "red", "2020-04-12"
    ),
)
_BY_ID = {p.photo_id: p for p in PHOTOS}


@lru_cache(maxsize=64)
def render_png(photo_id: str, size: int) -> bytes:
    """A small, recognisable picture per photo: a vertical gradient of its colour with a sun and a horizon."""
    photo = _BY_ID[photo_id]
    width, height = (size, size) if size else (photo.width, photo.height)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    r, g, b = photo.color
    for y in range(height):
        t = y / max(height - 1, 1)
        draw.line([(0, y), (width, y)], fill=(int(r * (1 - 0.5 * t)), int(g * (1 - 0.5 * t)), int(b * (1 - 0.5 * t))))
    radius = min(width, height) // 7
    cx, cy = width * 2 // 3, height // 3
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(255, 236, 180))
    draw.polygon(
        [(0, height), (0, height * 3 // 4), (width // 3, height * 3 // 5), (width, height * 4 // 5), (width, height)],
        fill=(max(r - 60, 0), max(g - 60, 0), max(b - 60, 0)),
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def pick(query: str, k: int) -> list[Photo]:
    """`k` photos chosen from the query's hash, so different queries show different images."""
    start = int(hashlib.sha256(query.encode()).hexdigest(), 16) % len(PHOTOS)
    return [PHOTOS[(start + i) % len(PHOTOS)] for i in range(min(k, len(PHOTOS)))]


def orientation_of(photo: Photo) -> str:
    if photo.width == photo.height:
        return "square"
    return "landscape" if photo.width > photo.height else "portrait"


@dataclass
class Narrowing:
    """The query-language parameters this stand-in understands."""

    orientation: list[str] = field(default_factory=list)
    color: list[str] = field(default_factory=list)
    submitted_from: str | None = None
    min_score: float | None = None
    offset: int = 0


def ranked(query: str, narrowing: Narrowing) -> list[tuple[Photo, float]]:
    """Every photo in the query's order with a score, narrowed by the filters and the cut-off."""
    out = []
    for i, p in enumerate(pick(query, len(PHOTOS))):
        score = round(0.34 - 0.021 * i, 4)
        if narrowing.orientation and orientation_of(p) not in narrowing.orientation:
            continue
        if narrowing.color and p.color_name not in narrowing.color:
            continue
        if narrowing.submitted_from and p.submitted_at < narrowing.submitted_from:
            continue
        if narrowing.min_score is not None and score < narrowing.min_score:
            continue
        out.append((p, score))
    return out


def build_response(query: str, k: int, rerank: RerankMode, narrowing: Narrowing | None = None) -> SearchResponse:
    narrowing = narrowing or Narrowing()
    applied = rerank != "off" and narrowing.offset == 0
    everything = ranked(query, narrowing)
    chosen = everything[narrowing.offset : narrowing.offset + k]
    end = narrowing.offset + len(chosen)
    facets: dict[str, dict[str, int]] = {"orientation": {}, "color": {}}
    for p, _ in everything:
        facets["orientation"][orientation_of(p)] = facets["orientation"].get(orientation_of(p), 0) + 1
        facets["color"][p.color_name] = facets["color"].get(p.color_name, 0) + 1
    hits = [
        SearchHit(
            rank=narrowing.offset + i + 1,
            photo_id=p.photo_id,
            score=score,
            clip_rank=(i + 1) % k + 1 if applied else narrowing.offset + i + 1,
            image_url=f"/images/{p.photo_id}",
            thumbnail_url=f"/images/{p.photo_id}?size={THUMB_SIZE}",
            source_url=f"https://images.unsplash.com/photo-{p.photo_id}",
            description=p.description,
            photographer=p.photographer,
            width=p.width,
            height=p.height,
            submitted_at=p.submitted_at,
            reason=f"Matches “{query[:40]}”: {p.description or 'the scene'}." if applied and i < 2 else None,
        )
        for i, (p, score) in enumerate(chosen)
    ]
    short = None
    if len(chosen) < k:
        short = "min_score" if narrowing.min_score is not None else "end_of_results"
    page = PageResponse(
        offset=narrowing.offset,
        k=k,
        returned=len(hits),
        total=len(everything),
        matched=len(everything),
        order="reranked" if applied else "relevance",
        relevance="cosine",
        fewer_than_k=short,
        next_cursor=str(end) if end < len(everything) else None,
    )
    return SearchResponse(
        query=query,
        query_truncated=len(query) > 200,
        results=hits,
        page=page,
        facets=facets,
        understood={
            "kind": "text",
            "terms": [{"kind": "text", "weight": 1.0, "share": 1.0, "text": query}],
            "mode": "vector",
            "filters": {"orientation": narrowing.orientation, "colors": narrowing.color},
        },
        timings_ms={
            "encode": 11.8,
            "search": 0.9,
            "rerank": 212.4 if applied else 0.0,
            "total": 231.6 if applied else 19.2,
        },
        rerank=RerankInfo(
            requested=rerank,
            applied=applied,
            fallback_reason=None if applied else "not_requested",
            model="gemini-2.5-flash" if applied else None,
        ),
        index_version=INDEX_VERSION,
        stale=False,
        request_id=uuid.uuid4().hex[:16],
    )


LAST_REQUEST: dict[str, object] = {}
app = FastAPI(title="clipsearch stand-in for UI tests")
mount_ui(app)


@app.get("/search", response_model=SearchResponse)
async def search(
    q: Annotated[str, Query(min_length=1, max_length=500)],
    k: Annotated[int, Query(ge=1, le=50)] = 4,
    candidates: Annotated[int, Query(ge=1, le=200)] = 10,  # noqa: ARG001 - validated like the real /search
    rerank: Annotated[RerankMode, Query()] = "auto",
    orientation: Annotated[list[str] | None, Query()] = None,
    color: Annotated[list[str] | None, Query()] = None,
    submitted_from: Annotated[str | None, Query()] = None,
    min_score: Annotated[float | None, Query()] = None,
    cursor: Annotated[str | None, Query()] = None,
) -> SearchResponse | JSONResponse:
    LAST_REQUEST.clear()
    LAST_REQUEST.update(
        {"q": q, "orientation": orientation or [], "color": color or [], "submitted_from": submitted_from}
        | {"min_score": min_score, "cursor": cursor, "rerank": rerank}
    )
    await asyncio.sleep(SEARCH_DELAY_S)
    if q.strip() == ERROR_QUERY:
        return JSONResponse({"detail": ERROR_DETAIL, "request_id": uuid.uuid4().hex[:16]}, status_code=422)
    if q.strip() == DOWN_QUERY:
        return JSONResponse({"detail": DOWN_DETAIL}, status_code=503)
    narrowing = Narrowing(
        orientation=orientation or [],
        color=color or [],
        submitted_from=submitted_from,
        min_score=min_score,
        offset=int(cursor) if cursor and cursor.isdigit() else 0,
    )
    return build_response(q.strip(), k, rerank, narrowing)


@app.get("/last-request")
def last_request() -> dict[str, object]:
    return dict(LAST_REQUEST)


@app.post("/search", response_model=SearchResponse)
async def search_post(body: SearchRequest) -> SearchResponse | JSONResponse:
    """The chat page's words (POST since conversations): the same answers as GET. The stand-in's conversation_id
    carries the words, so a page of the conversation (no `q`, a cursor) searches them again."""
    q = body.q
    if q is None and body.conversation_id and body.conversation_id.startswith("fake:"):
        q = body.conversation_id.removeprefix("fake:")
    f = body.filters
    answer = await search(
        q=q or " ",
        k=body.k or 4,
        candidates=body.candidates or 10,
        rerank=body.rerank,
        orientation=list(f.orientation or []),
        color=list(f.colors or []),
        submitted_from=f.submitted_from.isoformat() if f.submitted_from else None,
        min_score=body.min_score,
        cursor=body.cursor,
    )
    if isinstance(answer, SearchResponse):
        answer.conversation_id = f"fake:{(q or '').strip()}"
    return answer


@app.get("/images/{photo_id}")
def image(photo_id: str, size: Annotated[int, Query(ge=0, le=1024)] = 0) -> Response:
    if photo_id not in _BY_ID:
        raise HTTPException(status_code=404, detail=f"No photo {photo_id!r}.")
    return Response(render_png(photo_id, size), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@app.get("/ready")
def ready() -> dict[str, object]:
    return {"ready": True, "index_version": INDEX_VERSION}
