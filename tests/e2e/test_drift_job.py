"""The drift CronJob as a real process: files or a service window in, a run in a real `mlflow server` out."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from clipsearch_devtools.artifacts import metadata_frame
from clipsearch_devtools.processes import mlflow_server
from clipsearch_devtools.vectors import embeddings as support_embeddings

pytestmark = pytest.mark.e2e

DIM = 32  # the tiny test model's dimension
RANK = 8
EXPERIMENT = "clipsearch-drift"  # <settings.registry.experiment>-drift with the default experiment


def embeddings(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """The shared synthetic embeddings at the tiny model's dimension."""
    return support_embeddings(n, seed, shift, dim=DIM, rank=RANK)


def run_job(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    full_env = {
        **inherited,
        "CLIPSEARCH_PARAMS": str(tmp_path / "no-params.yaml"),  # defaults, not the repo's params.yaml
        "PYTHONWARNINGS": "ignore",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "services.search.drift_job", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        timeout=300,
    )


def run_id_of(stdout: str) -> str:
    line = stdout.strip().splitlines()[-1]
    assert line.startswith("drift_job: "), stdout
    return line.rsplit("mlflow_run=", 1)[1].strip()


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def test_files_in_metrics_and_html_report_out(mlflow_url: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    np.save(tmp_path / "ref.npy", embeddings(150, seed=1))
    np.save(tmp_path / "drifted.npy", embeddings(120, seed=2, shift=1.5))
    np.save(tmp_path / "same.npy", embeddings(120, seed=3))
    env = {"CLIPSEARCH_REGISTRY__TRACKING_URI": mlflow_url}

    drifted = run_job(["--reference", "ref.npy", "--current", "drifted.npy", "--fail-on-drift"], tmp_path, env)
    assert drifted.returncode == 1, drifted.stderr[-3000:]
    assert len(drifted.stdout.strip().splitlines()) == 1
    assert drifted.stdout.startswith("drift_job: DRIFT: score=")

    client = MlflowClient(tracking_uri=mlflow_url)
    run = client.get_run(run_id_of(drifted.stdout))
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    metrics = run.data.metrics
    assert metrics["drift_detected"] == 1.0
    assert metrics["drift_score"] > 0.6
    assert (metrics["n_current"], metrics["n_reference"]) == (120.0, 150.0)
    assert run.data.tags["reference_source"] == "ref.npy"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"drift_report.html", "drift_result.json"} <= artifacts
    html = Path(client.download_artifacts(run.info.run_id, "drift_report.html", str(tmp_path))).read_text()
    assert "Drift in embeddings" in html
    assert len(html) > 10_000

    same = run_job(["--reference", "ref.npy", "--current", "same.npy", "--fail-on-drift", "--no-html"], tmp_path, env)
    assert same.returncode == 0, same.stderr[-3000:]
    assert same.stdout.startswith("drift_job: no drift: ")
    quiet = client.get_run(run_id_of(same.stdout))
    assert quiet.data.metrics["drift_detected"] == 0.0
    assert "drift_report.html" not in {a.path for a in client.list_artifacts(quiet.info.run_id)}


def test_reference_from_registered_champion(mlflow_url: str, tmp_path: Path) -> None:
    """The production path: no --reference, the champion's reference_queries.npy is pulled and verified."""
    import mlflow

    from clipsearch.identity import ModelIdentity
    from clipsearch.index.artifact import write_artifact
    from clipsearch.registry import client_for, register_index
    from clipsearch.settings import IndexSettings, RegistrySettings

    settings = RegistrySettings(tracking_uri=mlflow_url, model_name="drift-e2e-index")
    vectors = embeddings(40, seed=9)
    ids = [f"p{i:03d}" for i in range(40)]
    meta = metadata_frame(ids, blur_hash="LEHV6nWB2yk8")
    model = ModelIdentity(arch="clipsearch-tiny", pretrained="random", weights_sha256="b" * 64, dim=DIM)
    manifest = write_artifact(
        tmp_path / "index",
        vectors,
        ids,
        meta,
        model,
        IndexSettings(kind="exact", dtype="float32"),
        "fixture-1",
        reference_queries=embeddings(150, seed=1),
    )
    client = client_for(settings)
    mlflow.set_experiment("drift-e2e-register")
    with mlflow.start_run() as run:
        mlflow.log_metric("ndcg_at_4", 0.5)
    version = register_index(settings, tmp_path / "index", run.info.run_id, pip_requirements=["numpy"])
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, version.version)

    np.save(tmp_path / "drifted.npy", embeddings(120, seed=2, shift=1.5))
    env = {"CLIPSEARCH_REGISTRY__TRACKING_URI": mlflow_url, "CLIPSEARCH_REGISTRY__MODEL_NAME": settings.model_name}
    job = run_job(["--current", "drifted.npy", "--no-html", "--cache-dir", str(tmp_path / "cache")], tmp_path, env)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "DRIFT" in job.stdout
    assert "n_reference=150" in job.stdout
    tags = client.get_run(run_id_of(job.stdout)).data.tags
    assert tags["model_version"] == version.version
    assert tags["model_name"] == settings.model_name
    assert tags["index_version"] == manifest.version

    # A tampered download is refused, not compared.
    cached = next((tmp_path / "cache").glob("v*/index/reference_queries.npy"))
    np.save(cached, embeddings(150, seed=99))
    tampered = run_job(
        ["--current", "drifted.npy", "--no-html", "--no-mlflow", "--cache-dir", str(tmp_path / "cache")], tmp_path, env
    )
    assert tampered.returncode == 2
    assert "does not match its manifest sha256" in tampered.stderr


@contextmanager
def window_service(window: np.ndarray, token: str) -> Iterator[str]:
    """A stand-in for the service's `GET /admin/drift-window` contract: bearer auth, np.save body."""
    buf = io.BytesIO()
    np.save(buf, window.astype(np.float32), allow_pickle=False)
    body = buf.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/admin/drift-window":
                self.send_error(404)
                return
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"detail": "missing or wrong admin token"}')
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_window_from_service_with_admin_token(tmp_path: Path) -> None:
    np.save(tmp_path / "ref.npy", embeddings(150, seed=1))
    with window_service(embeddings(120, seed=2, shift=1.5), token="s3cret") as url:
        base = ["--reference", "ref.npy", "--service-url", url, "--no-mlflow", "--no-html", "--fail-on-drift"]
        from_env = run_job(base, tmp_path, {"CLIPSEARCH_SERVICE__ADMIN_TOKEN": "s3cret"})
        assert from_env.returncode == 1, from_env.stderr[-3000:]
        assert "n_current=120" in from_env.stdout

        wrong = run_job([*base, "--admin-token", "nope"], tmp_path, {})
        assert wrong.returncode == 2
        assert "refused the request (401" in wrong.stderr
        assert "--admin-token" in wrong.stderr
