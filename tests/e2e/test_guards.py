"""Abuse, cost and surface guards on a live service of their own: per-client rate limits (and who the client is),
the Gemini spend guard, secrets never shown, security headers on every response, bodies capped before parsing.

The service runs as the Deployment runs it (`--no-proxy-headers`), trusting 127.0.0.2 as its proxy: requests
from 127.0.0.1 are a client talking directly, requests sent from 127.0.0.2 are "through the proxy".
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from clipsearch_devtools import gemini_standin as gs
from tests.e2e.conftest import PipelineRepo, ServiceProcess, ensure_champion, service_process

pytestmark = pytest.mark.e2e

GEMINI_KEY = "AIzaTEST-gemini-key-must-never-show-7f3e"
ADMIN_TOKEN = "admin-token-must-never-show-0c9b"
RERANK_LIMIT = 5
SEARCH_LIMIT = 12
# The stand-in bills 1,200 prompt + 80 output tokens per answer: $0.00056 at gemini-3.5-flash-lite prices, so two
# answers spend the day.
USD_PER_DAY = 0.001


@pytest.fixture(scope="module")
def guarded(
    reproduced: PipelineRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, object]]:
    ensure_champion(reproduced)
    with (
        gs.GeminiStandin() as standin,
        service_process(
            reproduced,
            tmp_path_factory.mktemp("guarded"),
            GEMINI_API_KEY=GEMINI_KEY,
            CLIPSEARCH_SERVICE__ADMIN_TOKEN=ADMIN_TOKEN,
            CLIPSEARCH_RERANK__BASE_URL=standin.base_url,
            CLIPSEARCH_RERANK__BUDGET_S="3",
            CLIPSEARCH_SERVICE__RATE_LIMIT_SEARCH=f"{SEARCH_LIMIT}/minute",
            CLIPSEARCH_SERVICE__RATE_LIMIT_RERANK=f"{RERANK_LIMIT}/minute",
            CLIPSEARCH_RERANK__SPEND_REQUESTS_PER_MINUTE="1000",
            CLIPSEARCH_RERANK__SPEND_USD_PER_DAY=str(USD_PER_DAY),
            CLIPSEARCH_SERVICE__TRUSTED_PROXIES='["127.0.0.2"]',
            CLIPSEARCH_SERVICE__MAX_BODY_BYTES="4096",
        ) as service,
    ):
        yield service, standin


def _client(via_proxy: bool = False) -> httpx.Client:
    local = "127.0.0.2" if via_proxy else "127.0.0.1"
    return httpx.Client(transport=httpx.HTTPTransport(local_address=local), timeout=30)


def test_limits_budget_secrets_and_headers(guarded: tuple[ServiceProcess, gs.GeminiStandin]) -> None:
    service, standin = guarded
    seen: list[httpx.Response] = []

    def get(client: httpx.Client, path: str, **kw: object) -> httpx.Response:
        r = client.get(service.url(path), **kw)  # type: ignore[arg-type]
        seen.append(r)
        return r

    # A Gemini error that echoes the key: the fallback detail must not.
    standin.script(gs.http_error(400, "INVALID_ARGUMENT", f"API key not valid. key={GEMINI_KEY}"))
    direct = _client()
    outcomes = []
    for i in range(RERANK_LIMIT):
        r = get(direct, "/search", params={"q": f"a mountain lake {i}", "rerank": "auto"})
        assert r.status_code == 200, r.text
        outcomes.append(r.json()["rerank"])
    assert outcomes[0]["fallback_reason"] == "error"
    assert "***" in outcomes[0]["detail"]
    assert outcomes[1]["applied"]
    assert outcomes[2]["applied"]
    # two answers spent the day's budget: CLIP order, reason budget, and no call to Gemini
    calls = standin.request_count
    assert [o["fallback_reason"] for o in outcomes[3:]] == ["budget", "budget"], outcomes
    assert "daily Gemini budget" in outcomes[3]["detail"]

    # the re-rank limit: 429 + Retry-After + a JSON reason; CLIP-only searches still pass
    limited = get(direct, "/search", params={"q": "a red bicycle", "rerank": "auto"})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "re-ranked searches" in limited.json()["detail"]
    assert limited.json()["request_id"]
    assert get(direct, "/search", params={"q": "a red bicycle", "rerank": "off"}).status_code == 200
    # a header the client writes itself does not buy a new bucket
    forged = get(direct, "/search", params={"q": "x", "rerank": "auto"}, headers={"X-Forwarded-For": "198.51.100.9"})
    assert forged.status_code == 429
    # through the trusted proxy, the address it appended is the client: a fresh bucket
    with _client(via_proxy=True) as proxy:
        other = get(
            proxy, "/search", params={"q": "x", "rerank": "auto"}, headers={"X-Forwarded-For": "1.2.3.4, 198.51.100.9"}
        )
        assert other.status_code == 200
        assert other.json()["rerank"]["fallback_reason"] == "budget"
        statuses = [
            get(
                proxy, "/search", params={"q": f"y{i}", "rerank": "off"}, headers={"X-Forwarded-For": "198.51.100.10"}
            ).status_code
            for i in range(SEARCH_LIMIT + 1)
        ]
        assert statuses[:SEARCH_LIMIT] == [200] * SEARCH_LIMIT
        assert statuses[-1] == 429
    assert standin.request_count == calls

    metrics = get(direct, "/metrics").text
    assert 'clipsearch_rate_limited_total{limit="rerank"} 2.0' in metrics
    assert 'clipsearch_rate_limited_total{limit="search"} 1.0' in metrics
    assert 'clipsearch_gemini_budget_exhausted{limit="usd_per_day"} 1.0' in metrics
    assert 'clipsearch_rerank_outcomes_total{outcome="budget"} 3.0' in metrics

    # admin token: wrong -> 401, right -> 200; bodies capped before parsing -> 413 with a reason
    assert get(direct, "/admin/drift-window", headers={"Authorization": "Bearer nope"}).status_code == 401
    window = get(direct, "/admin/drift-window", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert window.status_code == 200
    big = direct.post(
        service.url("/search"), content=b'{"q": "' + b"a" * 8000 + b'"}', headers={"Content-Type": "application/json"}
    )
    seen.append(big)
    assert big.status_code == 413
    assert "limit is 4096 bytes" in big.json()["detail"]
    for path in ("/readyz", "/healthz", "/openapi.json", "/ui", "/drift?format=html", "/images/nope!", "/nowhere"):
        get(direct, path)
    seen.append(direct.delete(service.url("/search")))
    seen.append(direct.post(service.url("/search"), content=b"\xff\xfe", headers={"Content-Type": "application/json"}))

    for r in seen:
        assert r.status_code < 500, (r.request.url, r.status_code, r.text[:300])
        assert r.headers.get("x-content-type-options") == "nosniff", r.request.url
        assert "frame-ancestors" in r.headers.get("content-security-policy", ""), r.request.url
        assert "access-control-allow-origin" not in r.headers
        if r.headers.get("content-type", "").startswith("application/json") and r.status_code >= 400:
            assert r.json()["detail"], r.text
        if r.content[:6] != b"\x93NUMPY":
            assert GEMINI_KEY not in r.text and ADMIN_TOKEN not in r.text, r.request.url  # noqa: PT018
    direct.close()


def test_secrets_never_reach_the_logs(guarded: tuple[ServiceProcess, gs.GeminiStandin]) -> None:
    service, _ = guarded
    log = service.log.read_text()
    assert '"status": 429' in log
    assert '"status": 413' in log
    assert GEMINI_KEY not in log
    assert ADMIN_TOKEN not in log
    assert GEMINI_KEY[8:24] not in log  # not even a slice of it
