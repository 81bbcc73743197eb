"""The service's public surface in-process: rate limits and who the client is, body cap, security headers,
CORS, the admin token, the 405 `Allow` header, the OpenAPI error contract, and the SIGTERM drain."""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from clipsearch.settings import ServiceSettings, Settings
from services.search.drain import install_sigterm_drain
from services.search.ops_routes import tokens_match
from services.search.ratelimit import RateLimited, RequestLimiter, client_address
from services.search.surface import SurfaceMiddleware
from services.search.telemetry import Metrics

PROXY = [ipaddress.ip_network("10.0.0.0/8")]


def test_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    # No trusted proxies: the header is never read, whoever sends it.
    assert client_address("203.0.113.9", "198.51.100.1", []) == "203.0.113.9"
    # An untrusted peer cannot pick its bucket by sending the header.
    assert client_address("203.0.113.9", "198.51.100.1", PROXY) == "203.0.113.9"
    # Behind our proxy: the rightmost untrusted hop; what the client wrote further left is ignored.
    assert client_address("10.1.2.3", "1.1.1.1, 198.51.100.7", PROXY) == "198.51.100.7"
    assert client_address("10.1.2.3", "1.1.1.1, 198.51.100.7, 10.9.9.9", PROXY) == "198.51.100.7"
    # Garbage where our proxy should have written an address, or only our own hops: the peer.
    assert client_address("10.1.2.3", "1.1.1.1, not-an-ip", PROXY) == "10.1.2.3"
    assert client_address("10.1.2.3", "10.0.0.5", PROXY) == "10.1.2.3"
    assert client_address(None, None, PROXY) == "unknown"


def _request(peer: str, forwarded_for: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded_for.encode())] if forwarded_for else []
    return Request({"type": "http", "method": "GET", "path": "/search", "headers": headers, "client": (peer, 5555)})


def test_search_and_rerank_limits_answer_429_with_retry_after() -> None:
    metrics = Metrics()
    limiter = RequestLimiter(
        ServiceSettings(rate_limit_search="3/minute", rate_limit_rerank="1/minute", trusted_proxies=["10.0.0.0/8"]),
        metrics,
    )
    alice = _request("203.0.113.1")
    limiter.check(alice, reranked=True)
    with pytest.raises(RateLimited) as rerank_limited:
        limiter.check(alice, reranked=True)
    assert rerank_limited.value.status_code == 429
    assert "rerank=off" in rerank_limited.value.detail
    assert 1 <= int((rerank_limited.value.headers or {})["Retry-After"]) <= 60
    limiter.check(alice, reranked=False)  # the third search (the re-rank-limited one counted as a search)
    with pytest.raises(RateLimited) as search_limited:
        limiter.check(alice, reranked=False)
    assert "3 per 1 minute" in search_limited.value.detail
    limiter.check(_request("203.0.113.2"), reranked=True)  # another client has its own buckets
    # A forged header from an untrusted peer changes nothing: still alice's (exhausted) bucket.
    with pytest.raises(RateLimited):
        limiter.check(_request("203.0.113.1", "192.0.2.200"), reranked=False)
    # Behind the trusted proxy, clients are told apart by the hop the proxy added.
    limiter.check(_request("10.0.0.2", "203.0.113.1, 192.0.2.50"), reranked=False)
    assert metrics.rate_limited.labels(limit="rerank")._value.get() == 1
    assert metrics.rate_limited.labels(limit="search")._value.get() == 2


def test_rate_limit_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="not a rate limit"):
        ServiceSettings(rate_limit_search="lots")
    with pytest.raises(ValueError, match="CIDR"):
        ServiceSettings(trusted_proxies=["10.0.0.0/33"])


def test_tokens_are_compared_by_digest() -> None:
    assert tokens_match("s3cret", "s3cret")
    assert not tokens_match("s3cre", "s3cret")
    assert not tokens_match("", "s3cret")


# -- the outermost ASGI layer ------------------------------------------------------------------------------------
def _echo_app(cap: int = 64) -> TestClient:
    inner = FastAPI()

    @inner.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @inner.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    return TestClient(SurfaceMiddleware(inner, max_body_bytes=cap), raise_server_exceptions=False)


