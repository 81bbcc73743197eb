"""A real Prometheus scrapes the live service through monitoring/prometheus/prometheus.yml, and PromQL for the
p95 search latency returns a value."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from clipsearch_devtools.processes import free_port, running
from clipsearch_devtools.repo_copy import REPO
from tests.e2e.conftest import LiveService

pytestmark = pytest.mark.e2e

P95 = 'histogram_quantile(0.95, sum by (le) (rate(clipsearch_request_latency_seconds_bucket{route="/search"}[1m])))'


def test_prometheus_scrapes_the_service_and_answers_p95(live_service: LiveService, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "Prometheus is not installed: `make system-deps` (Debian package prometheus) installs it"
    config = yaml.safe_load((REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    job = config["scrape_configs"][0]
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = [urlparse(live_service.base_url).netloc]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(cmd, f"{base}/-/ready", tmp_path / "prometheus.log", timeout_s=60):
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline and value is None:
            for q in ("forest", "snow", "red flowers"):
                httpx.get(live_service.url("/search"), params={"q": q, "rerank": "off"}, timeout=10)
            answer = httpx.get(f"{base}/api/v1/query", params={"query": P95}, timeout=5).json()
            assert answer["status"] == "success", answer
            result = answer["data"]["result"]
            if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                value = float(result[0]["value"][1])
            else:
                time.sleep(1.0)
        assert value is not None, "Prometheus never produced a p95 for /search"
        assert 0 < value < 5
        targets = httpx.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert targets[0]["health"] == "up"
