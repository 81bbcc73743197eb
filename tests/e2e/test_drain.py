"""A rollout's SIGTERM under steady load: not-ready at once, every accepted request answered, then a clean exit.

The load generator plays the load balancer: it keeps sending new requests for a while after SIGTERM (endpoints
take time to update), then stops routing to this pod. One slow re-ranked request is started just before the
drain ends, so it is in flight when uvicorn stops accepting. A request counts as failed when it got a non-200
answer or its connection broke after it was sent; the target is zero.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from clipsearch_devtools import gemini_standin as gs
from tests.e2e.conftest import PipelineRepo, ensure_champion, service_process

pytestmark = pytest.mark.e2e

DRAIN_S = 4.0
ROUTED_AFTER_SIGTERM_S = 2.0  # how long "endpoints" keep sending new requests here after SIGTERM


def test_sigterm_under_load_fails_no_accepted_request(reproduced: PipelineRepo, tmp_path: Path) -> None:
    ensure_champion(reproduced)
    with (
        gs.GeminiStandin(latency_s=0.05) as standin,
        service_process(
            reproduced,
            tmp_path / "drain",
            GEMINI_API_KEY="test-key",
            CLIPSEARCH_RERANK__BASE_URL=standin.base_url,
            CLIPSEARCH_RERANK__BUDGET_S="3",
            CLIPSEARCH_SERVICE__DRAIN_S=str(DRAIN_S),
            CLIPSEARCH_SERVICE__RATE_LIMIT_SEARCH="100000/minute",
            CLIPSEARCH_SERVICE__RATE_LIMIT_RERANK="100000/minute",
        ) as service,
    ):
        routing = threading.Event()
        routing.set()
        ok: list[float] = []
        failed: list[str] = []
        lock = threading.Lock()

        def one(client: httpx.Client, q: str, rerank: str) -> None:
            try:
                r = client.get(service.url("/search"), params={"q": q, "rerank": rerank})
            except httpx.ConnectError as exc:  # never accepted: a load balancer would retry elsewhere
                with lock:
                    failed.append(f"connect refused while still routed: {exc}")
                return
            except httpx.HTTPError as exc:
                with lock:
                    failed.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                (
                    ok.append(time.monotonic())
                    if r.status_code == 200
                    else failed.append(f"{r.status_code} {r.text[:200]}")
                )

        def worker(i: int) -> None:
            with httpx.Client(timeout=30) as client:
                n = 0
                while routing.is_set():
                    one(client, f"steady query {i} {n % 7}", "auto" if n % 3 == 0 else "off")
                    n += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        before = len(ok)
        sigterm_at = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)

        ready_status = httpx.get(service.url("/readyz"), timeout=10)
        assert ready_status.status_code == 503
        assert ready_status.json()["reason"].startswith("draining")

        time.sleep(ROUTED_AFTER_SIGTERM_S)
        routing.clear()  # the endpoints update reached the "load balancer"
        for t in threads:
            t.join(timeout=60)

        # a slow re-ranked request that is still in flight when the drain ends and uvicorn stops accepting
        standin.script(gs.rank(latency_s=1.0))
        late = threading.Thread(
            target=lambda: one(httpx.Client(timeout=30), "a late slow query", "on"), name="late-request"
        )
        time.sleep(max(0.0, sigterm_at + DRAIN_S - 0.3 - time.monotonic()))
        late.start()
        late.join(timeout=30)

        service.proc.wait(timeout=DRAIN_S + 30)
        after_sigterm = sum(1 for t in ok if t > sigterm_at)
        assert not failed, failed[:5]
        assert before > 10 and after_sigterm > 10, (before, after_sigterm)  # noqa: PT018
        assert ok[-1] > sigterm_at + DRAIN_S - 0.5  # the late request was answered after the drain began to end
    log = service.log.read_text()
    assert "draining" in log
    assert "drain over" in log
