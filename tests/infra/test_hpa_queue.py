"""The HPA scales on the service's queue: the metrics it names are served by the committed prometheus-adapter
rules, built from series the service really exports, and CPU stays as a signal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.search.telemetry import Metrics
from tests.infra.conftest import OVERLAYS, REPO, Rendered

ADAPTER_VALUES = REPO / "k8s" / "base" / "monitoring" / "prometheus-adapter-values.yaml"


def _adapter_rules(path: Path = ADAPTER_VALUES) -> list[dict]:
    return yaml.safe_load(path.read_text())["rules"]["custom"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_uses_queue_metrics_that_the_adapter_serves(rendered: dict[str, Rendered], overlay: str) -> None:
    hpa = rendered[overlay].one("HorizontalPodAutoscaler", "clipsearch")
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert "Resource" in kinds, "CPU stays a scaling signal"
    pods = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert {"clipsearch_queue_wait_seconds", "clipsearch_shed_per_second"} <= pods
    served = {rule["name"]["as"] for rule in _adapter_rules()}
    assert pods <= served


def test_adapter_rules_read_series_the_service_exports() -> None:
    from prometheus_client import generate_latest

    exported = generate_latest(Metrics().registry).decode()
    families = {line.split()[2] for line in exported.splitlines() if line.startswith("# TYPE ")}
    for rule in _adapter_rules():
        series = rule["seriesQuery"].split("{", 1)[0]
        assert {series, series.removesuffix("_count")} & families, f"{series} is not exported by the service"
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
