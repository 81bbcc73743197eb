"""The live service: a uvicorn process serving the champion pulled from a real `mlflow server`, re-ranking through
the real google-genai client against a local Gemini stand-in, following the alias and swapping versions."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from clipsearch.index.artifact import load_artifact, write_artifact
from clipsearch.registry import register_index
from clipsearch.settings import IndexSettings, RegistrySettings
from clipsearch_devtools import gemini_standin as gs
from clipsearch_devtools.processes import free_port, running
from tests.e2e.conftest import BIN, LiveService, service_env

pytestmark = pytest.mark.e2e

MODEL = "clipsearch-index"


def client_for(service: LiveService) -> MlflowClient:
    return MlflowClient(tracking_uri=service.repo.tracking_uri, registry_uri=service.repo.tracking_uri)


def ready(service: LiveService) -> dict:
    return httpx.get(service.url("/readyz"), timeout=5).json()


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def register_variant(service: LiveService, tmp: Path, *, kind: str = "hnsw", corrupt: bool = False) -> str:
    """Register a new version built from the champion's artifact (another index kind, everything else the same),
    optionally corrupted."""
    client = client_for(service)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    source = load_artifact(service.repo.root / "data" / "index")
    out = tmp / f"variant-{kind}-{int(corrupt)}"
    write_artifact(
        out,
        source.vectors.astype("float32"),
        [str(i) for i in source.ids],
        source.metadata,
        source.manifest.model,
        IndexSettings(kind=kind, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64),
        source.manifest.dataset_version,
        reference_queries=source.reference_queries,
        # the same colour data and keyword index: later tests on the shared live service filter and search by
        # keyword, whichever version these tests leave as champion
        colors=source.colors,
        keyword_index=source.keyword_index,
    )
    if corrupt:
        vectors = out / "vectors.npy"
        data = bytearray(vectors.read_bytes())
        data[-3] ^= 0x10
        vectors.write_bytes(bytes(data))
    settings = RegistrySettings(tracking_uri=service.repo.tracking_uri)
    assert champion.run_id is not None
    registered = register_index(settings, out, run_id=champion.run_id, tags={"variant": kind, "corrupt": str(corrupt)})
    return registered.version


def set_champion(service: LiveService, version: str) -> None:
    client_for(service).set_registered_model_alias(MODEL, "champion", version)


@pytest.fixture(scope="module", autouse=True)
def restore_champion(live_service: LiveService) -> Iterator[None]:
    """These tests promote variants (another index kind, a corrupt copy) on the shared live service; put the
    pipeline's champion back afterwards, so a test file that runs later sees the artifact the pipeline built."""
    champion = client_for(live_service).get_model_version_by_alias(MODEL, "champion").version
    served = ready(live_service)["index_version"]
    yield
    set_champion(live_service, str(champion))
    wait_for(lambda: ready(live_service)["index_version"] == served, 60.0, f"champion {champion} served again")


def test_ready_and_search_over_http(live_service: LiveService) -> None:
    status = ready(live_service)
    assert status["ready"]
    assert not status["stale"]
    assert status["index_size"] == 300
    assert status["reranker"].startswith("gemini")
    r = httpx.get(live_service.url("/search"), params={"q": "a snowy mountain", "rerank": "off"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 4
    assert [hit["rank"] for hit in body["results"]] == [1, 2, 3, 4]
    assert body["index_version"] == status["index_version"]
    assert set(body["timings_ms"]) >= {"encode", "search", "rerank", "total"}
    assert body["rerank"] == {
        "requested": "off",
        "applied": False,
        "fallback_reason": "not_requested",
        "detail": None,
        "model": body["rerank"]["model"],
    }
    assert r.headers["x-request-id"] == body["request_id"]
    posted = httpx.post(
        live_service.url("/search"),
        json={"q": "a snowy mountain", "k": 6, "candidates": 12, "rerank": "off"},
        timeout=10,
    )
    assert posted.status_code == 200
    assert len(posted.json()["results"]) == 6
    image = httpx.get(body["results"][0]["thumbnail_url"], timeout=10)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"q": "   "}, "empty"),
        ({"q": "x" * 501}, "limit is 500"),
        ({"q": "forest", "k": 0}, "k: must be between"),
        ({"q": "forest", "k": "four"}, "k:"),
        ({"q": "forest", "candidates": 0}, "candidates: must be between"),
        ({"q": "forest", "rerank": "maybe"}, "rerank"),
        ({}, "q:"),
    ],
)
def test_bad_input_is_a_422_with_a_reason(live_service: LiveService, params: dict, fragment: str) -> None:
    r = httpx.get(live_service.url("/search"), params=params, timeout=10)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]
    assert r.json()["request_id"]


