"""A retired Gemini model seen end to end: a uvicorn process whose configured model the Gemini stand-in no longer
serves reports it in /readyz (still 200: CLIP-only search serves), in /metrics and in each search response,
and answers with the fallback model while there is one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BIN, LiveService, service_env
from tests.e2e.test_service import wait_for
from tests.fixtures.gemini_standin import GeminiStandin
from tests.support.processes import free_port, running

pytestmark = pytest.mark.e2e

PRIMARY, FALLBACK = "gemini-3.5-flash-lite", "gemini-3.1-flash-lite"


def _metric(text: str, model: str) -> str | None:
    prefix = f'clipsearch_reranker_model_available{{model="{model}",'
    return next((ln.split()[-1] for ln in text.splitlines() if ln.startswith(prefix)), None)


def test_retired_model_shows_in_readyz_metric_and_response(live_service: LiveService, tmp_path: Path) -> None:
    with GeminiStandin() as standin:
        standin.retire(PRIMARY)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = service_env(
            live_service.repo,
            live_service.cache_dir,
            CLIPSEARCH_RERANK__BASE_URL=standin.base_url,
            GEMINI_API_KEY="test-key",
            CLIPSEARCH_SERVICE__POLL_INTERVAL_S="30",
        )
        cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
        with running(cmd, f"{base}/readyz", tmp_path / "retired.log", env=env, cwd=live_service.repo.root):
            # The start-up lookup runs beside the index load (once per configured model) and finds the primary gone.
            wait_for(lambda: len(standin.lookups) == 2, 30, "the start-up models lookup")
            ready = httpx.get(f"{base}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text  # readiness is about serving; CLIP order still serves
            assert standin.lookups == [PRIMARY, FALLBACK]
            assert ready.json()["reranker"] == (
                f"{FALLBACK} via google-genai (fallback); unavailable: {PRIMARY} was not found"
            )
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert _metric(metrics, PRIMARY) == "0.0" and _metric(metrics, FALLBACK) == "1.0"

            body = httpx.get(f"{base}/search", params={"q": "red flowers", "rerank": "on"}, timeout=10).json()
            assert body["rerank"]["applied"] is True and body["rerank"]["model"] == FALLBACK, body["rerank"]
            assert [r.model for r in standin.requests] == [FALLBACK]  # the held-off primary is not asked
            sent = standin.requests[-1]
            assert sent.thinking_config == {"thinkingLevel": "MINIMAL"} and sent.ignored == []

            standin.retire(FALLBACK)  # now nothing is left
            body = httpx.get(f"{base}/search", params={"q": "desert dunes", "rerank": "auto"}, timeout=10).json()
            assert body["rerank"]["applied"] is False
            assert body["rerank"]["fallback_reason"] == "model_unavailable"
            assert f"{PRIMARY} was not found" in body["rerank"]["detail"]
            assert len(body["results"]) == 4
            status = httpx.get(f"{base}/readyz", timeout=5)
            assert status.status_code == 200
            assert status.json()["reranker"].startswith(f"unavailable: {PRIMARY} was not found")
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert _metric(metrics, FALLBACK) == "0.0"
            assert 'clipsearch_rerank_outcomes_total{outcome="model_unavailable"} 1.0' in metrics
