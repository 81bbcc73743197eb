"""NetworkPolicy reachability, computed by an analyzer rather than read off the YAML: IBM's network-config-analyzer
(`nca --connectivity`, requirements-netpol.txt, its own venv) builds the connectivity map of each rendered overlay,
the feature-extraction Jobs and the cluster's other actors (kube-dns, Prometheus, Grafana, the in-VPC GitHub runner,
an unrelated pod), and the tests ask it which flows are allowed.

Addresses follow terraform/vpc.tf with the default vpc_cidr: public subnets 10.0.48.0/22 (load balancers), database
subnets 10.0.64.0/22 (RDS); the internet is represented by a Gemini/Google and an S3 eu-west-1 address.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import REPO, Rendered, run

NETPOL_BIN = Path(os.environ.get("CLIPSEARCH_NETPOL_BIN", REPO / ".venv-netpol" / "bin"))
INSTALL = "python -m venv .venv-netpol && .venv-netpol/bin/pip install -r requirements-netpol.txt"

SEARCH = "clipsearch/clipsearch[Deployment]"
DRIFT = "clipsearch/clipsearch-drift[CronJob]"
EMBED = "clipsearch/clipsearch-embed[Job]"
DOWNLOAD = "clipsearch/clipsearch-download[Job]"
MLFLOW = "mlflow/mlflow[Deployment]"
BOOTSTRAP = "mlflow/mlflow-db-bootstrap[Job]"
DNS = "kube-system/coredns[Pod]"
PROMETHEUS = "monitoring/prometheus[Pod]"
GRAFANA = "monitoring/grafana[Pod]"
RUNNER = "arc-runners/runner[Pod]"
INTRUDER = "default/intruder[Pod]"
GEMINI = "142.250.180.10"  # generativelanguage.googleapis.com (public Google address)
S3 = "52.218.0.10"  # S3 eu-west-1 (reached through the gateway endpoint, public addresses)
RDS = "10.0.64.10"  # database subnet
ALB = "10.0.48.20"  # public subnet: an internet-facing ALB in IP target mode
ANYWHERE = "8.8.8.8"


def _namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
    }


def _pod(ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


# The rest of the cluster, as installed by k8s/addons/install.sh and the EKS add-ons.
WORLD = [
    _namespace("kube-system"),
    _namespace("monitoring"),
    _namespace("arc-runners"),
    _namespace("default"),
    _pod("kube-system", "coredns", {"k8s-app": "kube-dns"}),
    _pod("monitoring", "prometheus", {"app.kubernetes.io/name": "prometheus"}),
    _pod("monitoring", "grafana", {"app.kubernetes.io/name": "grafana"}),
    _pod("arc-runners", "runner", {"app.kubernetes.io/component": "runner"}),
    _pod("default", "intruder", {"app": "intruder"}),
]


@dataclass(frozen=True)
class Rule:
    src: str
    dst: str
    conns: str


class Connectivity:
    """The analyzer's connectivity map (`-o txt_no_fw_rules`: one `SRC => DST : CONNECTIONS` line per pair)."""

    def __init__(self, text: str) -> None:
        self.rules = []
        for line in text.splitlines():
            match = re.fullmatch(r"(\S+) => (\S+) : (.+)", line.strip())
            if match:
                self.rules.append(Rule(*match.groups()))
        assert self.rules, f"the analyzer printed no connectivity:\n{text}"

    @staticmethod
    def _endpoint_matches(endpoint: str, wanted: str) -> bool:
        if endpoint == wanted:
            return True
        range_ = re.fullmatch(r"([\d.]+)-([\d.]+)", endpoint)
        if range_ and re.fullmatch(r"[\d.]+", wanted):
            low, high = (ipaddress.IPv4Address(x) for x in range_.groups())
            return low <= ipaddress.IPv4Address(wanted) <= high
        return False

    @staticmethod
    def _conns_allow(conns: str, protocol: str, port: int) -> bool:
        if conns.strip() == "All connections":
            return True
        # e.g. {protocols:TCP, UDP,dst_ports:53} or {protocols:TCP,dst_ports:443,5000-5001}
        for protocols, ports in re.findall(r"\{protocols:([A-Z, ]+?)(?:,dst_ports:([\d,\-]+))?\}", conns):
            if protocol not in [p.strip() for p in protocols.split(",")]:
                continue
            if not ports:
                return True
            for part in ports.split(","):
                low, _, high = part.partition("-")
                if int(low) <= port <= int(high or low):
                    return True
        return False

    def allows(self, src: str, dst: str, protocol: str, port: int) -> bool:
        return any(
            self._endpoint_matches(r.src, src)
            and self._endpoint_matches(r.dst, dst)
            and self._conns_allow(r.conns, protocol, port)
            for r in self.rules
        )