def test_long_query_is_truncated_and_said(live_service: LiveService) -> None:
    query = " ".join(["misty pine forest at dawn"] * 20)  # ~100 words, < 500 chars limit? keep under it
    query = query[:490]
    body = httpx.get(live_service.url("/search"), params={"q": query, "rerank": "off"}, timeout=10).json()
    assert body["query_truncated"] is True


def test_image_ids_are_validated(live_service: LiveService) -> None:
    assert httpx.get(live_service.url("/images/..%2F..%2Fetc%2Fpasswd"), timeout=5).status_code in (404, 422)
    assert httpx.get(live_service.url("/images/notInTheIndex"), timeout=5).status_code == 404


def test_gemini_rerank_applied_and_fallbacks(live_service: LiveService) -> None:
    standin = live_service.standin
    standin.script(gs.rank())  # reverses CLIP order with reasons
    body = httpx.get(live_service.url("/search"), params={"q": "red flowers", "rerank": "on"}, timeout=10).json()
    assert body["rerank"]["applied"] is True, body["rerank"]
    assert all(hit["reason"] for hit in body["results"])
    sent = standin.requests[-1]
    assert sent.images, "thumbnails must be sent inline"
    # The default model's request shape (the stand-in answers 400 to what gemini-3.5-flash-lite rejects).
    assert sent.model == body["rerank"]["model"] == "gemini-3.5-flash-lite"
    assert sent.thinking_config == {"thinkingLevel": "MINIMAL"}
    assert sent.ignored == []
    assert "(model found)" in ready(live_service)["reranker"]  # the start-up models lookup

    standin.script(gs.hang(5.0))
    start = time.perf_counter()
    body = httpx.get(live_service.url("/search"), params={"q": "desert dunes", "rerank": "on"}, timeout=10).json()
    elapsed = time.perf_counter() - start
    assert body["rerank"]["applied"] is False
    assert body["rerank"]["fallback_reason"] == "timeout"
    assert len(body["results"]) == 4
    assert elapsed < 0.6 + 0.5, elapsed  # budget 0.6 s, plus encode/search/HTTP on a loaded machine

    standin.script(gs.malformed())
    body = httpx.get(live_service.url("/search"), params={"q": "ocean waves", "rerank": "auto"}, timeout=10).json()
    assert body["rerank"]["fallback_reason"] == "invalid_output"
    standin.script()


def test_metrics_are_exported(live_service: LiveService) -> None:
    httpx.get(live_service.url("/search"), params={"q": "night city", "rerank": "off"}, timeout=10)
    text = httpx.get(live_service.url("/metrics"), timeout=5).text
    for needle in (
        'clipsearch_requests_total{route="/search",status="200"}',
        'clipsearch_stage_latency_seconds_bucket{le="0.01",stage="encode"}',
        'clipsearch_rerank_outcomes_total{outcome="not_requested"}',
        "clipsearch_index_size 300.0",
        "clipsearch_top1_similarity_bucket",
        "clipsearch_gemini_quota_requests_per_minute",
    ):
        assert needle in text, needle


def test_drift_is_computed_from_recent_queries(live_service: LiveService) -> None:
    for q in [
        f"{w} {i}" for i in range(4) for w in ("forest", "red car", "snow", "sunset beach", "city lights", "desert")
    ]:
        httpx.get(live_service.url("/search"), params={"q": q, "rerank": "off"}, timeout=10)

    def available() -> bool:
        return bool(httpx.get(live_service.url("/drift"), timeout=5).json()["available"])

    wait_for(available, 30, "a drift result")
    drift = httpx.get(live_service.url("/drift"), timeout=5).json()
    assert drift["drift_score"] is not None
    assert drift["n_current"] >= 5
    html = httpx.get(live_service.url("/drift"), params={"format": "html"}, timeout=10)
    assert html.status_code == 200
    assert "<html" in html.text.lower()
    assert "clipsearch_drift_score" in httpx.get(live_service.url("/metrics"), timeout=5).text