def test_bodies_over_the_cap_are_refused_before_parsing() -> None:
    client = _echo_app()
    assert client.post("/echo", content=b"x" * 64).json() == {"bytes": 64}
    big = client.post("/echo", content=b"x" * 65, headers={"X-Request-ID": "abc-1"})
    assert big.status_code == 413
    assert big.json()["request_id"] == "abc-1"
    assert "limit is 64 bytes" in big.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(10):
            yield b"y" * 10

    chunked = client.post("/echo", content=chunks())
    assert chunked.status_code == 413
    assert "passed 64 bytes" in chunked.json()["detail"]
    small = client.post("/echo", content=iter([b"a" * 10, b"b" * 10]))
    assert small.json() == {"bytes": 20}


def test_security_headers_on_every_response_even_a_500() -> None:
    client = _echo_app()
    for response in (client.post("/echo", content=b"{}"), client.get("/boom"), client.get("/nowhere")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"


# -- the real app without its lifespan (no encoder, no registry): a stand-in state where a route needs one ---------
def _app_client(tmp_path: Path, **service: object) -> TestClient:
    from services.search.app import create_app

    settings = Settings(
        service={"cache_dir": tmp_path / "cache", "admin_token": "unit-admin-token", **service},
    )
    app = create_app(settings, json_logs=False)
    index = SimpleNamespace(current=None, stale=False, not_ready_reason="starting", last_error=None)
    app.state.service = SimpleNamespace(
        settings=settings, index=index, encoder_ready=False, draining=False, reranker_status="CLIP-only"
    )
    return TestClient(app)


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("CLIPSEARCH_PARAMS", str(tmp_path / "none.yaml"))
    return _app_client(tmp_path)


def test_405_allow_names_every_method_of_the_path(app_client: TestClient) -> None:
    r = app_client.delete("/search")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert r.json()["detail"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_admin_needs_the_bearer_token(app_client: TestClient) -> None:
    assert app_client.post("/admin/reload").status_code == 401
    wrong = app_client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "unit-admin-token" not in wrong.text
    svc = app_client.app.state.service  # type: ignore[attr-defined]
    svc.drift = SimpleNamespace(window_npy=lambda: b"npy")
    ok = app_client.get("/admin/drift-window", headers={"Authorization": "Bearer unit-admin-token"})
    assert ok.status_code == 200
    assert ok.content == b"npy"


def test_cors_is_closed_by_default(app_client: TestClient) -> None:
    r = app_client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = app_client.options(
        "/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in pre.headers


def test_cors_allowlist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_PARAMS", str(tmp_path / "none.yaml"))
    client = _app_client(tmp_path, cors_allow_origins=["https://app.example"])
    ok = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_openapi_documents_every_error_status(app_client: TestClient) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    assert {"400", "409", "413", "422", "429", "503"} <= set(paths["/search"]["post"]["responses"])
    assert {"409", "413", "422", "429", "503"} <= set(paths["/search"]["get"]["responses"])
    assert "Retry-After" in paths["/search"]["get"]["responses"]["429"]["headers"]
    assert {"401", "403", "409"} <= set(paths["/admin/reload"]["post"]["responses"])
    assert {"401", "403"} <= set(paths["/admin/drift-window"]["get"]["responses"])
    assert "404" in paths["/drift"]["get"]["responses"]
    assert paths["/admin/reload"]["post"]["security"] == [{"HTTPBearer": []}]
    bad_json = app_client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code in (400, 422)
    assert bad_json.json()["detail"]


def test_not_ready_then_draining_in_readyz(app_client: TestClient) -> None:
    svc = app_client.app.state.service  # type: ignore[attr-defined]
    svc.draining = True
    r = app_client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["reason"].startswith("draining")
    assert app_client.get("/healthz").headers["connection"] == "close"


def test_sigterm_drains_then_hands_over_to_the_server_handler() -> None:
    handed_over = threading.Event()

    class Target:
        draining = False

    def server_handler(sig: int, frame: object) -> None:  # noqa: ARG001
        handed_over.set()

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        target = Target()
        restore = install_sigterm_drain(target, drain_s=0.05)
        assert restore is not None
        os.kill(os.getpid(), signal.SIGTERM)
        assert handed_over.wait(10)
        assert target.draining
        restore()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)
