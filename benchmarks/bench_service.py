"""The search service end to end over HTTP on loopback: cold start, one client, sustained load, resident memory.

What runs is what production runs: a real `mlflow server`, an index artifact registered and aliased
`champion`, and `uvicorn services.search.app:app` pulling it (checksums verified) with ViT-B-32 weights from
a local file (random weights of the real architecture: same cost as pretrained). Re-ranking is off in the
requests (`rerank=off`); `benchmarks/bench_rerank.py` measures it.

- cold start: process start -> `/readyz` 200 (imports, weight load + hash, registry pull, verify, warm-up).
- single client: sequential requests, each query distinct.
- load: an open-loop asyncio generator sends at a fixed rate for `--duration` s; latency counts from the
  scheduled send time, so a backlog shows up as latency (no coordinated omission). The generator shares the
  2 cores with the service, so these figures are pessimistic for a dedicated node.

Every query text is distinct across all steps, and the service's embedding cache is off by default here
(`--cache-size 0`), so the figures are the model path: the service's micro-batcher (concurrent queries
encoded and searched together, `service.batch_max_size` / `batch_max_wait_ms`) is on as configured.

    python -m benchmarks.bench_service [--size 25000] [--rates 30,60] [--duration 20] \
        [--text-precision fp32|bf16] [--exact-backend numpy|faiss]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from benchmarks.common import QUERIES, percentiles_ms, print_table, rss_mb, structured_vectors, write_result

ARCH = "ViT-B-32"
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _query(i: int) -> str:
    return f"{QUERIES[i % len(QUERIES)]} {i}"  # distinct text every time


def prepare(workdir: Path, size: int, exact_backend: str) -> tuple[Path, Path]:
    """Random ViT-B-32 weights saved to a local file, and a `size`-vector artifact built for that encoder."""
    import torch

    from clipsearch.encoder import ClipEncoder
    from clipsearch.index.artifact import METADATA_COLUMNS, write_artifact
    from clipsearch.settings import IndexSettings, ModelSettings

    weights = workdir / "vit-b-32-random.pt"
    model = ClipEncoder(ModelSettings(arch=ARCH, pretrained="random", device="cpu")).load().model
    torch.save(model.state_dict(), weights)
    identity = ClipEncoder(ModelSettings(arch=ARCH, pretrained=str(weights), device="cpu")).identity
    ids = [f"bench{i:07d}" for i in range(size)]
    meta = pd.DataFrame(
        {
            "photo_id": ids,
            "image_url": [f"https://images.example.com/{i}" for i in ids],
            "description": [QUERIES[i % len(QUERIES)] for i in range(size)],
            "photographer": "bench",
            "width": 400,
            "height": 267,
            "blur_hash": "",
        }
    )[list(METADATA_COLUMNS)]
    out = workdir / "index"
    settings = IndexSettings(kind="exact", exact_backend=exact_backend)
    write_artifact(out, structured_vectors(size, identity.dim), ids, meta, identity, settings, "bench-synthetic")
    return weights, out


def register(tracking_uri: str, index_dir: Path) -> str:
    import mlflow
    from mlflow import MlflowClient

    from clipsearch.registry import register_index
    from clipsearch.settings import RegistrySettings

    settings = RegistrySettings(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
    version = register_index(settings, index_dir, run_id=run_id).version
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, version)
    return str(version)


def single_client(base_url: str, n: int) -> dict[str, Any]:
    times, server = [], []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(n + 5):
            start = time.perf_counter()
            r = client.get("/search", params={"q": _query(10_000 + i), "rerank": "off"})
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            if i >= 5:
                times.append(elapsed)
                server.append(r.json()["timings_ms"])
    stages = {f"server_{k}_p50_ms": round(float(np.median([t[k] for t in server])), 3) for k in server[0]}
    return {"variant": "single client, sequential", **percentiles_ms(times), **stages}


async def _open_loop(base_url: str, rate: float, duration_s: float, offset: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:

        async def one(i: int, scheduled: float) -> None:
            try:
                r = await client.get("/search", params={"q": _query(offset + i), "rerank": "off"})
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    return
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - scheduled)

        tasks = []
        start = time.perf_counter()
        n = int(rate * duration_s)
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return {
        "variant": f"open loop {rate:g} req/s x {duration_s:g} s",
        "offered_rps": rate,
        "completed_rps": round(len(latencies) / wall, 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        **percentiles_ms(latencies),
    }


def _batching_settings() -> dict[str, Any]:
    from clipsearch.settings import ServiceSettings

    fields = ("batch_max_size", "batch_max_wait_ms")
    defaults = ServiceSettings()
    return {f: getattr(defaults, f) for f in fields if hasattr(defaults, f)} or {"micro_batching": "none"}


def drain(base_url: str, timeout_s: float = 120.0) -> None:
    """Wait until the service has worked off a backlog (requests the load generator gave up on still run)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            client.get("/search", params={"q": "drain probe", "rerank": "off"})
            if time.perf_counter() - start < 0.5:
                return
            time.sleep(1.0)


