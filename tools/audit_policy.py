"""The dependency-audit policy: report every known vulnerability in the pinned dependencies; fail on a fixable
critical one.

`make audit` runs `pip-audit` over constraints.txt (every pin, no resolution) and writes its JSON report; this
module reads it, looks each finding up in OSV (https://api.osv.dev/v1/vulns/<id>, the id and its aliases) for a
severity, prints one line per finding and exits 1 when a finding is CRITICAL and has a fixed version to move to.
A critical finding with no fix yet is reported but does not fail the build (nothing to upgrade to); a finding
whose severity no record states is reported as `unknown`.

Severity: the GitHub advisory's label (`database_specific.severity`: LOW, MODERATE, HIGH, CRITICAL), from the
finding's own record or from an alias's (PYSEC records carry none; their GHSA alias does); else a CVSS v3 base
score in the record (`severity[].score` as a number) mapped the usual way (>= 9.0 critical).

    python -m tools.audit_policy reports/pip-audit.json [--summary reports/audit-summary.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OSV_VULN_URL = "https://api.osv.dev/v1/vulns/{id}"
RANK = {"unknown": 0, "low": 1, "moderate": 2, "medium": 2, "high": 3, "critical": 4}
Fetch = Callable[[str], dict[str, Any] | None]


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    vuln_id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    severity: str

    @property
    def fixable(self) -> bool:
        return bool(self.fix_versions)

    @property
    def fails(self) -> bool:
        return self.fixable and self.severity == "critical"


def _cvss_label(score: float) -> str:
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "moderate"
    return "low" if score > 0 else "unknown"


def severity_of(record: dict[str, Any]) -> str:
    """One OSV record's severity label, or `unknown`."""
    label = str((record.get("database_specific") or {}).get("severity") or "").lower()
    if label in RANK:
        return label
    for entry in record.get("severity") or []:
        try:
            return _cvss_label(float(entry.get("score", "")))
        except (TypeError, ValueError):
            continue  # a CVSS vector string without a score: not enough to label it here
    return "unknown"


def worst(labels: Iterable[str]) -> str:
    return max(labels, key=lambda label: RANK.get(label, 0), default="unknown")


def evaluate(report: dict[str, Any], fetch: Fetch) -> list[Finding]:
    """Every vulnerability in a pip-audit JSON report, with the worst severity of its OSV records."""
    findings = []
    for dep in report.get("dependencies", []):
        for vuln in dep.get("vulns", []):
            ids = [vuln["id"], *vuln.get("aliases", [])]
            records = [r for r in (fetch(i) for i in ids) if r]
            findings.append(
                Finding(
                    package=dep["name"],
                    version=dep.get("version", "?"),
                    vuln_id=vuln["id"],
                    aliases=tuple(vuln.get("aliases", [])),
                    fix_versions=tuple(vuln.get("fix_versions", [])),
                    severity=worst(severity_of(r) for r in records),
                )
            )
    return findings


def fetch_osv(vuln_id: str, timeout_s: float = 20.0) -> dict[str, Any] | None:
    """The OSV record of one id (None when OSV has no record of it, e.g. a CVE id)."""
    try:
        with urllib.request.urlopen(OSV_VULN_URL.format(id=vuln_id), timeout=timeout_s) as response:  # noqa: S310
            record: dict[str, Any] = json.load(response)
            return record
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def main(argv: list[str] | None = None, fetch: Fetch = fetch_osv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pip-audit --format json output")
    parser.add_argument("--summary", type=Path, help="write the findings and the verdict here (JSON)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"no pip-audit report at {args.report}: the audit did not run (see its output above)", file=sys.stderr)
        return 2
    findings = evaluate(json.loads(args.report.read_text()), fetch)
    failing = [f for f in findings if f.fails]
    for f in sorted(findings, key=lambda f: (-RANK.get(f.severity, 0), f.package)):
        fix = ", ".join(f.fix_versions) or "no fix yet"
        mark = "FAIL" if f.fails else "report"
        print(f"{mark:6} {f.severity:9} {f.package}=={f.version} {f.vuln_id} (fixed in: {fix})")
    verdict = (
        f"{len(failing)} fixable critical vulnerabilit{'y' if len(failing) == 1 else 'ies'}: upgrade the pins"
        if failing
        else f"no fixable critical vulnerability ({len(findings)} finding(s) reported)"
    )
    print(verdict)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(
            json.dumps(
                {"verdict": verdict, "failing": len(failing), "findings": [asdict(f) for f in findings]}, indent=2
            )
        )
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
