"""The chat page's server side: what `/ui` and `/ui/static/*` send, without a browser (that is tests/e2e)."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.search import ui


def _client(root_path: str = "") -> TestClient:
    app = FastAPI()
    ui.mount_ui(app)
    return TestClient(app, root_path=root_path)


def test_page_links_hashed_assets_that_are_served_with_long_caching() -> None:
    client = _client()
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assets = re.findall(r'(?:href|src)="(/ui/static/[^"]+)"', page.text)
    assert {a.split("?")[0] for a in assets} == {"/ui/static/chat.css", "/ui/static/chat.js", "/ui/static/favicon.svg"}
    for url in assets:
        response = client.get(url)
        assert response.status_code == 200, url
        assert "immutable" in response.headers["cache-control"]
        version = url.split("?v=")[1]
        assert response.headers["etag"] == f'"{version}"'
    assert "{{" not in page.text, "every template slot must be filled"


def test_csp_forbids_inline_scripts_and_data_images() -> None:
    csp = _client().get("/ui").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert "data:" not in directives["img-src"], "images are served by URL, never inlined as base64"
    assert directives["connect-src"] == "'self'"


def test_unknown_or_traversing_asset_names_are_404() -> None:
    client = _client()
    for name in ("missing.js", "..%2Fui.py", "chat.html", "%2E%2E%2Fschemas.py"):
        assert client.get(f"/ui/static/{name}").status_code == 404, name


def test_page_behind_a_prefix_points_assets_and_api_under_it() -> None:
    page = _client(root_path="/search-svc").get("/ui").text
    assert 'data-api-base="/search-svc"' in page
    assert 'href="/search-svc/ui/static/chat.css?v=' in page


def test_root_path_is_escaped_into_the_page() -> None:
    page = ui.render_page('/x"><script>alert(1)</script>')
    assert "<script>alert(1)" not in page
    assert "&quot;&gt;&lt;script&gt;" in page


def test_script_never_writes_html_from_strings() -> None:
    script = (ui.STATIC_DIR / "chat.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"chat.js must build the DOM with textContent, not {sink}"
