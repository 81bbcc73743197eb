"""The dependency-audit policy (tools/audit_policy.py) on pip-audit and OSV JSON: report all, fail on a fixable
critical finding only. The live audit runs in CI's supply-chain job (`make audit`), where OSV is reachable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.audit_policy import evaluate, main, severity_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"


def fetch(vuln_id: str) -> dict[str, Any] | None:
    path = FIXTURES / "osv" / f"{vuln_id}.json"
    return json.loads(path.read_text()) if path.is_file() else None  # CVE ids: no OSV record


def test_severity_comes_from_the_advisory_or_an_alias() -> None:
    findings = {f.vuln_id: f for f in evaluate(json.loads((FIXTURES / "pip-audit.json").read_text()), fetch)}
    assert set(findings) == {"GHSA-test-mod0-0001", "PYSEC-2099-TEST-2", "GHSA-test-crit-0003", "PYSEC-2099-TEST-4"}
    assert findings["GHSA-test-mod0-0001"].severity == "moderate"
    assert not findings["GHSA-test-mod0-0001"].fails
    assert findings["PYSEC-2099-TEST-2"].severity == "critical"  # from its GHSA alias
    assert findings["PYSEC-2099-TEST-2"].fails
    assert findings["GHSA-test-crit-0003"].severity == "critical"
    assert not findings["GHSA-test-crit-0003"].fails
    assert findings["PYSEC-2099-TEST-4"].severity == "unknown"


def test_cvss_scores_map_to_labels() -> None:
    assert severity_of({"severity": [{"type": "CVSS_V3", "score": "9.8"}]}) == "critical"
    assert severity_of({"severity": [{"type": "CVSS_V3", "score": "7.5"}]}) == "high"
    assert severity_of({"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}]}) == "unknown"


def test_exit_code_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "summary.json"
    assert main([str(FIXTURES / "pip-audit.json"), "--summary", str(summary)], fetch=fetch) == 1
    out = capsys.readouterr().out
    assert "FAIL   critical  pillow==13.0.0 PYSEC-2099-TEST-2 (fixed in: 13.0.1)" in out
    assert "report critical  pyyaml==6.0.3 GHSA-test-crit-0003 (fixed in: no fix yet)" in out
    assert json.loads(summary.read_text())["failing"] == 1


def test_no_fixable_critical_passes(tmp_path: Path) -> None:
    report = json.loads((FIXTURES / "pip-audit.json").read_text())
    report["dependencies"] = [d for d in report["dependencies"] if d["name"] != "pillow"]
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(report))
    assert main([str(path)], fetch=fetch) == 0
    assert main([str(tmp_path / "missing.json")], fetch=fetch) == 2