def run(
    size: int,
    rates: list[float],
    duration_s: float,
    n_single: int,
    text_precision: str,
    exact_backend: str,
    cache_size: int,
) -> dict[str, Any]:
    import psutil

    from tests.support.processes import free_port, mlflow_server, wait_http

    workdir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    t = time.perf_counter()
    weights, index_dir = prepare(workdir, size, exact_backend)
    print(f"prepared weights + {size}-vector artifact in {time.perf_counter() - t:.1f} s", flush=True)
    with mlflow_server(workdir / "mlflow") as tracking_uri:
        version = register(tracking_uri, index_dir)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "CLIPSEARCH_PARAMS": str(workdir / "no-params.yaml"),
            "CLIPSEARCH_MODEL__ARCH": ARCH,
            "CLIPSEARCH_MODEL__PRETRAINED": str(weights),
            "CLIPSEARCH_MODEL__DEVICE": "cpu",
            "CLIPSEARCH_MODEL__TEXT_PRECISION": text_precision,
            # The published rows measure the torch text tower (fp32 or bf16); `auto` would pick ONNX Runtime on CPU.
            "CLIPSEARCH_MODEL__TEXT_BACKEND": "torch",
            "CLIPSEARCH_REGISTRY__TRACKING_URI": tracking_uri,
            "CLIPSEARCH_SERVICE__CACHE_DIR": str(workdir / "cache"),
            "CLIPSEARCH_SERVICE__POLL_INTERVAL_S": "3600",
            "CLIPSEARCH_RERANK__ENABLED": "false",
            "CLIPSEARCH_SERVICE__EMBEDDING_CACHE_SIZE": str(cache_size),
        }
        env.pop("GEMINI_API_KEY", None)
        cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
        import subprocess

        log = (workdir / "service.log").open("wb")
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            wait_http(f"{base_url}/readyz", 180, proc, workdir / "service.log")
            cold_start_s = time.perf_counter() - started
            print(f"service ready in {cold_start_s:.1f} s (registry version {version})", flush=True)
            rss_ready = rss_mb(proc.pid)
            rows = [single_client(base_url, n_single)]
            for step, rate in enumerate(rates, start=1):
                rows.append(asyncio.run(_open_loop(base_url, rate, duration_s, offset=step * 100_000)))
                drain(base_url)
            rss_after = rss_mb(proc.pid)
            peak = psutil.Process(proc.pid).memory_info()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {
        "size": size,
        "arch": ARCH,
        "text_precision": text_precision,
        "exact_backend": exact_backend,
        "rerank": "off",
        "embedding_cache_size": cache_size,
        "queries": "all distinct",
        "service_batching": _batching_settings(),
        "cold_start_s": round(cold_start_s, 2),
        "rss_ready_mb": round(rss_ready, 1),
        "rss_after_load_mb": round(rss_after, 1),
        "vms_mb": round(peak.vms / 2**20, 1),
        "results": rows,
        "targets": {"single_p95_ms": 25, "sustained_rps": 60, "sustained_p95_ms": 100, "cold_start_s": 10},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=25_000)
    parser.add_argument("--rates", default="30,60", help="comma-separated offered loads, requests/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load step")
    parser.add_argument("--single", type=int, default=150, help="sequential single-client requests")
    parser.add_argument("--text-precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--exact-backend", choices=["numpy", "faiss"], default="numpy")
    parser.add_argument("--cache-size", type=int, default=0, help="service.embedding_cache_size (0 = off)")
    parser.add_argument("--name", default="", help="result file name (default service_<precision>_<backend>)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    result = run(args.size, rates, args.duration, args.single, args.text_precision, args.exact_backend, args.cache_size)
    cols = ["variant", "n", "completed_rps", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    print_table(
        result["results"], cols, f"service, {args.size} vectors, rerank off, {args.text_precision}/{args.exact_backend}"
    )
    print(
        f"\ncold start {result['cold_start_s']} s; RSS ready {result['rss_ready_mb']} MiB, "
        f"after load {result['rss_after_load_mb']} MiB"
    )
    name = args.name or f"service_{args.text_precision}_{args.exact_backend}"
    print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
