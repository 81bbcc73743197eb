"""MLflow's database credential and schema: every Secret key the MLflow pods read is written by an ExternalSecret
from the Terraform-managed secret of a dedicated user (not the rotating master), Reloader restarts MLflow when it
changes, the role is bootstrapped idempotently, and `mlflow db upgrade` runs before the server starts (run here
for real against an empty SQLite database, as the cpu overlay does).

ExternalSecret and SecretStore have no schema in kubernetes-validate; these checks are what breaks them in practice.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import REPO, Rendered
from tests.infra.platform import parse_terraform, pod_spec, resources, unwrap

GPU_OVERLAYS = ("staging", "prod")


def _mlflow_pods(r: Rendered) -> list[dict[str, Any]]:
    return [w for w in r.objects if w["kind"] in ("Deployment", "Job") and w["metadata"].get("namespace") == "mlflow"]


def _secret_refs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    refs = []
    for c in spec["containers"] + (spec.get("initContainers") or []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"]))
    return refs


def _terraform_secret_keys() -> set[str]:
    body = resources()["aws_secretsmanager_secret_version.mlflow_db"]["secret_string_wo"]
    return set(re.findall(r"'(\w+)': ", body))


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_every_secret_key_mlflow_reads_is_kept_by_an_external_secret(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    stores = {s["metadata"]["name"] for s in r.find("SecretStore") if s["metadata"]["namespace"] == "mlflow"}
    produced: dict[str, set[str]] = {}
    for es in r.find("ExternalSecret"):
        assert es["apiVersion"] == "external-secrets.io/v1"
        assert es["metadata"]["namespace"] == "mlflow" and es["spec"]["secretStoreRef"]["name"] in stores
        (source,) = es["spec"]["dataFrom"]
        key = source["extract"]["key"]
        assert "REPLACE" not in key, f"{overlay}: ExternalSecret {es['metadata']['name']} still has a placeholder key"
        template = es["spec"]["target"].get("template", {}).get("data")
        if template:
            # Every template variable must be a field of the Terraform secret's JSON.
            used = set(re.findall(r"\{\{\s*\.(\w+)", " ".join(template.values())))
            assert used <= _terraform_secret_keys(), f"{overlay}: template reads {used - _terraform_secret_keys()}"
            assert key == f"clipsearch-{overlay}/mlflow-db", "the name terraform gives: ${local.name}/mlflow-db"
            produced[es["spec"]["target"]["name"]] = set(template)
        else:
            # The RDS-managed master secret is a JSON of username and password.
            assert key.startswith("arn:aws:secretsmanager:") and ":secret:rds!db-" in key
            produced[es["spec"]["target"]["name"]] = {"username", "password"}
    for workload in _mlflow_pods(r):
        for name, key in _secret_refs(pod_spec(workload)):
            assert key in produced.get(name, set()), f"{overlay}: {workload['metadata']['name']} reads {name}/{key}"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_mlflow_uses_the_dedicated_user_and_restarts_on_change(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    deployment = r.one("Deployment", "mlflow")
    reloaded = deployment["metadata"]["annotations"]["secret.reloader.stakater.com/reload"]
    read = {name for name, _ in _secret_refs(pod_spec(deployment))}
    assert read and read <= set(reloaded.split(",")), f"{overlay}: Reloader watches {reloaded}, pods read {read}"
    master = unwrap(resources()["aws_db_instance.mlflow"]["username"])
    locals_ = {k: v for d in parse_terraform().values() for b in d.get("locals", []) for k, v in b.items()}
    assert unwrap(locals_["mlflow_db_user"]) != master
    admin_readers = {
        w["metadata"]["name"]
        for w in _mlflow_pods(r)
        if any(n == "mlflow-db-admin" for n, _ in _secret_refs(pod_spec(w)))
    }
    assert admin_readers == {"mlflow-db-bootstrap"}, "only the bootstrap Job may hold the master credentials"


@pytest.mark.parametrize("overlay", (*GPU_OVERLAYS, "cpu"))
def test_schema_is_migrated_before_the_server_starts(rendered: dict[str, Rendered], overlay: str) -> None:
    spec = pod_spec(rendered[overlay].one("Deployment", "mlflow"))
    (init,) = spec["initContainers"]
    server = spec["containers"][0]
    assert init["command"][:3] == ["mlflow", "db", "upgrade"]
    assert init["image"] == server["image"], "migrate with the MLflow version that will serve"

    def uri_source(c: dict[str, Any]) -> Any:
        env = {e["name"]: e.get("valueFrom", e.get("value")) for e in c.get("env", [])}
        return env.get("MLFLOW_BACKEND_STORE_URI", "from mlflow-config")

    assert uri_source(init) == uri_source(server)


@pytest.mark.e2e  # ~20 s: imports MLflow and creates the schema
def test_mlflow_db_upgrade_creates_an_empty_schema(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """The cpu overlay's init container command, run for real against a fresh SQLite file."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    if mlflow is None:
        pytest.fail("mlflow is not installed in the test venv (pip install -e '.[dev]')", pytrace=False)
    spec = pod_spec(rendered["cpu"].one("Deployment", "mlflow"))
    command = spec["initContainers"][0]["command"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [mlflow, *command[1:-1], command[-1].replace("$(MLFLOW_BACKEND_STORE_URI)", uri)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import sqlite3

    tables = {row[0] for row in sqlite3.connect(tmp_path / "mlflow.db").execute("select name from sqlite_master")}
    assert {"alembic_version", "registered_models", "model_versions"} <= tables


def test_cpu_overlay_needs_no_external_secrets(rendered: dict[str, Rendered]) -> None:
    r = rendered["cpu"]
    assert not r.find("ExternalSecret") and not r.find("SecretStore") and not r.find("Job", "mlflow-db-bootstrap")


class _Cursor:
    def __init__(self, log: list[str], role_exists: bool) -> None:
        self.log, self.role_exists = log, role_exists

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, query: Any, params: tuple[Any, ...] = ()) -> None:
        self.log.append(f"{query} {params}")

    def fetchone(self) -> tuple[int] | None:
        return (1,) if self.role_exists else None


def _run_bootstrap(role_exists: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []

    class _Identifier:
        def __init__(self, name: str) -> None:
            self.name = name

        def __str__(self) -> str:
            return f'"{self.name}"'

    class _SQL:
        def __init__(self, text: str) -> None:
            self.text = text

        def format(self, *args: Any) -> str:
            return self.text.format(*map(str, args))

    conn = types.SimpleNamespace(autocommit=False, cursor=lambda: _Cursor(log, role_exists), close=lambda: None)
    fake = types.ModuleType("psycopg2")

    def connect(**kw: Any) -> Any:
        log.append(f"connect {kw['user']}@{kw['host']} sslmode={kw['sslmode']}")
        return conn

    fake.connect = connect  # type: ignore[attr-defined]
    fake_sql = types.ModuleType("psycopg2.sql")
    fake_sql.SQL = _SQL  # type: ignore[attr-defined]
    fake_sql.Identifier = _Identifier  # type: ignore[attr-defined]
    fake.sql = fake_sql  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "psycopg2", fake)
    monkeypatch.setitem(sys.modules, "psycopg2.sql", fake_sql)
    for k, v in {
        "APP_USER": "mlflow_app",
        "APP_PASSWORD": "pw",
        "DB_NAME": "mlflow",
        "DB_HOST": "db",
        "DB_PORT": "5432",
        "ADMIN_USER": "mlflow_admin",
        "ADMIN_PASSWORD": "admin",
    }.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("db_bootstrap", REPO / "k8s" / "mlflow" / "db_bootstrap.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    return log


@pytest.mark.parametrize("role_exists", [False, True])
def test_bootstrap_creates_or_updates_the_role(role_exists: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _run_bootstrap(role_exists, monkeypatch)
    assert log[0] == "connect mlflow_admin@db sslmode=require"
    verb = "ALTER" if role_exists else "CREATE"
    assert any(
        line.startswith(f'{verb} ROLE "mlflow_app" WITH LOGIN PASSWORD %s') and "('pw',)" in line for line in log
    )
    assert any('GRANT USAGE, CREATE ON SCHEMA public TO "mlflow_app"' in line for line in log)
