"""What the semantic infra tests share: the Terraform stack per environment, the instance-type table, Kubernetes
quantities and node selection, as the scheduler and EKS compute them (no cluster, no AWS).

Terraform is parsed by python-hcl2 in the tools venv (as in test_terraform.py) and resolved just far enough:
`${var.x}` against the variable's default overlaid by environments/<env>.tfvars.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml

from tests.infra.conftest import REPO, require_tool, run

TERRAFORM = REPO / "terraform"
ENVIRONMENTS = ("staging", "prod")
INSTANCE_TYPES = TERRAFORM / "data" / "instance-types.yaml"
EKS_VERSIONS = TERRAFORM / "data" / "eks-versions.yaml"

_PARSE = """
import json, pathlib, sys
import hcl2
root = pathlib.Path(sys.argv[1])
out = {}
for p in sorted(root.rglob("*")):
    if p.suffix in (".tf", ".tfvars", ".tfbackend"):
        with p.open() as f:
            out[str(p.relative_to(root))] = hcl2.load(f)
print(json.dumps(out, default=str))
"""


@functools.cache
def parse_terraform() -> dict[str, Any]:
    proc = run([require_tool("python"), "-c", _PARSE, str(TERRAFORM)], timeout=120)
    assert proc.returncode == 0, f"python-hcl2 could not parse terraform/:\n{proc.stderr}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def unwrap(value: Any) -> Any:
    """python-hcl2 wraps top-level attribute values in a one-element list."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def blocks(kind: str) -> dict[str, Any]:
    """Every top-level `kind` block (variable, module, resource, ...) over all .tf files, by unquoted name."""
    merged: dict[str, Any] = {}
    for name, doc in parse_terraform().items():
        if name.endswith(".tf"):
            for block in doc.get(kind, []):
                merged.update({k.strip('"'): v for k, v in block.items()})
    return merged


def resources() -> dict[str, dict[str, Any]]:
    """Resources as `type.name` -> body (attributes unwrapped)."""
    found: dict[str, dict[str, Any]] = {}
    for name, doc in parse_terraform().items():
        if name.endswith(".tf"):
            for block in doc.get("resource", []):
                for kind, items in block.items():
                    for rname, body in items.items():
                        found[f"{kind.strip(chr(34))}.{rname.strip(chr(34))}"] = {k: unwrap(v) for k, v in body.items()}
    return found


def variables(env: str) -> dict[str, Any]:
    """Effective variable values of one environment: defaults, overlaid by environments/<env>.tfvars."""
    values = {name: unwrap(body["default"]) for name, body in blocks("variable").items() if "default" in body}
    tfvars = parse_terraform()[f"environments/{env}.tfvars"]
    values.update({k: unwrap(v) for k, v in tfvars.items() if not k.startswith("__")})
    return values


def resolve(value: Any, env: str) -> Any:
    """`${var.a.b}` -> the environment's value; anything else unchanged."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{var\.([\w]+)((?:\.\w+)*)\}", value)
        if match:
            resolved = variables(env)[match.group(1)]
            for attr in filter(None, match.group(2).split(".")):
                resolved = resolved[attr]
            return resolved
    return value


def eks_module() -> dict[str, Any]:
    return {k: unwrap(v) for k, v in blocks("module")["eks"].items()}


@dataclass(frozen=True)
class NodeGroup:
    name: str
    instance_types: tuple[str, ...]
    labels: dict[str, str]
    taints: tuple[dict[str, str], ...]
    min_size: int
    max_size: int
    raw: dict[str, Any]


def node_groups(env: str) -> dict[str, NodeGroup]:
    groups = unwrap(eks_module()["eks_managed_node_groups"])
    result = {}
    for name, body in groups.items():
        taints = tuple(
            {"key": t["key"], "value": t.get("value", ""), "effect": _TAINT_EFFECT[t["effect"]]}
            for t in body.get("taints", {}).values()
        )
        result[name] = NodeGroup(
            name=name,
            instance_types=tuple(resolve(body["instance_types"], env)),
            labels=dict(body.get("labels", {})),
            taints=taints,
            min_size=int(resolve(body["min_size"], env)),
            max_size=int(resolve(body["max_size"], env)),
            raw=body,
        )
    return result


_TAINT_EFFECT = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


# --- Kubernetes quantities ------------------------------------------------------------------------------------

_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": Decimal("0.001"),
    "": 1,
}


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity in base units (cores, bytes)."""
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", str(value))
    assert match, f"not a quantity: {value!r}"
    return Decimal(match.group(1)) * Decimal(_SUFFIX[match.group(2) or ""])


