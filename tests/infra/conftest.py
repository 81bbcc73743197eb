"""Fixtures for the deployment-artefact tests: where the validator tools are, and the rendered manifests.

The validators live in their own virtualenv (requirements-tools.txt) so their pins never meet the app's:
    python -m venv .venv-tools && .venv-tools/bin/pip install -r requirements-tools.txt
CLIPSEARCH_TOOLS_BIN points at that venv's bin/ (default: <repo>/.venv-tools/bin). kubectl (with its built-in
kustomize) and promtool come from the PATH. A missing tool FAILS the test with the command that installs it:
a skipped validator would turn a broken manifest green.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("staging", "prod", "cpu")
# The Kubernetes version the manifests are validated against: terraform's default kubernetes_version.
KUBERNETES_VERSION = "1.35.0"

INSTALL_HINT = {
    "venv": "python -m venv .venv-tools && .venv-tools/bin/pip install -r requirements-tools.txt",
    "kubectl": "install kubectl >= 1.27 (ships kustomize), e.g. the Debian/Ubuntu `kubectl` package",
    "promtool": "apt-get install -y prometheus  (Debian/Ubuntu; provides /usr/bin/promtool)",
}


def tools_bin() -> Path:
    """The validator venv's bin/ directory (CLIPSEARCH_TOOLS_BIN, default <repo>/.venv-tools/bin)."""
    return Path(os.environ.get("CLIPSEARCH_TOOLS_BIN", REPO / ".venv-tools" / "bin"))


def require_tool(name: str) -> str:
    """Absolute path of a validator, or a test failure that says how to install it."""
    if name in ("kubectl", "promtool"):
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not on PATH; {INSTALL_HINT[name]}", pytrace=False)
        return found
    candidate = tools_bin() / name
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        pytest.fail(
            f"validator {name!r} not found at {candidate} (set CLIPSEARCH_TOOLS_BIN to the tools venv's bin/); "
            f"install it with: {INSTALL_HINT['venv']}",
            pytrace=False,
        )
    return str(candidate)


def run(
    cmd: list[str], *, cwd: Path = REPO, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a validator and capture its output (never raises on a non-zero exit: tests assert on it)."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def kustomize_build(path: Path) -> str:
    """`kubectl kustomize PATH`, failing the test with kustomize's message when the overlay does not render."""
    result = run([require_tool("kubectl"), "kustomize", str(path)], timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path.relative_to(REPO)} failed:\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class Rendered:
    """One rendered kustomization: the YAML file written to disk and its parsed objects."""

    name: str
    path: Path
    objects: list[dict[str, Any]]

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = self.find(kind, name)
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every overlay plus the two feature-extraction Jobs, rendered once per session into a temp directory."""
    out = tmp_path_factory.mktemp("rendered")
    targets = {name: K8S / "overlays" / name for name in OVERLAYS}
    targets["jobs-embed"] = K8S / "jobs" / "embed"
    targets["jobs-build-index"] = K8S / "jobs" / "build-index"
    targets["jobs-download"] = K8S / "jobs" / "download"
    result: dict[str, Rendered] = {}
    for name, path in targets.items():
        text = kustomize_build(path)
        file = out / f"{name}.yaml"
        file.write_text(text)
        objects = [doc for doc in yaml.safe_load_all(text) if doc]
        result[name] = Rendered(name, file, objects)
    return result


@pytest.fixture(scope="session")
def checkov_json(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, list[str]], dict[str, Any]]:
    """Run checkov once per (key, args) in the session and return its merged JSON summary and failures."""
    cache: dict[str, dict[str, Any]] = {}
    import json

    def scan(key: str, args: list[str]) -> dict[str, Any]:
        if key not in cache:
            cmd = [require_tool("checkov"), *args, "--output", "json", "--compact", "--skip-download"]
            env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
            proc = run(cmd, timeout=600, env=env)
            assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            data = json.loads(proc.stdout)
            reports = data if isinstance(data, list) else [data]
            failed: list[dict[str, Any]] = []
            skipped: list[dict[str, Any]] = []
            passed = 0
            for report in reports:
                results = report.get("results", {})
                failed += results.get("failed_checks", [])
                skipped += results.get("skipped_checks", [])
                passed += len(results.get("passed_checks", []))
            cache[key] = {"failed": failed, "skipped": skipped, "passed": passed, "exit": proc.returncode}
        return cache[key]

    return scan
