"""End-to-end fixtures: a real `mlflow server`, and a temporary copy of this repo where `dvc repro` runs for real
against the generated Unsplash Lite fixture served on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clipsearch_devtools.gemini_standin import GeminiStandin
from clipsearch_devtools.processes import clean_environ, free_port, mlflow_server, running
from clipsearch_devtools.repo_copy import copy_repo
from training.fetch import sha256_file

BIN = Path(sys.executable).parent


@dataclass
class PipelineRepo:
    """A throwaway checkout with params pointed at the fixture server, the tiny model and a live MLflow."""

    root: Path
    tracking_uri: str
    checkpoint: Path

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**clean_environ(), "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def set_params(self, **sections: dict[str, object]) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for section, values in sections.items():
            params[section].update(values)
        path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def mlflow_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's MLflow server keeps its sqlite store and artifacts (tests may copy them)."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="session")
def mlflow_url(mlflow_workdir: Path) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, served artifacts, one worker) on 127.0.0.1 for the session."""
    with mlflow_server(mlflow_workdir) as url:
        yield url


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory, unsplash_fixture_server, tiny_clip_checkpoint, mlflow_url) -> PipelineRepo:
    """A repo copy whose params point at the fixture server, the trained tiny CLIP checkpoint and MLflow."""
    root = tmp_path_factory.mktemp("repo")
    copy_repo(root)
    repo = PipelineRepo(root=root, tracking_uri=mlflow_url, checkpoint=tiny_clip_checkpoint)
    repo.set_params(
        dataset={
            "url": unsplash_fixture_server.zip_url,
            "version": "fixture",
            "sha256": sha256_file(unsplash_fixture_server.info.zip_path),  # pinned, as the real default is
            "limit": None,
            "image_width": 96,
            "concurrency": 8,
        },
        model={
            "arch": "clipsearch-tiny",
            "pretrained": str(tiny_clip_checkpoint),
            "device": "cpu",
            "precision": "fp32",
            "num_workers": 1,
            "batch_size": 64,
        },
        embed={"chunk_size": 128},
        registry={"tracking_uri": mlflow_url, "gate_tolerance": 0.02},
    )
    return repo


@pytest.fixture(scope="session")
def reproduced(pipeline_repo: PipelineRepo) -> PipelineRepo:
    """`dvc repro` run once for the session (the pipeline test and the service tests share its registry)."""
    result = pipeline_repo.run(str(BIN / "dvc"), "repro")
    (pipeline_repo.root / "first-repro.log").write_text(result.stdout + result.stderr)
    return pipeline_repo


@dataclass
class LiveService:
    """A real uvicorn process serving the champion pulled from the session's MLflow server."""

    base_url: str
    repo: PipelineRepo
    cache_dir: Path
    standin: GeminiStandin
    admin_token: str = "test-admin-token"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


def service_env(repo: PipelineRepo, cache_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "CLIPSEARCH_PARAMS": str(repo.root / "params.yaml"),
        "CLIPSEARCH_SERVICE__CACHE_DIR": str(cache_dir),
        "CLIPSEARCH_SERVICE__IMAGES_DIR": str(repo.root / "data" / "images"),
        "CLIPSEARCH_SERVICE__POLL_INTERVAL_S": "1",
        "CLIPSEARCH_SERVICE__ADMIN_TOKEN": "test-admin-token",
        "CLIPSEARCH_SERVICE__DRIFT_INTERVAL_S": "1",
        "CLIPSEARCH_SERVICE__DRIFT_MIN_QUERIES": "5",
        "CLIPSEARCH_RERANK__BUDGET_S": "0.6",
        "CLIPSEARCH_RERANK__THUMBNAIL_PX": "64",
        # Load tests and the contract fuzzer hammer one service from one address: limits far above what they send
        # (tests/e2e/test_guards.py checks the limits themselves on a service of its own).
        "CLIPSEARCH_SERVICE__RATE_LIMIT_SEARCH": "1000000/minute",
        "CLIPSEARCH_SERVICE__RATE_LIMIT_RERANK": "1000000/minute",
        "CLIPSEARCH_RERANK__SPEND_REQUESTS_PER_MINUTE": "1000000",
        # Admission control sheds what cannot start within 50 ms; a shared 2-core CI machine stalls longer than
        # that now and then, which is not what these tests are about (tests/e2e/test_overload.py sets its own).
        "CLIPSEARCH_SERVICE__QUEUE_DEADLINE_MS": "5000",
        # Image URLs may reach the loopback fixture server (and only it): production allows no private address.
        "CLIPSEARCH_INPUTS__FETCH_ALLOW_HOSTS": '["127.0.0.1"]',
    }
    env.update(overrides)
    return env


def ensure_champion(repo: PipelineRepo) -> str:
    """Promote the first registered version if no champion exists yet (tests may run alone)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=repo.tracking_uri, registry_uri=repo.tracking_uri)
    try:
        return str(client.get_model_version_by_alias("clipsearch-index", "champion").version)
    except MlflowException:
        repo.run(str(BIN / "clipsearch"), "promote")
        return str(client.get_model_version_by_alias("clipsearch-index", "champion").version)


@pytest.fixture(scope="session")
def live_service(reproduced: PipelineRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """uvicorn + the real app, re-ranking through a local Gemini stand-in, following @champion every second."""
    from clipsearch_devtools.processes import free_port, running

    ensure_champion(reproduced)
    workdir = tmp_path_factory.mktemp("service")
    cache_dir = workdir / "cache"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with GeminiStandin() as standin:
        env = service_env(
            reproduced, cache_dir, CLIPSEARCH_RERANK__BASE_URL=standin.base_url, GEMINI_API_KEY="test-key"
        )
        cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
        with running(cmd, f"{base_url}/readyz", workdir / "service.log", env=env, cwd=reproduced.root, timeout_s=120):
            yield LiveService(base_url=base_url, repo=reproduced, cache_dir=cache_dir, standin=standin)


@dataclass
class ServiceProcess:
    """One more uvicorn process of the real app (its own settings), for tests that signal or break it."""

    base_url: str
    proc: subprocess.Popen[bytes]
    log: Path
    cache_dir: Path

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@contextmanager
def service_process(
    repo: PipelineRepo, workdir: Path, *, health: str = "/readyz", **env: str
) -> Iterator[ServiceProcess]:
    """uvicorn with `service_env(...)` plus `env`, run as the Deployment runs it (`--no-proxy-headers`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(env.pop("CLIPSEARCH_SERVICE__CACHE_DIR", str(workdir / "cache")))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        str(BIN / "uvicorn"),
        "services.search.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-proxy-headers",
        "--timeout-graceful-shutdown",
        "10",
    ]
    log = workdir / "service.log"
    with running(
        cmd, f"{base_url}{health}", log, env=service_env(repo, cache_dir, **env), cwd=repo.root, timeout_s=180
    ) as proc:
        yield ServiceProcess(base_url=base_url, proc=proc, log=log, cache_dir=cache_dir)