def _nca() -> str:
    candidate = NETPOL_BIN / "nca"
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        pytest.fail(
            f"network-config-analyzer not found at {candidate} (CLIPSEARCH_NETPOL_BIN); install: {INSTALL}",
            pytrace=False,
        )
    return str(candidate)


def _analyze(objects: list[dict[str, Any]], tmp: Path) -> Connectivity:
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump_all([*objects, *WORLD], sort_keys=False))
    proc = run([_nca(), "--connectivity", "-r", str(path), "-o", "txt_no_fw_rules"], timeout=120)
    assert proc.returncode == 0, f"nca failed:\n{proc.stdout}\n{proc.stderr}"
    return Connectivity(proc.stdout)


def _cluster(rendered: dict[str, Rendered], overlay: str) -> list[dict[str, Any]]:
    objects = [o for o in rendered[overlay].objects if o["kind"] != "ConfigMap"]
    for job in ("jobs-download", "jobs-embed", "jobs-build-index"):
        objects += [o for o in rendered[job].objects if o["kind"] == "Job"]
    return objects


NEEDED = [
    # DNS for every workload.
    *[(w, DNS, "UDP", 53) for w in (SEARCH, DRIFT, EMBED, DOWNLOAD, MLFLOW, BOOTSTRAP)],
    *[(w, DNS, "TCP", 53) for w in (SEARCH, DRIFT, MLFLOW)],
    # Registry, artifacts, the index.
    (SEARCH, MLFLOW, "TCP", 5000),
    (SEARCH, S3, "TCP", 443),
    (SEARCH, GEMINI, "TCP", 443),
    (DRIFT, MLFLOW, "TCP", 5000),
    (DRIFT, SEARCH, "TCP", 8000),
    (EMBED, MLFLOW, "TCP", 5000),
    (DOWNLOAD, ANYWHERE, "TCP", 443),  # Unsplash
    (RUNNER, MLFLOW, "TCP", 5000),  # ml-pipeline.yml on the in-VPC runner registers and promotes
    (PROMETHEUS, SEARCH, "TCP", 8000),
    (ALB, SEARCH, "TCP", 8000),
    (MLFLOW, RDS, "TCP", 5432),
    (MLFLOW, S3, "TCP", 443),
    (BOOTSTRAP, RDS, "TCP", 5432),
]

FORBIDDEN = [
    (INTRUDER, SEARCH, "TCP", 8000),
    (INTRUDER, MLFLOW, "TCP", 5000),
    (GRAFANA, SEARCH, "TCP", 8000),
    (ANYWHERE, SEARCH, "TCP", 8000),
    (ANYWHERE, MLFLOW, "TCP", 5000),
    (RUNNER, SEARCH, "TCP", 8000),
    (EMBED, SEARCH, "TCP", 8000),  # only the drift job reads the admin endpoint
    (DOWNLOAD, SEARCH, "TCP", 8000),
    (MLFLOW, SEARCH, "TCP", 8000),
    (SEARCH, RDS, "TCP", 5432),  # only MLflow talks to the database
    (DRIFT, RDS, "TCP", 5432),
    (SEARCH, MLFLOW, "TCP", 22),
    (SEARCH, ANYWHERE, "TCP", 80),
    (SEARCH, DNS, "TCP", 443),
    (SEARCH, INTRUDER, "TCP", 443),
    (BOOTSTRAP, S3, "TCP", 443),
    (BOOTSTRAP, MLFLOW, "TCP", 5000),
    (MLFLOW, ANYWHERE, "TCP", 80),
    (SEARCH, DRIFT, "TCP", 8000),
]


