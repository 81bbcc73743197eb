"""Scheduling semantics of the rendered overlays against the Terraform node groups, computed the way the scheduler,
the controllers and EKS do it: node selection and taints, requests against allocatable (terraform/data/
instance-types.yaml), GPU capacity for rollouts and the embed Job, HPA ownership of replicas, probes against the
measured cold start, graceful termination, image choice per node class, and the order of the feature extraction.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import REPO, Rendered, require_tool, run
from tests.infra.platform import (
    ENVIRONMENTS,
    WORKLOAD_KINDS,
    available,
    instance_table,
    node_groups,
    pod_requests,
    pod_spec,
    selects_node,
    tolerates,
)

ADDONS = REPO / "k8s" / "addons"
# The NVIDIA chart's own default node affinity (values.yaml of nvidia-device-plugin 0.17): NFD labels or the
# nvidia.com/gpu.present label. Kept here to show why the chart cannot be installed with defaults on EKS.
CHART_DEFAULT_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"]}
                    ]
                },
                {
                    "matchExpressions": [
                        {
                            "key": "feature.node.kubernetes.io/cpu-model.vendor_id",
                            "operator": "In",
                            "values": ["NVIDIA"],
                        }
                    ]
                },
                {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]},
            ]
        }
    }
}


def _workloads(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["kind"] in WORKLOAD_KINDS]


def _where(w: dict[str, Any]) -> str:
    return f"{w['kind']}/{w['metadata']['name']}"


def _env_workloads(rendered: dict[str, Rendered], env: str) -> list[dict[str, Any]]:
    """What runs in an environment: its overlay plus the feature-extraction Jobs."""
    jobs = [w for name in ("jobs-download", "jobs-embed", "jobs-build-index") for w in _workloads(rendered[name])]
    return _workloads(rendered[env]) + jobs


def _landing_groups(spec: dict[str, Any], env: str) -> list[Any]:
    return [g for g in node_groups(env).values() if selects_node(spec, g.labels) and tolerates(spec, g.taints)]


def _gpus_per_node(group: Any) -> int:
    return min(instance_table()["types"][t]["gpus"] for t in group.instance_types)


def _hpa_for(r: Rendered, kind: str, name: str) -> dict[str, Any] | None:
    return next(
        (
            h
            for h in r.find("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["kind"] == kind and h["spec"]["scaleTargetRef"]["name"] == name
        ),
        None,
    )


def _surge(deployment: dict[str, Any], replicas: int) -> int:
    strategy = deployment["spec"].get("strategy", {})
    if strategy.get("type") == "Recreate":
        return 0
    value = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * int(value[:-1]) / 100)
    return int(value)


# --- the NVIDIA device plugin ----------------------------------------------------------------------------------


def _device_plugin_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((ADDONS / "nvidia-device-plugin" / "values.yaml").read_text())
    return values


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_device_plugin_runs_on_every_gpu_node_and_nowhere_else(env: str) -> None:
    values = _device_plugin_values()
    spec = {
        "affinity": values["affinity"],
        "tolerations": values["tolerations"],
        "nodeSelector": values.get("nodeSelector"),
    }
    for group in node_groups(env).values():
        lands = selects_node(spec, group.labels) and tolerates(spec, group.taints)
        has_gpu = _gpus_per_node(group) > 0
        assert lands == has_gpu, f"{env}: device plugin on node group {group.name} (labels {group.labels}): {lands}"


def test_chart_default_affinity_needs_a_label_only_terraform_sets() -> None:
    """Control: with the labels the GPU group had before (node-class only) the chart's default selects nothing."""
    before = {"clipsearch.io/node-class": "gpu"}
    assert not selects_node({"affinity": CHART_DEFAULT_AFFINITY}, before)
    gpu = node_groups("prod")["gpu"]
    assert selects_node({"affinity": CHART_DEFAULT_AFFINITY}, gpu.labels), "GPU nodes must carry nvidia.com/gpu.present"


def test_addons_install_pinned_charts_with_the_committed_values(tmp_path: Path) -> None:
    """install.sh run against a fake helm/kubectl: every release pinned, every values file committed and used."""
    log = tmp_path / "calls.log"
    for tool in ("helm", "kubectl"):
        fake = tmp_path / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = run(["bash", str(ADDONS / "install.sh"), "clipsearch-staging", "eu-west-1"], env=env)
    assert proc.returncode == 0, proc.stderr
    installs = [line.split() for line in log.read_text().splitlines() if line.startswith("helm upgrade --install")]
    releases = {argv[3]: argv for argv in installs}
    assert {"nvdp", "cluster-autoscaler", "external-secrets", "reloader", "kube-prometheus-stack"} <= set(releases)
    for name, argv in releases.items():
        version = argv[argv.index("--version") + 1]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: chart not pinned ({version})"
        values = Path(argv[argv.index("--values") + 1])
        assert values.is_file() and values.is_relative_to(ADDONS), f"{name}: values {values}"
    assert str(ADDONS / "nvidia-device-plugin" / "values.yaml") in releases["nvdp"]
    assert "autoDiscovery.clusterName=clipsearch-staging" in releases["cluster-autoscaler"]


