"""GitHub Actions workflows: actionlint and zizmor clean, actions pinned by commit SHA, OIDC instead of keys,
least-privilege permissions, and the triggers and gates the delivery process depends on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import REPO, require_tool, run

WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))


def _load(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_actionlint_clean() -> None:
    # No -config-file: actionlint finds .github/actionlint.yaml itself, as it does for a person in the repo root.
    proc = run([require_tool("actionlint")], cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_reports_no_high_severity_finding() -> None:
    proc = run([require_tool("zizmor"), "--offline", "--format", "json", str(WORKFLOWS)], timeout=120)
    assert proc.stdout.strip(), proc.stderr
    findings = json.loads(proc.stdout)
    high = [f for f in findings if f["determinations"]["severity"] == "High"]
    assert not high, "\n".join(f"{f['ident']}: {f['desc']}" for f in high)


def test_zizmor_catches_an_injection(tmp_path: Path) -> None:
    """Control: a template injection is reported as High by the same invocation."""
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "bad.yml").write_text(
        "on: pull_request_target\npermissions: {}\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    proc = run([require_tool("zizmor"), "--offline", "--format", "json", str(wf)])
    assert any(f["determinations"]["severity"] == "High" for f in json.loads(proc.stdout))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_pinned_by_sha_and_no_static_keys(path: Path) -> None:
    text = path.read_text()
    for ref in re.findall(r"uses:\s*(\S+)", text):
        if ref.startswith(("./", "$/")):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref} not pinned by SHA"
    assert "AWS_ACCESS_KEY_ID" not in text
    assert "aws-secret-access-key" not in text
    data = _load(path.name)
    assert "permissions" in data, f"{path.name}: top-level permissions missing"
    for job_name, job in data["jobs"].items():
        perms = job.get("permissions", data["permissions"])
        if isinstance(perms, dict):
            assert not any(v == "write" for k, v in perms.items() if k != "id-token"), f"{path.name}:{job_name}"


def test_ci_triggers_and_jobs() -> None:
    ci = _load("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    assert set(ci["jobs"]) >= {"lint", "test", "infra", "image"}
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    # CI runs exactly what `make test` runs: every prerequisite of the Makefile's `test` target, through make.
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^test:(.*)$", makefile, flags=re.MULTILINE)
    assert match, "the Makefile has no `test:` target"
    targets = match.group(1).split()
    assert {"lint", "test-unit", "test-infra", "test-e2e"} <= set(targets), targets
    for target in targets:
        called = [r for r in runs if re.search(rf"\bmake {re.escape(target)}\b", r)]
        assert called, f"ci.yml never runs `make {target}`"
        # GitHub's Ubuntu runners have Google Chrome; Ubuntu's `chromium` is a snap stub.
        if target in ("test-e2e", "test-infra"):
            assert all("CHROMIUM=/usr/bin/google-chrome" in r for r in called), called
    assert not any("pip install" in r for r in runs), "install steps belong to the Makefile's targets"
    # Supply chain: SBOM + audit through make, reports kept as an artifact even when the audit fails.
    chain = ci["jobs"]["supply-chain"]
    chain_runs = [s.get("run", "") for s in chain["steps"]]
    assert any("make sbom" in r for r in chain_runs)
    assert any("make audit" in r for r in chain_runs)
    upload = next(s for s in chain["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["if"] == "always()"
    assert "reports/sbom.cdx.json" in upload["with"]["path"]
    image = ci["jobs"]["image"]
    build = next(s for s in image["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["push"] == "${{ env.PUSH == 'true' }}"
    assert "github.event_name == 'push'" in image["env"]["PUSH"]


def test_deploy_staging_then_protected_prod() -> None:
    deploy = _load("deploy.yml")
    assert deploy["on"]["workflow_run"]["workflows"] == ["ci"]
    assert deploy["jobs"]["prod"]["needs"] == ["resolve", "staging"]
    assert deploy["jobs"]["prod"]["with"]["environment"] == "prod"
    env = _load("deploy-env.yml")
    job = env["jobs"]["deploy"]
    assert job["environment"] == "${{ inputs.environment }}"
    text = json.dumps(job)
    assert "kustomize edit set image" in text
    assert "kubectl apply -k" in text
    assert "role-to-assume" in text


def test_ml_pipeline_gates_promotion() -> None:
    ml = _load("ml-pipeline.yml")
    assert {"workflow_dispatch", "schedule"} <= set(ml["on"])
    job = ml["jobs"]["pipeline"]
    assert "gpu" in job["runs-on"]
    assert "self-hosted" in job["runs-on"]
    runs = [s.get("run", "") for s in job["steps"]]
    order = [
        next(i for i, r in enumerate(runs) if needle in r)
        for needle in ("dvc repro evaluate", "dvc push", "dvc repro register", "clipsearch promote")
    ]
    assert order == sorted(order), "repro -> push -> register -> promote"
