"""Terraform semantics that `terraform validate` would not catch either: EKS version support on the day the tests
run, root volumes that the node groups really get, a version constraint that matches the features used, GPU
families the image's CUDA supports, the add-ons the HPA needs, and registries/indexes that reach every environment.
"""

from __future__ import annotations

import datetime
import ipaddress
import re

import pytest
import yaml

from tests.infra.conftest import KUBERNETES_VERSION, REPO
from tests.infra.platform import (
    EKS_VERSIONS,
    ENVIRONMENTS,
    blocks,
    eks_module,
    instance_table,
    node_groups,
    parse_terraform,
    resolve,
    resources,
    unwrap,
    variables,
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


# --- EKS version ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_eks_version_is_in_standard_support_today(env: str) -> None:
    table = yaml.safe_load(EKS_VERSIONS.read_text())
    version = variables(env)["kubernetes_version"]
    assert version in table["versions"], f"{env}: {version} is not in {EKS_VERSIONS.name}; add its dates"
    end = table["versions"][version]["end_of_standard_support"]
    today = datetime.date.today()
    # The last day is excluded: an upgrade takes a maintenance window, not the day extended billing starts.
    assert today < end, f"{env}: EKS {version} left standard support on {end} (today {today}): upgrade"


def test_manifests_are_validated_for_the_cluster_version() -> None:
    default = unwrap(blocks("variable")["kubernetes_version"]["default"])
    assert KUBERNETES_VERSION.startswith(default + "."), "tests/infra validates manifests for another version"


def test_old_eks_version_would_fail() -> None:
    """Control: 1.33 (the version before this change) is past its standard support on 2026-12-02."""
    table = yaml.safe_load(EKS_VERSIONS.read_text())
    assert table["versions"]["1.33"]["end_of_standard_support"] < datetime.date(2026, 12, 2)


# --- Terraform version constraint vs features ----------------------------------------------------------------


def _required_minimum() -> tuple[int, ...]:
    terraform = parse_terraform()["versions.tf"]["terraform"][0]
    constraint = unwrap(terraform["required_version"])
    match = re.search(r">=\s*([\d.]+)", constraint)
    assert match, f"required_version has no lower bound: {constraint}"
    return _version(match.group(1))


def test_required_version_covers_the_features_used() -> None:
    parsed = parse_terraform()
    needs: dict[str, tuple[int, ...]] = {}
    if any(
        unwrap(doc.get("use_lockfile", False)) is True for name, doc in parsed.items() if name.endswith(".tfbackend")
    ):
        needs["S3 backend use_lockfile"] = (1, 10)
    if any(doc.get("ephemeral") for name, doc in parsed.items() if name.endswith(".tf")):
        needs["ephemeral resources"] = (1, 10)
    if any(re.search(r"_wo\b", key) for r in resources().values() for key in r):
        needs["write-only arguments"] = (1, 11)
    assert needs, "sanity: the stack uses versioned features"
    minimum = _required_minimum()
    for feature, version in needs.items():
        assert minimum >= version, f"{feature} needs Terraform >= {version}, required_version allows {minimum}"


def test_generated_password_never_reaches_the_state() -> None:
    version = resources()["aws_secretsmanager_secret_version.mlflow_db"]
    assert "secret_string" not in version and "secret_string_wo" in version
    assert "ephemeral.random_password" in version["secret_string_wo"]
    assert "secret_string_wo_version" in version
    assert "random_password" in {k for block in parse_terraform()["secrets.tf"].get("ephemeral", []) for k in block}


# --- node groups: root volumes, GPU families -------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_root_volumes_are_set_through_the_launch_template(env: str) -> None:
    """terraform-aws-modules/eks builds a launch template by default; then `disk_size` is silently ignored."""
    for group in node_groups(env).values():
        raw = group.raw
        assert raw.get("use_custom_launch_template", True) is True
        assert "disk_size" not in raw, f"{group.name}: disk_size is ignored with a launch template"
        root = next(m for m in raw["block_device_mappings"].values() if m["device_name"] == "/dev/xvda")
        size = int(resolve(root["ebs"]["volume_size"], env))
        floor = 100 if "NVIDIA" in raw["ami_type"] else 30
        assert size >= floor, f"{env}: {group.name} root volume {size} GiB < {floor} GiB"
        assert root["ebs"]["encrypted"] is True


def _cuda_major() -> str:
    match = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", (REPO / "Dockerfile").read_text())
    assert match, "Dockerfile has no CUDA_IMAGE ARG"
    return match.group(1)


def _allowed_gpu_families() -> list[str]:
    validation = unwrap(blocks("variable")["gpu_instance_types"]["validation"])
    condition = unwrap(validation["condition"])
    match = re.search(r"\^\(([\w|]+)\)", condition)
    assert match, condition
    return match.group(1).split("|")


def test_gpu_families_match_the_cuda_version_of_the_image() -> None:
    table = instance_table()
    minimum = table["cuda_min_compute_capability"][_cuda_major()]
    for family in _allowed_gpu_families():
        assert table["gpu_families"][family] >= minimum, (
            f"variable gpu_instance_types admits {family} (compute capability {table['gpu_families'][family]}), "
            f"CUDA {_cuda_major()} needs >= {minimum}"
        )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_configured_gpu_types_run_the_image(env: str) -> None:
    table = instance_table()
    minimum = table["cuda_min_compute_capability"][_cuda_major()]
    for itype in variables(env)["gpu_instance_types"]:
        assert table["types"][itype]["compute_capability"] >= minimum, f"{env}: {itype}"


def test_volta_is_rejected_by_the_table() -> None:
    """Control: p3 (V100, 7.0) would fail the family check against CUDA 13."""
    table = instance_table()
    assert table["gpu_families"]["p3"] < table["cuda_min_compute_capability"]["13"]


# --- add-ons -------------------------------------------------------------------------------------------------


def test_metrics_server_serves_the_hpa() -> None:
    addons = unwrap(eks_module()["addons"])
    assert "metrics-server" in addons, "no metrics.k8s.io: the search HPA would never scale"


def test_addon_identities_match_the_helm_values() -> None:
    """Pod Identity associations name the service accounts the charts create (k8s/addons/*/values.yaml)."""
    identities = {k: v for k, v in blocks("locals").items() if k == "addon_identities"}["addon_identities"]
    identities = unwrap(identities)
    addons = REPO / "k8s" / "addons"
    ca = yaml.safe_load((addons / "cluster-autoscaler" / "values.yaml").read_text())
    eso = yaml.safe_load((addons / "external-secrets" / "values.yaml").read_text())
    assert identities["cluster-autoscaler"]["service_account"] == ca["rbac"]["serviceAccount"]["name"]
    assert identities["cluster-autoscaler"]["namespace"] == "kube-system"
    assert identities["external-secrets"]["service_account"] == eso["serviceAccount"]["name"]
    install = (addons / "install.sh").read_text()
    assert re.search(r"external-secrets/external-secrets .*\n.*--namespace external-secrets", install)
    assert ca["image"]["tag"].startswith(f"v{unwrap(blocks('variable')['kubernetes_version']['default'])}.")


# --- reaching the clusters and the registries ------------------------------------------------------------------

DOCUMENTATION_NETS = [ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_api_endpoint_is_private_and_deploys_run_inside_the_vpc(env: str) -> None:
    cidrs = variables(env)["cluster_endpoint_public_access_cidrs"]
    for cidr in cidrs:
        net = ipaddress.IPv4Network(cidr)
        assert not any(net.subnet_of(d) for d in DOCUMENTATION_NETS), f"{env}: {cidr} is a documentation range"
    deploy = yaml.safe_load((REPO / ".github" / "workflows" / "deploy-env.yml").read_text())["jobs"]["deploy"]
    runs_on = deploy["runs-on"]
    labels = runs_on if isinstance(runs_on, list) else [runs_on]
    hosted = any(str(label).startswith(("ubuntu-", "windows-", "macos-")) for label in labels)
    assert not (hosted and not cidrs), f"{env}: a GitHub-hosted runner cannot reach a private endpoint"
    assert not hosted, "deploys run on the in-VPC runner (hosted runners have no fixed egress to admit)"


def _account(env: str) -> str:
    return str(re.search(r"(\d{12})", (REPO / "k8s" / "overlays" / env / "kustomization.yaml").read_text()).group(1))  # type: ignore[union-attr]


def test_images_reach_every_environments_registry() -> None:
    """CI pushes to one account; ECR replication brings every image to the others' registries, which admit it."""
    sources = {env for env in ENVIRONMENTS if variables(env)["ecr_replication_destinations"]}
    assert len(sources) == 1, "exactly one environment (the one CI pushes to) replicates"
    (source,) = sources
    destinations = {d["registry_id"] for d in variables(source)["ecr_replication_destinations"]}
    for env in ENVIRONMENTS:
        if env == source:
            continue
        assert _account(env) in destinations, f"{env}'s registry ({_account(env)}) receives no images"
        assert _account(source) in variables(env)["ecr_replication_source_account_ids"], f"{env} refuses replication"
    assert "aws_ecr_replication_configuration.this" in resources()
    assert "aws_ecr_registry_policy.replication_target" in resources()


def test_prod_gets_the_index_staging_evaluated() -> None:
    """prod's pipeline role may read staging's DVC remote, and staging's bucket and key admit that role."""
    prod, staging = variables("prod"), variables("staging")
    source = prod["dvc_source_remote"]
    assert source["bucket_arn"].endswith(f":::clipsearch-staging-dvc-{_account('staging')}")
    assert f":{_account('staging')}:key/" in source["kms_key_arn"]
    prod_role = f"arn:aws:iam::{_account('prod')}:role/clipsearch-prod-github-pipeline"
    assert prod_role in staging["dvc_remote_reader_role_arns"]
    text = (REPO / "terraform" / "github_oidc.tf").read_text()
    assert "SourceDvcRead" in text and "SourceDvcKms" in text
    # The pipeline role is assumed from the GitHub environment, so prod's job gets prod's role only.
    assert 'pipeline = ["repo:${var.github_repository}:environment:${var.environment}"]' in text


def _resource_names(kind: str) -> set[str]:
    return {name.split(".", 1)[1] for name in resources() if name.startswith(kind + ".")}


def test_dedicated_mlflow_db_user_is_not_the_master() -> None:
    db = resources()["aws_db_instance.mlflow"]
    user = unwrap(blocks("locals")["mlflow_db_user"])
    assert db["username"] != user, "MLflow must not connect as the RDS master user (its password rotates)"
    assert db["manage_master_user_password"] is True
    assert "mlflow_db" in _resource_names("aws_secretsmanager_secret")
