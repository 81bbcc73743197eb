"""Start real processes for end-to-end tests (mlflow server, uvicorn) on loopback, and stop them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def clean_environ() -> dict[str, str]:
    """os.environ without MLflow's URI variables: `mlflow.set_tracking_uri` / `set_registry_uri` in the test
    process export them, and a child must talk to the server its own settings name, not a previous test's."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Poll `url` until it answers 200, the process dies, or the time is up (then fail with the log's tail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(
        f"{url} did not come up within {timeout_s}s (exit code {proc.poll() if proc else None}):\n{tail}"
    )


@contextmanager
def running(
    cmd: list[str],
    health_url: str,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 90.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` in its own process group until the block ends; wait for `health_url` first."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean_environ(), **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        try:
            wait_http(health_url, timeout_s, proc, log)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextmanager
def mlflow_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """A real `mlflow server` with a sqlite backend and served artifacts, one worker, on 127.0.0.1."""
    port = port or free_port()
    cmd = mlflow_server_cmd(workdir, port)
    url = f"http://127.0.0.1:{port}"
    with running(cmd, f"{url}/health", workdir / "mlflow-server.log", timeout_s=120.0):
        yield url


def mlflow_server_cmd(workdir: Path, port: int) -> list[str]:
    """The `mlflow server` command line of `mlflow_server` (tests that kill and restart it run it themselves)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
