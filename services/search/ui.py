"""The chat-style search page at `/ui`: one HTML page, one stylesheet, one script; no build step, no CDN.

It replaces the old Gradio interface. The page calls `GET /search` from the browser and shows each answer as
a grid of thumbnails loaded *by URL* (the old app inlined base64 images, which is what took it down): the
Content-Security-Policy sent with the page forbids `data:` images, so that regression cannot come back quietly.

Why the router serves its own assets instead of a `StaticFiles` mount: FastAPI's `include_router` does not carry
mounts, so a mount would need a second wiring call; and a closed list of assets read once at import means no part
of a URL ever reaches the filesystem. Asset URLs carry a content hash, so browsers may cache them for a year and a
new deploy is still picked up at once.

Wire it with `mount_ui(app)` (or `app.include_router(router)`), when `settings.service.ui_enabled` is true.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from clipsearch.errors import ConfigError

STATIC_DIR = Path(__file__).parent / "static"
UI_PATH = "/ui"
STATIC_PATH = f"{UI_PATH}/static"

# Same-origin script and styles only; images by http(s) URL only (never `data:`; `blob:` only for the preview of an
# image the user picked, made in the page from their own file); the page may only call this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: http: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    """One file the page needs, held in memory (they are a few kB) with a hash for cache-busting URLs."""

    name: str
    media_type: str
    body: bytes

    @property
    def version(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:12]


def _read(name: str) -> bytes:
    path = STATIC_DIR / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"The chat page asset {path} could not be read ({exc}). The package was installed without its static "
            "files: reinstall clipsearch (package-data must include services/search/static/*), or set "
            "CLIPSEARCH_SERVICE__UI_ENABLED=false to run without the page."
        ) from exc


_ASSETS: dict[str, Asset] = {
    name: Asset(name, media_type, _read(name))
    for name, media_type in (
        ("chat.css", "text/css; charset=utf-8"),
        ("chat.js", "text/javascript; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    )
}
_PAGE_TEMPLATE = _read("chat.html").decode("utf-8")


def render_page(root_path: str) -> str:
    """The page's HTML for a service reached under `root_path` (a proxy prefix or mount path; "" when none).

    Asset and API URLs are absolute paths built from it, so the page works at `/ui` and `/ui/` alike and
    behind an ingress that strips a prefix.
    """
    base = root_path.rstrip("/")
    values = {"base": base, **{f"v:{a.name}": a.version for a in _ASSETS.values()}}
    page = _PAGE_TEMPLATE
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value, quote=True))
    return page


router = APIRouter(tags=["ui"], include_in_schema=False)


@router.get(UI_PATH, response_class=HTMLResponse)
def chat_page(request: Request) -> HTMLResponse:
    """The chat page itself; never cached without revalidation, so a deploy's new asset hashes are seen."""
    return HTMLResponse(render_page(str(request.scope.get("root_path", ""))), headers=_PAGE_HEADERS)


@router.get(STATIC_PATH + "/{name}")
def chat_asset(name: str) -> Response:
    """One of the page's assets, by exact name; anything else is a 404."""
    asset = _ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail=f"No UI asset named {name!r}.")
    return Response(
        asset.body,
        media_type=asset.media_type,
        headers={
            "Cache-Control": _ASSET_CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{asset.version}"',
        },
    )


def mount_ui(app: FastAPI) -> None:
    """Serve the chat page at `/ui` and its assets under `/ui/static/` on `app`."""
    app.include_router(router)