# --- requests against allocatable ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_workload_fits_every_instance_type_it_can_land_on(rendered: dict[str, Rendered], env: str) -> None:
    problems = []
    for w in _env_workloads(rendered, env):
        spec = pod_spec(w)
        groups = _landing_groups(spec, env)
        if not groups:
            problems.append(f"{_where(w)}: no node group matches its selector/tolerations")
            continue
        requests = pod_requests(spec)
        for group in groups:
            for itype in group.instance_types:
                room = available(itype, "gpu" if _gpus_per_node(group) else "cpu")
                for resource in ("cpu", "memory", "nvidia.com/gpu"):
                    if requests.get(resource, 0) > room[resource]:
                        problems.append(
                            f"{_where(w)} requests {resource}={requests[resource]} > {room[resource]:.3f} available on "
                            f"{itype} ({group.name})"
                        )
    assert not problems, f"{env}:\n" + "\n".join(problems)


def test_allocatable_model_matches_eks() -> None:
    """The reservation formula reproduces known EKS values: 4 vCPU -> 80m kube-reserved, 58 pods -> 893Mi."""
    from tests.infra.platform import kube_reserved_cpu_m

    assert kube_reserved_cpu_m(4) == 80 and kube_reserved_cpu_m(8) == 90
    g6 = available("g6.xlarge", "gpu")
    assert 3.5 < g6["cpu"] < 4, "4 vCPUs leave ~3.6 cores for pods"
    assert g6["nvidia.com/gpu"] == 1


def test_a_four_cpu_request_does_not_fit_a_four_vcpu_gpu_node() -> None:
    """Control: the embed Job as it was (4 CPUs requested) is rejected by the same computation."""
    assert available("g6.xlarge", "gpu")["cpu"] < 4


# --- GPU capacity: rollouts, HPA and the embed Job ------------------------------------------------------------