# --- EKS allocatable from the committed table -----------------------------------------------------------------


@functools.cache
def instance_table() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(INSTANCE_TYPES.read_text())
    return data


def kube_reserved_cpu_m(vcpus: int) -> Decimal:
    """amazon-eks-ami: 6% of the first core, 1% of the second, 0.5% of cores 3-4, 0.25% of the rest (millicores)."""
    shares = [Decimal("0.06"), Decimal("0.01"), Decimal("0.005"), Decimal("0.005")]
    reserved = sum((shares[i] * 1000 for i in range(min(vcpus, 4))), Decimal(0))
    return reserved + max(vcpus - 4, 0) * Decimal("0.0025") * 1000


def available(instance_type: str, node_class: str) -> dict[str, Decimal]:
    """What pods may request on one node of this type: allocatable minus the node class's DaemonSets."""
    table = instance_table()
    t = table["types"][instance_type]
    ds = table["daemonset_requests"][node_class]
    cpu_m = t["vcpus"] * 1000 - kube_reserved_cpu_m(t["vcpus"]) - ds["cpu_m"]
    capacity_mi = Decimal(t["memory_gib"] * 1024) * Decimal(str(table["memory_capacity_ratio"]))
    memory_mi = capacity_mi - (255 + 11 * t["max_pods"]) - table["eviction_hard_memory_mi"] - ds["memory_mi"]
    return {
        "cpu": cpu_m / 1000,
        "memory": memory_mi * 2**20,
        "nvidia.com/gpu": Decimal(t["gpus"]),
    }


# --- scheduling predicates -------------------------------------------------------------------------------------


def _expression_matches(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], [str(v) for v in expr.get("values", [])]
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        if key not in labels:
            return False
        return int(labels[key]) > int(values[0]) if op == "Gt" else int(labels[key]) < int(values[0])
    raise AssertionError(f"unknown node selector operator {op}")


def selects_node(pod_spec: dict[str, Any], labels: dict[str, str]) -> bool:
    """nodeSelector AND required node affinity (terms ORed, expressions ANDed), as kube-scheduler evaluates them."""
    if any(labels.get(k) != str(v) for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions", []))
        for term in required["nodeSelectorTerms"]
    )


def tolerates(pod_spec: dict[str, Any], taints: tuple[dict[str, str], ...]) -> bool:
    """Every NoSchedule/NoExecute taint of the node is tolerated by the pod."""
    tolerations = pod_spec.get("tolerations") or []

    def tolerated(taint: dict[str, str]) -> bool:
        for t in tolerations:
            if t.get("effect") and t["effect"] != taint["effect"]:
                continue
            if t.get("operator", "Equal") == "Exists" and (not t.get("key") or t["key"] == taint["key"]):
                return True
            if t.get("key") == taint["key"] and str(t.get("value", "")) == taint.get("value", ""):
                return True
        return False

    return all(tolerated(t) for t in taints if t["effect"] in ("NoSchedule", "NoExecute"))


def pod_requests(pod_spec: dict[str, Any]) -> dict[str, Decimal]:
    """Effective pod requests: sum over containers, at least the largest init container (kube-scheduler's rule)."""
    total: dict[str, Decimal] = {}
    for c in pod_spec["containers"]:
        for name, value in (c.get("resources", {}).get("requests") or {}).items():
            total[name] = total.get(name, Decimal(0)) + quantity(value)
    for c in pod_spec.get("initContainers") or []:
        for name, value in (c.get("resources", {}).get("requests") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), quantity(value))
    return total


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        spec: dict[str, Any] = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    spec = obj["spec"]["template"]["spec"]
    return spec


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
