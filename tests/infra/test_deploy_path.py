"""The deploy path from CI: a runner inside each environment's VPC applies the overlay with every image the overlay
names, from that account's registry; prod's MLflow gets its champion through its own promotion job."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.infra.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def _load(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in job["steps"])


def test_deploy_runs_inside_the_environments_vpc() -> None:
    job = _load("deploy-env.yml")["jobs"]["deploy"]
    assert job["runs-on"] == "deploy-${{ inputs.environment }}"
    labels = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert {"deploy-staging", "deploy-prod"} <= set(labels)


def test_deploy_sets_every_image_the_overlay_names() -> None:
    runs = _runs(_load("deploy-env.yml")["jobs"]["deploy"])
    set_images = dict(re.findall(r'kustomize edit set image "([\w-]+)=\$\{REGISTRY\}/([\w:${}-]+)"', runs))
    for env in ("staging", "prod"):
        kustomization = yaml.safe_load((REPO / "k8s" / "overlays" / env / "kustomization.yaml").read_text())
        names = {i["name"] for i in kustomization["images"]}
        assert names == set(set_images), f"{env}: overlay images {names}, deploy sets {set(set_images)}"
    assert set_images["clipsearch-cpu"].endswith("${SHA}-cpu")
    # ...and waits until each of them is in this account's registry (replicated from the CI account).
    for ref in ("clipsearch:${SHA}", "clipsearch:${SHA}-cpu", "clipsearch-mlflow:${SHA}"):
        assert f'"{ref}"' in runs


def test_deploy_replaces_the_bootstrap_job_and_waits_for_it() -> None:
    runs = _runs(_load("deploy-env.yml")["jobs"]["deploy"])
    delete = runs.index("delete job mlflow-db-bootstrap")
    apply = runs.index("kubectl apply -k")
    wait = runs.index("job/mlflow-db-bootstrap")
    rollout = runs.index("rollout status deployment/mlflow")
    assert delete < apply < wait < rollout


def test_prod_promotes_the_index_staging_built_into_its_own_mlflow() -> None:
    ml = _load("ml-pipeline.yml")
    staging, prod = ml["jobs"]["pipeline"], ml["jobs"]["prod"]
    assert staging["environment"] == "staging" and prod["environment"] == "prod"
    assert prod["needs"] == "pipeline" and prod["runs-on"] == "deploy-prod"
    assert prod["permissions"] == {"contents": "read", "id-token": "write"}
    runs = _runs(prod)
    order = [runs.index(s) for s in ("dvc pull data/lite data/index", "evaluate", "register", "clipsearch promote")]
    assert order == sorted(order)
    assert "dvc repro evaluate" not in runs, "prod must not rebuild (download/embed) what staging evaluated"
    assert json.dumps(prod["env"]).count("vars.") >= 2, "prod reads its own MLflow URI and DVC remote variables"