def test_admin_reload_needs_the_token(live_service: LiveService) -> None:
    assert httpx.post(live_service.url("/admin/reload"), timeout=10).status_code == 401
    r = httpx.post(
        live_service.url("/admin/reload"), headers={"Authorization": f"Bearer {live_service.admin_token}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    window = httpx.get(
        live_service.url("/admin/drift-window"),
        headers={"Authorization": f"Bearer {live_service.admin_token}"},
        timeout=10,
    )
    assert window.status_code == 200
    assert window.content[:6] == b"\x93NUMPY"


def test_swap_under_concurrent_load_has_zero_failures(live_service: LiveService, tmp_path: Path) -> None:
    before = ready(live_service)
    new_version = register_variant(live_service, tmp_path, kind="hnsw")
    seen: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def hammer(i: int) -> None:
        with httpx.Client(timeout=15) as client:
            while not stop.is_set():
                r = client.get(live_service.url("/search"), params={"q": f"query {i} forest", "rerank": "off"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen[r.json()["index_version"]] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    set_champion(live_service, new_version)
    wait_for(lambda: ready(live_service)["registry_version"] == new_version, 60, "the swap to the new version")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    after = ready(live_service)
    assert not failures, failures[:5]
    assert after["index_version"] != before["index_version"]
    assert set(seen) == {before["index_version"], after["index_version"]}, seen
    assert all(count > 0 for count in seen.values())


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(live_service: LiveService, tmp_path: Path) -> None:
    serving = ready(live_service)
    bad_version = register_variant(live_service, tmp_path, kind="exact", corrupt=True)
    set_champion(live_service, bad_version)

    def refused() -> bool:
        text = httpx.get(live_service.url("/metrics"), timeout=5).text
        line = next((ln for ln in text.splitlines() if ln.startswith("clipsearch_index_refusals_total")), "x 0")
        return float(line.split()[-1]) >= 1

    wait_for(refused, 60, "the corrupt version to be refused")
    assert ready(live_service)["index_version"] == serving["index_version"]
    r = httpx.get(live_service.url("/search"), params={"q": "forest", "rerank": "off"}, timeout=10)
    assert r.status_code == 200
    assert r.json()["index_version"] == serving["index_version"]
    set_champion(live_service, serving["registry_version"])


def test_registry_down_serves_the_cached_version_as_stale(live_service: LiveService, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(live_service.cache_dir, cache)
    dead_registry = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    env = service_env(
        live_service.repo,
        cache,
        CLIPSEARCH_REGISTRY__TRACKING_URI=dead_registry,
        CLIPSEARCH_SERVICE__POLL_INTERVAL_S="30",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="2",
    )
    cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running(cmd, f"{base}/readyz", tmp_path / "stale.log", env=env, cwd=live_service.repo.root, timeout_s=120):
        status = httpx.get(f"{base}/readyz", timeout=5).json()
        assert status["ready"], status
        assert status["stale"], status
        assert "cached" in status["reason"]
        body = httpx.get(f"{base}/search", params={"q": "forest"}, timeout=10).json()
        assert body["stale"] is True
        assert len(body["results"]) == 4


def test_no_registry_and_no_cache_is_not_ready_with_a_reason(live_service: LiveService, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(
        live_service.repo,
        tmp_path / "empty-cache",
        CLIPSEARCH_REGISTRY__TRACKING_URI=f"http://127.0.0.1:{free_port()}",
        CLIPSEARCH_SERVICE__POLL_INTERVAL_S="30",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="2",
    )
    cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running(cmd, f"{base}/healthz", tmp_path / "unready.log", env=env, cwd=live_service.repo.root, timeout_s=120):

        def answered() -> bool:
            return "starting" not in (httpx.get(f"{base}/readyz", timeout=5).json().get("reason") or "")

        wait_for(answered, 60, "the start-up attempt to finish")
        r = httpx.get(f"{base}/readyz", timeout=5)
        assert r.status_code == 503
        assert "no index to serve" in r.json()["reason"]
        assert "unreachable" in r.json()["reason"]
        s = httpx.get(f"{base}/search", params={"q": "forest"}, timeout=5)
        assert s.status_code == 503
        assert "not ready" in s.json()["detail"]


def test_chat_page_renders_four_images_in_chromium(live_service: LiveService, tmp_path: Path) -> None:
    from tests.e2e.test_chat_page import drive_chat

    live_service.standin.script(gs.rank())
    run = drive_chat(
        live_service.base_url, tmp_path, queries=("a foggy forest at dawn", "red flowers"), error_query="x" * 600
    )
    assert run.screenshots
