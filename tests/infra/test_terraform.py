"""Terraform: every file parses (python-hcl2, run from the tools venv), and the stack keeps its promises:
pinned versions, described and validated variables, described outputs, tfvars that set only declared
variables. `terraform validate/plan` cannot run here (no terraform binary, no AWS); checkov covers policy in
test_checkov.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import REPO, require_tool, run

TERRAFORM = REPO / "terraform"

# Runs inside the tools venv, where python-hcl2 is installed; prints {relative path: parsed document}.
PARSE = """
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


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    proc = run([require_tool("python"), "-c", PARSE, str(TERRAFORM)], timeout=120)
    assert proc.returncode == 0, f"python-hcl2 could not parse terraform/:\n{proc.stderr}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _blocks(parsed: dict[str, Any], kind: str) -> dict[str, Any]:
    """Merge every top-level `kind` block (variable, output, module, ...) over all .tf files."""
    merged: dict[str, Any] = {}
    for name, doc in parsed.items():
        if name.endswith(".tf"):
            for block in doc.get(kind, []):
                merged.update(block)
    return merged


def _unquote(key: str) -> str:
    return key.strip('"')


def _attr(block: dict[str, Any], key: str) -> Any:
    """python-hcl2 8 wraps each attribute value in a one-element list; nested blocks stay lists of dicts."""
    value = block[key]
    return value[0] if isinstance(value, list) and len(value) == 1 and not isinstance(value[0], dict) else value


def test_every_file_parses(parsed: dict[str, Any]) -> None:
    on_disk = {
        str(p.relative_to(TERRAFORM)) for p in TERRAFORM.rglob("*") if p.suffix in (".tf", ".tfvars", ".tfbackend")
    }
    assert set(parsed) == on_disk
    assert len([n for n in parsed if n.endswith(".tf")]) >= 10


def test_hcl2_rejects_broken_hcl(tmp_path: Path) -> None:
    (tmp_path / "bad.tf").write_text('resource "aws_s3_bucket" "x" {\n  bucket = "a"\n')
    assert run([require_tool("python"), "-c", PARSE, str(tmp_path)]).returncode != 0


def test_versions_are_pinned(parsed: dict[str, Any]) -> None:
    terraform = parsed["versions.tf"]["terraform"][0]
    assert _attr(terraform, "required_version")
    providers = _attr(terraform, "required_providers")
    providers = providers[0] if isinstance(providers, list) else providers
    aws = providers["aws"][0] if isinstance(providers["aws"], list) else providers["aws"]
    assert aws["source"] == "hashicorp/aws" and aws["version"].startswith("~> 6.")
    modules = {_unquote(k): v for k, v in _blocks(parsed, "module").items()}
    assert set(modules) >= {"vpc", "eks"}
    for name, module in modules.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", _attr(module, "version")), f"module {name} not pinned exactly"
    assert _attr(modules["vpc"], "source") == "terraform-aws-modules/vpc/aws"
    assert _attr(modules["eks"], "source") == "terraform-aws-modules/eks/aws"


def test_variables_have_descriptions_and_validation(parsed: dict[str, Any]) -> None:
    variables = _blocks(parsed, "variable")
    assert variables
    for name, var in variables.items():
        assert var.get("description") and _attr(var, "description"), f"variable {name} has no description"
        if _attr(var, "type") not in ("${bool}", "${map(string)}"):
            assert "validation" in var, f"variable {name} has no validation"


def test_outputs_have_descriptions(parsed: dict[str, Any]) -> None:
    outputs = _blocks(parsed, "output")
    assert {_unquote(k) for k in outputs} >= {
        "cluster_name",
        "ecr_repository_urls",
        "dvc_remote_url",
        "search_role_arn",
        "gemini_secret_arn",
    }
    for name, out in outputs.items():
        assert out.get("description") and _attr(out, "description"), f"output {name} has no description"


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_example_tfvars_set_declared_variables(parsed: dict[str, Any], env: str) -> None:
    variables = {_unquote(k): v for k, v in _blocks(parsed, "variable").items()}
    tfvars = {k: _attr(parsed[f"environments/{env}.tfvars"], k) for k in parsed[f"environments/{env}.tfvars"]}
    assert set(tfvars) <= set(variables), f"undeclared: {set(tfvars) - set(variables)}"
    required = {k for k, v in variables.items() if "default" not in v}
    assert required <= set(tfvars), f"{env}.tfvars misses {required - set(tfvars)}"
    assert tfvars["environment"] == env
    backend = parsed[f"environments/{env}.s3.tfbackend"]
    assert _attr(backend, "encrypt") is True and _attr(backend, "use_lockfile") is True


def test_gpu_node_group_and_data_stores(parsed: dict[str, Any]) -> None:
    eks = {_unquote(k): v for k, v in _blocks(parsed, "module").items()}["eks"]
    groups = _attr(eks, "eks_managed_node_groups")
    groups = groups[0] if isinstance(groups, list) else groups
    gpu = groups["gpu"]
    assert gpu["ami_type"] == "AL2023_x86_64_NVIDIA"
    assert gpu["taints"]["gpu"] == {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
    assert gpu["labels"]["clipsearch.io/node-class"] == "gpu"
    assert groups["cpu"]["labels"] == {"clipsearch.io/node-class": "cpu"}
    resources = {}
    for name, doc in parsed.items():
        if name.endswith(".tf"):
            for block in doc.get("resource", []):
                for kind, items in block.items():
                    for rname, body in items.items():
                        resources[f"{_unquote(kind)}.{_unquote(rname)}"] = {k: _attr(body, k) for k in body}
    db = resources["aws_db_instance.mlflow"]
    assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
    assert db["engine"] == "postgres" and db["manage_master_user_password"] is True
    assert "password" not in db
    for bucket in ("dvc", "mlflow_artifacts", "image_cache"):
        assert f"aws_s3_bucket.{bucket}" in resources
    for kind in ("versioning", "server_side_encryption_configuration", "public_access_block"):
        assert f"aws_s3_bucket_{kind}.all" in resources
    assert resources["aws_ecr_repository.this"]["image_tag_mutability"] == "IMMUTABLE"
    # A secret value must never be in terraform: no `secret_string` (it lands in the state); a generated password
    # goes through the write-only `secret_string_wo` (test_platform_terraform.py checks it is ephemeral).
    assert '"secret_string":' not in json.dumps(resources), "a secret value must never be in terraform"
