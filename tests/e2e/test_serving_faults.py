"""Faults while serving, each under steady search load that must see no failed request:

1. the MLflow server is killed (SIGKILL) and restarted: the service keeps answering, says in /readyz and the stale
   gauge that it cannot reach the registry, and follows the alias again once it is back (a new champion is served);
2. an artifact download is cut mid-way (a proxy sends half the bytes and closes): the version is refused, the old
   one keeps serving, and the next polls retry until the download works;
3. the index cache directory is not writable: the version is refused with that reason, the old one is kept, and
   it is served once the directory is writable again.

The service talks to a registry of its own (a copy of the session's MLflow store, served by a second `mlflow
server` behind `tests.support.faulty_proxy`), so killing it disturbs no other test.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from clipsearch.index.artifact import load_artifact, write_artifact
from clipsearch.registry import register_index
from clipsearch.settings import IndexSettings, RegistrySettings
from clipsearch_devtools.processes import free_port, mlflow_server_cmd, running
from tests.e2e.conftest import PipelineRepo, ServiceProcess, ensure_champion, service_process
from tests.support.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.e2e

MODEL = "clipsearch-index"


class Load:
    """Four clients searching without pause; every non-200 answer or broken connection is a failure."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    r = client.get(self.service.url("/search"), params={"q": f"load {i} {n % 11}", "rerank": "off"})
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.ok += 1
                        self.versions.add(r.json()["index_version"])
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@dataclass
class Registry:
    """The second MLflow server (restartable on its port) and the proxy the service reaches it through."""

    workdir: Path
    port: int
    proxy: FaultyProxy
    stack: ExitStack
    proc: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = mlflow_server_cmd(self.workdir, self.port)
        self.proc = self.stack.enter_context(
            running(cmd, f"{self.url}/health", self.workdir / f"mlflow-{time.time():.0f}.log", timeout_s=180)
        )

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        self.proc.wait()  # type: ignore[attr-defined]

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def register_and_promote(self, repo: PipelineRepo, tmp: Path, kind: str) -> str:
        """A new version built from the served artifact (another index kind), made champion."""
        client = self.client()
        champion = client.get_model_version_by_alias(MODEL, "champion")
        source = load_artifact(repo.root / "data" / "index")
        out = tmp / f"variant-{kind}-{time.time_ns()}"
        write_artifact(
            out,
            source.vectors.astype("float32"),
            [str(i) for i in source.ids],
            source.metadata,
            source.manifest.model,
            IndexSettings(kind=kind, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64),
            source.manifest.dataset_version,
            reference_queries=source.reference_queries,
        )
        version = register_index(RegistrySettings(tracking_uri=self.url), out, run_id=str(champion.run_id)).version
        client.set_registered_model_alias(MODEL, "champion", version)
        return version


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _copy_store(source: Path, dest: Path) -> None:
    """The session's MLflow store, copied consistently while its server runs (sqlite backup API)."""
    dest.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source / "mlflow.db") as src, sqlite3.connect(dest / "mlflow.db") as dst:
        src.backup(dst)
    shutil.copytree(source / "artifacts", dest / "artifacts")


@pytest.fixture(scope="module")
def setup(
    reproduced: PipelineRepo, mlflow_workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Registry]]:
    ensure_champion(reproduced)
    root = tmp_path_factory.mktemp("faults")
    _copy_store(mlflow_workdir, root / "mlflow")
    with ExitStack() as stack:
        registry = Registry(root / "mlflow", free_port(), FaultyProxy("http://127.0.0.1:1"), stack)
        registry.start()
        registry.proxy = stack.enter_context(FaultyProxy(registry.url))
        service = stack.enter_context(
            service_process(
                reproduced,
                root / "service",
                CLIPSEARCH_REGISTRY__TRACKING_URI=registry.proxy.url,
                MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                MLFLOW_HTTP_REQUEST_TIMEOUT="5",
                CLIPSEARCH_SERVICE__RATE_LIMIT_SEARCH="1000000/minute",
            )
        )
        yield service, registry


def ready(service: ServiceProcess) -> dict:
    return httpx.get(service.url("/readyz"), timeout=10).json()


def refusals(service: ServiceProcess) -> float:
    text = httpx.get(service.url("/metrics"), timeout=10).text
    line = next((ln for ln in text.splitlines() if ln.startswith("clipsearch_index_refusals_total")), "x 0")
    return float(line.split()[-1])


def test_mlflow_killed_and_restarted(
    setup: tuple[ServiceProcess, Registry], reproduced: PipelineRepo, tmp_path: Path
) -> None:
    service, registry = setup
    serving = ready(service)
    assert serving["ready"]
    assert not serving["stale"]
    with Load(service) as load:
        time.sleep(1.0)
        registry.kill()
        wait_for(lambda: ready(service)["stale"], 60, "the service to notice the registry is gone")
        status = ready(service)
        assert status["ready"] and "MLflow" in status["reason"], status  # noqa: PT018
        assert "clipsearch_index_stale 1.0" in httpx.get(service.url("/metrics"), timeout=10).text
        time.sleep(2.0)  # keep serving while it is down
        registry.start()
        wait_for(lambda: not ready(service)["stale"], 90, "the service to reach the registry again")
        new_version = registry.register_and_promote(reproduced, tmp_path, "hnsw")
        wait_for(lambda: ready(service)["registry_version"] == new_version, 90, "the new champion to be followed")
        time.sleep(1.0)
    assert not load.failures, load.failures[:5]
    # Following resumed: /readyz reported the new registry version above. (The variant is the same vectors in
    # another index kind, so its content-derived index_version may equal the old one.)
    assert load.ok > 20, load.ok
    assert load.versions, load.versions


def test_download_cut_midway_is_refused_then_retried(
    setup: tuple[ServiceProcess, Registry], reproduced: PipelineRepo, tmp_path: Path
) -> None:
    service, registry = setup
    before = ready(service)
    refused_before = refusals(service)
    with Load(service) as load:
        registry.proxy.cut_downloads = True
        new_version = registry.register_and_promote(reproduced, tmp_path, "exact")
        wait_for(lambda: registry.proxy.cuts >= 2 and refusals(service) > refused_before, 90, "a cut download")
        status = ready(service)
        assert status["registry_version"] == before["registry_version"]
        assert status["ready"]
        assert f"version {new_version} refused" in status["reason"], status
        registry.proxy.cut_downloads = False
        wait_for(lambda: ready(service)["registry_version"] == new_version, 90, "the retried download to be served")
        time.sleep(1.0)
    assert not load.failures, load.failures[:5]
    assert load.versions == {before["index_version"], ready(service)["index_version"]}, load.versions
    assert ready(service)["reason"] is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions; CI runs as a normal user")
def test_cache_not_writable_is_refused_with_the_reason(
    setup: tuple[ServiceProcess, Registry], reproduced: PipelineRepo, tmp_path: Path
) -> None:
    service, registry = setup
    before = ready(service)
    indexes = service.cache_dir / "indexes"
    with Load(service) as load:
        indexes.chmod(0o555)
        try:
            new_version = registry.register_and_promote(reproduced, tmp_path, "hnsw")
            wait_for(lambda: "not writable" in (ready(service)["reason"] or ""), 90, "the refusal")
            status = ready(service)
            assert status["registry_version"] == before["registry_version"] and status["ready"], status  # noqa: PT018
            assert f"version {new_version} refused" in status["reason"]
        finally:
            indexes.chmod(0o755)
        wait_for(lambda: ready(service)["registry_version"] == new_version, 90, "the version once writable")
    assert not load.failures, load.failures[:5]
