"""Kubernetes manifests: every overlay renders, validates against the Kubernetes API schemas, and keeps the
properties the deployment relies on (GPU scheduling, restricted security context, probes, secrets by reference,
monitoring wiring).

CRDs: kubernetes-validate has schemas for built-in kinds only. ServiceMonitor and PrometheusRule are checked
here structurally (selector and port match the Service, release label for kube-prometheus-stack), and the
PrometheusRule's rules go through promtool in test_prometheus_rules.py. ExternalSecret and SecretStore (External
Secrets Operator) have no schema there either; test_mlflow_db.py checks what breaks them in practice (API version,
store reference, target Secret name and keys the workloads read). Any other unknown kind fails the test.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import KUBERNETES_VERSION, OVERLAYS, REPO, Rendered, require_tool, run

CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ExternalSecret", "SecretStore"}
GPU_OVERLAYS = ("staging", "prod")
CONTRACT_METRICS = (
    "clipsearch_requests_total",
    "clipsearch_request_latency_seconds",
    "clipsearch_stage_latency_seconds",
    "clipsearch_rerank_outcomes_total",
    "clipsearch_gemini_tokens_total",
    "clipsearch_gemini_cost_usd_total",
    "clipsearch_gemini_requests_total",
    "clipsearch_gemini_quota_requests_per_minute",
    "clipsearch_reranker_model_available",
    "clipsearch_index_info",
    "clipsearch_index_size",
    "clipsearch_drift_score",
    "clipsearch_drift_detected",
    "clipsearch_top1_similarity",
)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _workloads(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["kind"] in ("Deployment", "Job", "CronJob")]


@pytest.mark.parametrize("name", [*OVERLAYS, "jobs-embed", "jobs-build-index", "jobs-download"])
def test_renders_and_validates_against_kubernetes_schemas(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    assert r.objects, f"{name} rendered no objects"
    unknown = {o["kind"] for o in r.objects} - CRD_KINDS
    proc = run(
        [require_tool("kubernetes-validate"), "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(r.path)],
        timeout=180,
    )
    assert proc.returncode == 0, f"kubernetes-validate failed for {name}:\n{proc.stdout}\n{proc.stderr}"
    # Every built-in kind must have been validated (only the CRDs may be schema-less).
    for line in (proc.stdout + proc.stderr).splitlines():
        match = re.search(r"Couldn't find schema for kind (\w+)", line)
        assert match is None or match.group(1) in CRD_KINDS, f"{name}: unvalidated kind: {line}"
    assert unknown, "sanity: built-in kinds present"


def test_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Control: --strict really rejects a typo, so a passing overlay means something."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  selectr: {app: x}\n  ports: [{port: 80}]\n"
    )
    proc = run([require_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(bad)])
    assert proc.returncode != 0


def test_base_renders_on_its_own() -> None:
    from tests.infra.conftest import kustomize_build

    assert "kind: Deployment" in kustomize_build(REPO / "k8s" / "base")
    assert "kind: Deployment" in kustomize_build(REPO / "k8s" / "mlflow")


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlays_schedule_on_gpu_nodes(rendered: dict[str, Rendered], overlay: str) -> None:
    spec = _pod_spec(rendered[overlay].one("Deployment", "clipsearch"))
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"clipsearch.io/node-class": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    config = rendered[overlay].find("ConfigMap")
    assert any(c["data"].get("CLIPSEARCH_MODEL__DEVICE") == "cuda" for c in config)


def test_cpu_overlay_needs_no_gpu(rendered: dict[str, Rendered]) -> None:
    r = rendered["cpu"]
    assert "nvidia.com/gpu" not in json.dumps([_pod_spec(w) for w in _workloads(r)])
    spec = _pod_spec(r.one("Deployment", "clipsearch"))
    assert "nodeSelector" not in spec and "tolerations" not in spec
    config = next(c for c in r.find("ConfigMap") if c["metadata"]["name"].startswith("clipsearch-config"))
    assert config["data"]["CLIPSEARCH_MODEL__DEVICE"] == "cpu"
    mlflow = r.one("Deployment", "mlflow")
    assert mlflow["spec"]["replicas"] == 1 and mlflow["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_restricted(rendered: dict[str, Rendered], overlay: str) -> None:
    for workload in _workloads(rendered[overlay]):
        spec = _pod_spec(workload)
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"requests", "limits"} <= set(c["resources"]), where
            writable = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in writable, f"{where}: read-only root needs a /tmp volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_deployment_contract(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    deployment = r.one("Deployment", "clipsearch")
    spec = _pod_spec(deployment)
    c = spec["containers"][0]
    assert c["command"][:2] == ["uvicorn", "services.search.app:app"]
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"  # readiness alone waits for a champion
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/cache", "/tmp"}
    cache = next(v for v in spec["volumes"] if v["name"] == "cache")
    assert "emptyDir" in cache
    assert spec["topologySpreadConstraints"], "replicas should spread over zones and nodes"
    # Secrets by reference only; none committed.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs["GEMINI_API_KEY"]["name"] == "clipsearch-secrets"
    assert "CLIPSEARCH_SERVICE__ADMIN_TOKEN" in refs
    assert not r.find("Secret"), "a Secret object must never be committed"
    config = next(cm for cm in r.find("ConfigMap") if cm["metadata"]["name"].startswith("clipsearch-config"))
    assert config["data"]["CLIPSEARCH_REGISTRY__TRACKING_URI"] == "http://mlflow.mlflow.svc.cluster.local:5000"
    assert config["data"]["CLIPSEARCH_SERVICE__CACHE_DIR"].startswith("/cache")
    assert config["data"]["HF_HOME"].startswith("/cache")
    # The in-cluster DNS name above must exist: Service mlflow in namespace mlflow, port 5000.
    mlflow_svc = r.one("Service", "mlflow")
    assert mlflow_svc["metadata"]["namespace"] == "mlflow" and mlflow_svc["spec"]["ports"][0]["port"] == 5000
    sa = r.one("ServiceAccount", "clipsearch-search")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaling_and_disruption(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    hpa = r.one("HorizontalPodAutoscaler", "clipsearch")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "clipsearch"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= 5
    pdb = r.one("PodDisruptionBudget", "clipsearch")
    labels = _pod_spec_labels(r.one("Deployment", "clipsearch"))
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policies = r.find("NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} for p in policies), "default-deny policy missing"


def _pod_spec_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_wiring(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    service = r.one("Service", "clipsearch")
    monitor = r.one("ServiceMonitor", "clipsearch")
    rule = r.one("PrometheusRule", "clipsearch")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in port_names and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert service["spec"]["selector"].items() <= _pod_spec_labels(r.one("Deployment", "clipsearch")).items()
    alerts = {rule_["alert"] for g in rule["spec"]["groups"] for rule_ in g["rules"] if "alert" in rule_}
    assert alerts >= {
        "ClipsearchHighLatencyP95",
        "ClipsearchHighErrorRate",
        "ClipsearchGeminiQuotaHigh",
        "ClipsearchRerankFallbackRateHigh",
        "ClipsearchEmbeddingDrift",
    }


def test_dashboard_configmap(rendered: dict[str, Rendered]) -> None:
    r = rendered["prod"]
    cm = r.one("ConfigMap", "clipsearch-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["clipsearch.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    rules = json.dumps(r.one("PrometheusRule", "clipsearch")["spec"])
    for metric in CONTRACT_METRICS:
        assert metric in exprs or metric in rules, f"{metric} is neither on the dashboard nor in an alert"
    for stage in ("latency", "Requests", "Error", "Re-rank", "Tokens", "Cost", "Drift"):
        assert any(stage.lower() in p["title"].lower() for p in dashboard["panels"]), f"no {stage} panel"


def test_embed_job_is_indexed_and_sharded(rendered: dict[str, Rendered]) -> None:
    job = rendered["jobs-embed"].one("Job", "clipsearch-embed")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]  # shards run P at a time (test_scheduling.py bounds P)
    pod = _pod_spec(job)
    c = pod["containers"][0]
    assert 'training.embed --shard "${JOB_COMPLETION_INDEX}/${SHARDS}"' in c["command"][-1]
    shards = next(e["value"] for e in c["env"] if e["name"] == "SHARDS")
    assert int(shards) == spec["completions"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]["clipsearch.io/node-class"] == "gpu"
    build = _pod_spec(rendered["jobs-build-index"].one("Job", "clipsearch-build-index"))
    assert build["containers"][0]["command"] == ["python", "-m", "training.build_index"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"] + build["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"clipsearch-pipeline-data"}


def test_feature_extraction_script_sets_shards_and_image() -> None:
    script = REPO / "k8s" / "jobs" / "run-feature-extraction.sh"
    env = {**os.environ, "RENDER_ONLY": "1"}
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/clipsearch:0123abc"
    proc = run(["bash", str(script), image, "8"], env=env)
    assert proc.returncode == 0, proc.stderr
    download_path, embed_path, build_path = (Path(p) for p in proc.stdout.split())
    try:
        import yaml

        job = yaml.safe_load(embed_path.read_text())
        assert job["spec"]["completions"] == 8 and job["spec"]["parallelism"] == 1  # one GPU at a time by default
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "SHARDS", "value": "8"} in container["env"]
        assert container["image"] == image
        cpu_image = f"{image}-cpu"  # the CPU steps never pull the CUDA image
        for path in (download_path, build_path):
            assert yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"][0]["image"] == cpu_image
    finally:
        import shutil

        shutil.rmtree(embed_path.parent, ignore_errors=True)
    bad = run(["bash", str(script), image, "zero"], env=env)
    assert bad.returncode == 2 and "positive integer" in bad.stderr


def test_drift_cronjob(rendered: dict[str, Rendered]) -> None:
    cron = rendered["prod"].one("CronJob", "clipsearch-drift")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    c = _pod_spec(cron)["containers"][0]
    assert c["command"] == ["python", "-m", "services.search.drift_job"]