def _autoscaler_scales(group: Any) -> bool:
    """The Cluster Autoscaler is installed (committed values, install.sh) and may grow this group."""
    values = yaml.safe_load((ADDONS / "cluster-autoscaler" / "values.yaml").read_text())
    install = (ADDONS / "install.sh").read_text()
    return (
        values["cloudProvider"] == "aws"
        and "autoDiscovery" in values
        and "autoscaler/cluster-autoscaler" in install
        and group.max_size > group.min_size
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_search_rollout_at_max_scale_fits_the_gpu_node_group(rendered: dict[str, Rendered], env: str) -> None:
    r = rendered[env]
    deployment = r.one("Deployment", "clipsearch")
    spec = pod_spec(deployment)
    gpus = int(pod_requests(spec).get("nvidia.com/gpu", 0))
    assert gpus, "the GPU overlays request a GPU per search pod"
    hpa = _hpa_for(r, "Deployment", "clipsearch")
    assert hpa is not None
    (group,) = _landing_groups(spec, env)
    peak_pods = hpa["spec"]["maxReplicas"] + _surge(deployment, hpa["spec"]["maxReplicas"])
    capacity = group.max_size * _gpus_per_node(group)
    assert peak_pods * gpus <= capacity, (
        f"{env}: {peak_pods} search pods (HPA max + surge) need {peak_pods * gpus} GPUs; node group max gives {capacity}"
    )
    # Nodes beyond the resting count only exist if something adds them.
    resting = hpa["spec"]["minReplicas"] + _surge(deployment, hpa["spec"]["minReplicas"])
    if resting * gpus > group.min_size * _gpus_per_node(group):
        assert _autoscaler_scales(group), f"{env}: the surge needs a node the autoscaler must add"


def test_old_rollout_deadlocks_in_the_same_model() -> None:
    """Control: maxSurge 1 with 5 replicas on a fixed 5-node group (the old prod numbers) does not fit."""
    deployment = {"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}
    assert 5 + _surge(deployment, 5) > 5


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_embed_shards_in_parallel_fit_the_gpus_left_by_search(rendered: dict[str, Rendered], env: str) -> None:
    job = rendered["jobs-embed"].one("Job", "clipsearch-embed")
    spec = pod_spec(job)
    (group,) = _landing_groups(spec, env)
    hpa = _hpa_for(rendered[env], "Deployment", "clipsearch")
    assert hpa is not None
    free = (group.max_size - hpa["spec"]["minReplicas"]) * _gpus_per_node(group)
    need = job["spec"]["parallelism"] * int(pod_requests(spec)["nvidia.com/gpu"])
    assert 0 < need <= free, f"{env}: {need} embed GPUs at once, {free} free at most (max {group.max_size} nodes)"


@pytest.mark.parametrize("overlay", ("staging", "prod", "cpu"))
def test_no_replicas_on_a_workload_an_hpa_owns(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    for hpa in r.find("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = r.one(ref["kind"], ref["name"])
        assert "replicas" not in target["spec"], (
            f"{overlay}: {ref['kind']}/{ref['name']} sets spec.replicas while HPA {hpa['metadata']['name']} owns it"
        )


# --- images per node class -------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cpu_workloads_never_pull_the_gpu_image(rendered: dict[str, Rendered], env: str) -> None:
    for w in _env_workloads(rendered, env):
        spec = pod_spec(w)
        wants_gpu = "nvidia.com/gpu" in pod_requests(spec)
        for c in spec["containers"] + (spec.get("initContainers") or []):
            repository, _, tag = c["image"].rpartition(":")
            if not repository.endswith("/clipsearch") and repository != "clipsearch":
                continue  # clipsearch-mlflow: Debian slim, no CUDA
            is_cpu_image = tag.endswith("-cpu")
            assert is_cpu_image != wants_gpu, f"{env}: {_where(w)} ({'GPU' if wants_gpu else 'CPU'}) runs {c['image']}"


# --- probes and termination ------------------------------------------------------------------------------------


def _measured_cold_start_s() -> float:
    starts = [
        json.loads(p.read_text())["cold_start_s"]
        for p in (REPO / "benchmarks" / "results").glob("service_*.json")
        if "cold_start_s" in json.loads(p.read_text())
    ]
    assert starts, "no measured cold start in benchmarks/results"
    return max(starts)


def _window_s(probe: dict[str, Any]) -> int:
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


@pytest.mark.parametrize("overlay", ("staging", "prod", "cpu"))
def test_probes_wait_for_a_champion_without_restarting(rendered: dict[str, Rendered], overlay: str) -> None:
    c = pod_spec(rendered[overlay].one("Deployment", "clipsearch"))["containers"][0]
    # Only readiness may depend on the index: a pod without a champion stays up, un-ready, and keeps retrying.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] != "/readyz", f"{overlay}: {probe} restarts a pod that has no champion"
    # The startup probe covers the measured cold start (8 s to ready; 17 s on a loaded machine) several times over.
    measured = _measured_cold_start_s()
    assert _window_s(c["startupProbe"]) >= max(60, 5 * measured), (
        f"{overlay}: startup window {_window_s(c['startupProbe'])} s against a measured cold start of {measured} s"
    )


@pytest.mark.parametrize("overlay", ("staging", "prod", "cpu"))
def test_search_leaves_the_endpoints_before_sigterm(rendered: dict[str, Rendered], overlay: str) -> None:
    spec = pod_spec(rendered[overlay].one("Deployment", "clipsearch"))
    pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {})
    sleep = pre_stop.get("sleep", {}).get("seconds")
    assert sleep and 5 <= sleep <= 30, f"{overlay}: preStop sleep {sleep}"
    grace = spec.get("terminationGracePeriodSeconds", 30)
    assert grace >= sleep + 15, f"{overlay}: grace {grace} s leaves < 15 s after a {sleep} s preStop"


# --- feature extraction: the workspace is staged before embedding --------------------------------------------


def test_images_are_staged_into_the_workspace_before_the_shards_embed(tmp_path: Path) -> None:
    """Run the sequencer against a kubectl that records every call (kustomize goes to the real one)."""
    real = require_tool("kubectl")
    log = tmp_path / "kubectl.log"
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = kustomize ]; then exec "{real}" "$@"; fi\n'
        f'echo "$*" >> "{log}"\n'
        'if [ "$1" = apply ]; then cp "$3" "' + str(tmp_path) + '/applied-$(basename "$3")"; fi\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/clipsearch:0123abc"
    proc = run(["bash", str(REPO / "k8s" / "jobs" / "run-feature-extraction.sh"), image, "8", "2"], env=env)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    steps = [c for c in calls if c.startswith(("apply", "-n clipsearch wait"))]
    order = [re.search(r"(download|embed|build-index)", c).group(1) for c in steps]  # type: ignore[union-attr]
    assert order == ["download", "download", "embed", "embed", "build-index", "build-index"], calls
    assert all("wait" in steps[i] for i in (1, 3, 5)), "each Job must be waited for before the next one starts"

    download = yaml.safe_load((tmp_path / "applied-download.yaml").read_text())
    embed = yaml.safe_load((tmp_path / "applied-embed.yaml").read_text())
    d_spec, e_spec = pod_spec(download), pod_spec(embed)
    assert d_spec["containers"][0]["command"] == ["python", "-m", "training.download"]

    def workspace(spec: dict[str, Any]) -> tuple[str, str]:
        c = spec["containers"][0]
        mount = next(m for m in c["volumeMounts"] if c["workingDir"] == m["mountPath"])
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        return volume["persistentVolumeClaim"]["claimName"], c["workingDir"]

    # Same claim, same working directory: data/images written by download is data/images read by embed.
    assert workspace(d_spec) == workspace(e_spec)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert not params["dataset"]["data_dir"].startswith("/"), "the download stage writes relative to workingDir"
    assert embed["spec"]["parallelism"] == 2 and embed["spec"]["completions"] == 8
