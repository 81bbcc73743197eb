"""The PrometheusRule's alerts: `promtool check rules` accepts them and `promtool test rules` shows each alert
firing and not firing (monitoring/prometheus/clipsearch-rules.test.yaml)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import REPO, require_tool, run

RULE = REPO / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
TESTS = REPO / "monitoring" / "prometheus" / "clipsearch-rules.test.yaml"


def _write_rules(directory: Path, text: str | None = None) -> Path:
    """Write the PrometheusRule's spec as a plain rules file beside a copy of the unit tests."""
    spec = yaml.safe_load(RULE.read_text())["spec"]
    rules = directory / "clipsearch-rules.yaml"
    rules.write_text(text if text is not None else yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    shutil.copy(TESTS, directory / TESTS.name)
    return rules


def test_rules_are_valid(tmp_path: Path) -> None:
    rules = _write_rules(tmp_path)
    proc = run([require_tool("promtool"), "check", "rules", str(rules)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_unit_tests_pass(tmp_path: Path) -> None:
    _write_rules(tmp_path)
    proc = run([require_tool("promtool"), "test", "rules", TESTS.name], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    spec = yaml.safe_load(RULE.read_text())["spec"]
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts <= fires, f"alerts never shown firing: {alerts - fires}"
    assert alerts <= quiet, f"alerts never shown quiet: {alerts - quiet}"


@pytest.mark.parametrize(
    ("alert", "threshold", "moved"),
    [
        ("ClipsearchHighLatencyP95", "> 2", "> 20"),
        ("ClipsearchHighErrorRate", "> 0.05", "> 0.5"),
        ("ClipsearchGeminiQuotaHigh", "> 0.8", "> 0.9"),
        ("ClipsearchRerankFallbackRateHigh", "> 0.2", "> 0.5"),
        ("ClipsearchRerankerModelUnavailable", "== 0", "== 1"),
    ],
)
def test_unit_tests_catch_a_changed_threshold(tmp_path: Path, alert: str, threshold: str, moved: str) -> None:
    """Control: the promtool tests fail when a threshold moves, so they test the rules, not themselves."""
    spec = yaml.safe_load(RULE.read_text())["spec"]
    rule = next(r for g in spec["groups"] for r in g["rules"] if r.get("alert") == alert)
    assert rule["expr"].rstrip().endswith(threshold), rule["expr"]
    rule["expr"] = rule["expr"].rstrip()[: -len(threshold)] + moved
    _write_rules(tmp_path, yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    proc = run([require_tool("promtool"), "test", "rules", TESTS.name], cwd=tmp_path)
    assert proc.returncode != 0, f"moving {alert} from {threshold!r} to {moved!r} went unnoticed"
    assert alert in proc.stdout + proc.stderr