@pytest.fixture(scope="module")
def connectivity(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Connectivity]:
    return {env: _analyze(_cluster(rendered, env), tmp_path_factory.mktemp(env)) for env in ("staging", "prod")}


@pytest.mark.parametrize("env", ["staging", "prod"])
@pytest.mark.parametrize(("src", "dst", "protocol", "port"), NEEDED, ids=lambda v: str(v))
def test_needed_flow_is_allowed(
    connectivity: dict[str, Connectivity], env: str, src: str, dst: str, protocol: str, port: int
) -> None:
    assert connectivity[env].allows(src, dst, protocol, port), f"{env}: {src} -> {dst} {protocol}/{port} is blocked"


@pytest.mark.parametrize("env", ["staging", "prod"])
@pytest.mark.parametrize(("src", "dst", "protocol", "port"), FORBIDDEN, ids=lambda v: str(v))
def test_other_flow_is_denied(
    connectivity: dict[str, Connectivity], env: str, src: str, dst: str, protocol: str, port: int
) -> None:
    assert not connectivity[env].allows(src, dst, protocol, port), f"{env}: {src} -> {dst} {protocol}/{port} is open"


def test_cpu_overlay_mlflow_needs_no_database(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    conn = _analyze(_cluster(rendered, "cpu"), tmp_path)
    assert conn.allows(SEARCH, MLFLOW, "TCP", 5000) and conn.allows(DRIFT, SEARCH, "TCP", 8000)
    assert not conn.allows(MLFLOW, RDS, "TCP", 5432)


def test_analyzer_sees_a_removed_rule(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """Control: drop the pipeline policy's egress rule to the search pods (as the policies were before) and the
    analyzer reports the drift flow blocked; without the namespace rule for runners MLflow refuses them."""
    objects = copy.deepcopy(_cluster(rendered, "staging"))
    jobs = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "clipsearch-jobs")
    jobs["spec"]["egress"] = [
        r for r in jobs["spec"]["egress"] if {"port": 8000, "protocol": "TCP"} not in r.get("ports", [])
    ]
    mlflow = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "mlflow")
    mlflow["spec"]["ingress"][0]["from"] = mlflow["spec"]["ingress"][0]["from"][:1]
    conn = _analyze(objects, tmp_path)
    assert not conn.allows(DRIFT, SEARCH, "TCP", 8000)
    assert not conn.allows(RUNNER, MLFLOW, "TCP", 5000)
    assert conn.allows(SEARCH, MLFLOW, "TCP", 5000)


def test_policy_cidrs_follow_the_terraform_subnets(rendered: dict[str, Rendered]) -> None:
    """The load-balancer and database CIDRs in the policies are the subnets terraform/vpc.tf carves (default CIDR)."""
    from tests.infra.platform import variables

    vpc = ipaddress.IPv4Network(variables("staging")["vpc_cidr"])
    public = [list(vpc.subnets(new_prefix=24))[48 + i] for i in range(3)]  # cidrsubnet(vpc, 8, 48 + i)
    database = [list(vpc.subnets(new_prefix=24))[64 + i] for i in range(3)]  # cidrsubnet(vpc, 8, 64 + i)
    text = yaml.safe_dump_all(rendered["prod"].find("NetworkPolicy"))
    blocks = {ipaddress.IPv4Network(c) for c in re.findall(r"cidr: ([\d./]+)", text)}
    lb = ipaddress.IPv4Network("10.0.48.0/22")
    db = ipaddress.IPv4Network("10.0.64.0/22")
    assert {lb, db} <= blocks
    assert all(s.subnet_of(lb) for s in public) and all(s.subnet_of(db) for s in database)
    private = [list(vpc.subnets(new_prefix=20))[i] for i in range(3)]  # nodes and pods: cidrsubnet(vpc, 4, i)
    assert not any(p.overlaps(lb) or p.overlaps(db) for p in private), "pod addresses must not match these blocks"
