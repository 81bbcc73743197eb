"""checkov over every kind of deployment artefact: no failed check, and every skip carries a written reason.

Skips are written where the resource is (``checkov.io/skipN`` annotations in manifests, ``# checkov:skip=ID:reason``
in HCL and in the Dockerfile), so the reason sits beside what it excuses.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import REPO, Rendered

pytestmark = pytest.mark.e2e  # checkov takes ~5 s per directory

Scan = Callable[[str, list[str]], dict[str, Any]]


def _describe(failures: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {f['check_id']} {f.get('check_name', '')}: {f.get('resource', '')} ({f.get('file_path', '')}:"
        f"{f.get('file_line_range', '')})"
        for f in failures
    )


def _assert_clean(report: dict[str, Any], what: str) -> None:
    assert report["passed"] > 0, f"checkov ran no check on {what}: wrong framework or path?"
    assert not report["failed"], f"checkov failed checks on {what}:\n{_describe(report['failed'])}"
    unexplained = [
        s for s in report["skipped"] if len((s.get("check_result", {}).get("suppress_comment") or "").strip()) < 20
    ]
    assert not unexplained, f"skips without a written reason on {what}:\n{_describe(unexplained)}"


@pytest.fixture(scope="module")
def k8s_dir(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All rendered overlays and Jobs in one directory, so checkov scans them in one run."""
    out = tmp_path_factory.mktemp("checkov-k8s")
    for item in rendered.values():
        shutil.copy(item.path, out / item.path.name)
    return out


def test_kubernetes_manifests_pass_checkov(checkov_json: Scan, k8s_dir: Path) -> None:
    report = checkov_json("k8s", ["--directory", str(k8s_dir), "--framework", "kubernetes"])
    _assert_clean(report, "the rendered k8s overlays and jobs")


def test_terraform_passes_checkov(checkov_json: Scan) -> None:
    report = checkov_json("terraform", ["--directory", str(REPO / "terraform"), "--framework", "terraform"])
    _assert_clean(report, "terraform/")


def test_dockerfile_passes_checkov(checkov_json: Scan) -> None:
    report = checkov_json("dockerfile", ["--file", str(REPO / "Dockerfile"), "--framework", "dockerfile"])
    _assert_clean(report, "Dockerfile")


def test_workflows_pass_checkov(checkov_json: Scan) -> None:
    report = checkov_json(
        "workflows", ["--directory", str(REPO / ".github" / "workflows"), "--framework", "github_actions"]
    )
    _assert_clean(report, ".github/workflows")


def test_checkov_catches_a_privileged_pod(checkov_json: Scan, tmp_path: Path) -> None:
    """Control: the same invocation does fail on a manifest that breaks the rules the real ones follow."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: x}\n"
        "spec:\n  containers:\n    - name: c\n      image: nginx:latest\n"
        "      securityContext: {privileged: true, allowPrivilegeEscalation: true}\n"
    )
    report = checkov_json("control", ["--directory", str(tmp_path), "--framework", "kubernetes"])
    failed_ids = {f["check_id"] for f in report["failed"]}
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= failed_ids
