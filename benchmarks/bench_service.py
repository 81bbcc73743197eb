"""The search service end to end over HTTP on loopback: cold start, one client, cache hits, capacity, overload.

What runs is what production runs: a real `mlflow server`, an index artifact registered and aliased
`champion`, and `uvicorn services.search.app:app` pulling it (checksums verified) with ViT-B-32 weights from
a local file (random weights of the real architecture: same cost as pretrained). Re-ranking is off in the
requests (`rerank=off`); `benchmarks/bench_rerank.py` measures it.

Several service configurations (`--variants`) run one after the other in one invocation, against the same
registered artifact and the same query stream, so they can be compared side by side. For each:

- cold start: process start -> `/readyz` 200 (imports, weight load + hash, registry pull, verify, warm-up).
- single client: sequential requests, each query distinct.
- cache hits: the single-client queries again, sequentially (the service's embedding/result cache answers).
- load steps (`--rates`): an open-loop asyncio generator sends at a fixed rate for `--duration` s; latency
  counts from the scheduled send time, so a backlog shows up as latency (no coordinated omission).
- capacity: a saturating step (`--probe-rate`) whose completed rate, with admission control shedding the rest,
  is the variant's capacity C; then the overload step offers 2 x C and reports completed/C, the admitted
  queries' p95 and how fast the shed ones (503 + Retry-After) were answered.

The generator shares the 2 cores with the service, so the figures are pessimistic for a dedicated node (at 2x
capacity the generator itself takes a large share of the CPU). Every query text is distinct across all steps
except the cache-hit step, so the other figures are the model path.

A variant is `default` (the settings' defaults, no overrides) or `<text backend>[-int8]`, e.g. `torch`,
`onnx-int8`. The artifact is built once with `--exact-backend` (default: the setting's default), since the
exact backend is a property of the artifact (its manifest), not of the service:

    python -m benchmarks.bench_service --variants default,torch [--size 25000] [--rates 60] [--duration 15]
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
    from clipsearch_devtools.artifacts import metadata_frame

    weights = workdir / "vit-b-32-random.pt"
    model = ClipEncoder(ModelSettings(arch=ARCH, pretrained="random", device="cpu")).load().model
    torch.save(model.state_dict(), weights)
    identity = ClipEncoder(ModelSettings(arch=ARCH, pretrained=str(weights), device="cpu")).identity
    ids = [f"bench{i:07d}" for i in range(size)]
    meta = metadata_frame(
        ids,
        image_url=[f"https://images.example.com/{i}" for i in ids],
        description=[QUERIES[i % len(QUERIES)] for i in range(size)],
        photographer="bench",
        height=267,
        blur_hash="",
    )[list(METADATA_COLUMNS)]
    out = workdir / "index"
    settings = IndexSettings(kind="exact", exact_backend=exact_backend)
    write_artifact(out, structured_vectors(size, identity.dim), ids, meta, identity, settings, "bench-synthetic")
    # What the pipeline's export_encoders + register stages add: the query encoder, from the same weights.
    from clipsearch.index.artifact import add_query_encoders, load_artifact
    from clipsearch.query_encoders import export_query_encoders, load_dir

    encoder = ClipEncoder(ModelSettings(arch=ARCH, pretrained=str(weights), device="cpu")).load()
    spec = export_query_encoders(
        encoder, workdir / "encoders", ModelSettings(), list(QUERIES[:10]), load_artifact(out).index
    )
    add_query_encoders(out, load_dir(workdir / "encoders", spec), spec)
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


async def _raw_get(host: str, port: int, target: str, timeout_s: float) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 GET on its own connection (Connection: close): status and headers, body drained.

    The load generator's own cost must stay linear in the requests it sends: httpx's async pool re-scans every
    queued request against every connection, which on 2 loaded cores made the generator the bottleneck past
    ~100 req/s.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return status, headers


async def _open_loop(base_url: str, rate: float, duration_s: float, offset: int) -> dict[str, Any]:
    url = httpx.URL(base_url)
    host, port = str(url.host), int(url.port or 80)
    latencies: list[float] = []
    shed: list[float] = []
    errors: dict[str, int] = {}

    async def one(i: int, scheduled: float) -> None:
        target = "/search?" + str(httpx.QueryParams({"q": _query(offset + i), "rerank": "off"}))
        try:
            sent = time.perf_counter()
            status, headers = await _raw_get(host, port, target, 10.0)
            if status == 503 and "retry-after" in headers:
                shed.append(time.perf_counter() - sent)  # admission control: time from send to the answer
                return
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                return
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
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
        "shed": len(shed),
        "shed_p50_ms": percentiles_ms(shed).get("p50_ms"),
        "shed_p95_ms": percentiles_ms(shed).get("p95_ms"),
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


def parse_variant(spec: str) -> dict[str, str]:
    """`default` -> no overrides; `onnx-int8` -> text backend onnx with int8 quantisation; `torch` -> torch fp32."""
    if spec == "default":
        return {}
    backend, _, quant = spec.partition("-")
    env = {"CLIPSEARCH_MODEL__TEXT_BACKEND": backend, "CLIPSEARCH_MODEL__ONNX_QUANTIZE": quant or "none"}
    return env


def cache_hits(base_url: str, n: int) -> dict[str, Any]:
    """The single-client queries again: every one is in the service's cache."""
    times = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(n + 5):
            start = time.perf_counter()
            r = client.get("/search", params={"q": _query(10_000 + (i % n)), "rerank": "off"})
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            if i >= 5:
                times.append(elapsed)
    return {"variant": "cache hits, sequential", **percentiles_ms(times)}


def measure_variant(
    spec: str,
    base_env: dict[str, str],
    workdir: Path,
    rates: list[float],
    duration_s: float,
    n_single: int,
    probe_rate: float,
) -> dict[str, Any]:
    import subprocess

    import psutil

    from clipsearch_devtools.processes import free_port, wait_http

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    safe = spec
    env = {
        **base_env,
        "CLIPSEARCH_SERVICE__CACHE_DIR": str(workdir / f"cache-{safe}"),
        "CLIPSEARCH_MODEL__ONNX_CACHE_DIR": str(workdir / f"onnx-{safe}"),
        **parse_variant(spec),
    }
    cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
    log_path = workdir / f"service-{safe}.log"
    log = log_path.open("wb")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        wait_http(f"{base_url}/readyz", 300, proc, log_path)
        cold_start_s = time.perf_counter() - started
        print(f"[{spec}] ready in {cold_start_s:.1f} s", flush=True)
        rss_ready = rss_mb(proc.pid)
        rows = [single_client(base_url, n_single), cache_hits(base_url, min(n_single, 100))]
        offset = 100_000
        for rate in rates:
            rows.append(asyncio.run(_open_loop(base_url, rate, duration_s, offset=offset)))
            offset += 100_000
            drain(base_url)
        probe = asyncio.run(_open_loop(base_url, probe_rate, max(5.0, duration_s / 2), offset=offset))
        probe["variant"] = f"capacity probe {probe_rate:g} req/s"
        offset += 100_000
        rows.append(probe)
        drain(base_url)
        capacity = max(1.0, float(probe["completed_rps"]))
        over = asyncio.run(_open_loop(base_url, round(2 * capacity, 1), duration_s, offset=offset))
        over["variant"] = f"overload 2x capacity ({2 * capacity:.0f} req/s)"
        over["completed_over_capacity"] = round(over["completed_rps"] / capacity, 3)
        rows.append(over)
        drain(base_url)
        rss_after = rss_mb(proc.pid)
        peak = psutil.Process(proc.pid).memory_info()
        print_table(rows, COLUMNS, f"[{spec}]")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {
        "variant": spec,
        "overrides": parse_variant(spec),
        "loadavg_at_start": load_at_start,
        "cold_start_s": round(cold_start_s, 2),
        "capacity_rps": capacity,
        "rss_ready_mb": round(rss_ready, 1),
        "rss_after_load_mb": round(rss_after, 1),
        "vms_mb": round(peak.vms / 2**20, 1),
        "results": rows,
    }


COLUMNS = [
    "variant",
    "n",
    "completed_rps",
    "errors",
    "shed",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "shed_p95_ms",
    "completed_over_capacity",
]


def run(
    size: int,
    variants: list[str],
    rates: list[float],
    duration_s: float,
    n_single: int,
    cache_size: int | None,
    probe_rate: float,
    exact_backend: str,
) -> dict[str, Any]:
    from clipsearch_devtools.processes import mlflow_server

    workdir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    t = time.perf_counter()
    weights, index_dir = prepare(workdir, size, exact_backend)
    print(f"prepared weights + {size}-vector artifact in {time.perf_counter() - t:.1f} s", flush=True)
    measured = []
    with mlflow_server(workdir / "mlflow") as tracking_uri:
        version = register(tracking_uri, index_dir)
        print(f"registered version {version}", flush=True)
        base_env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "CLIPSEARCH_PARAMS": str(workdir / "no-params.yaml"),
            "CLIPSEARCH_MODEL__ARCH": ARCH,
            "CLIPSEARCH_MODEL__PRETRAINED": str(weights),
            "CLIPSEARCH_MODEL__DEVICE": "cpu",
            "CLIPSEARCH_REGISTRY__TRACKING_URI": tracking_uri,
            "CLIPSEARCH_SERVICE__POLL_INTERVAL_S": "3600",
            "CLIPSEARCH_RERANK__ENABLED": "false",
        }
        if cache_size is not None:
            base_env["CLIPSEARCH_SERVICE__EMBEDDING_CACHE_SIZE"] = str(cache_size)
        base_env.pop("GEMINI_API_KEY", None)
        for spec in variants:
            measured.append(measure_variant(spec, base_env, workdir, rates, duration_s, n_single, probe_rate))
    return {
        "size": size,
        "arch": ARCH,
        "rerank": "off",
        "exact_backend": exact_backend,
        "embedding_cache_size": cache_size if cache_size is not None else "default",
        "queries": "all distinct, except the cache-hit step",
        "service_batching": _batching_settings(),
        "variants": measured,
        "targets": {
            "single_p95_ms": 12,
            "sustained_rps": 150,
            "sustained_p95_ms": 100,
            "cache_hit_p95_ms": 3,
            "cold_start_s": 3,
            "overload_completed_over_capacity": 0.95,
            "overload_admitted_p95_ms": 100,
            "shed_p95_ms": 5,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=25_000)
    parser.add_argument(
        "--variants",
        default="default,torch",
        help="comma-separated service configurations run side by side: default, or <text backend>[-int8], e.g. "
        "torch, onnx, onnx-int8",
    )
    parser.add_argument("--text-backend", default="", help="shorthand: one variant with this text backend")
    parser.add_argument("--rates", default="60", help="comma-separated offered loads before the capacity probe")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load step")
    parser.add_argument("--single", type=int, default=150, help="sequential single-client requests")
    parser.add_argument("--probe-rate", type=float, default=400.0, help="saturating rate of the capacity probe")
    parser.add_argument(
        "--cache-size", type=int, default=None, help="service.embedding_cache_size (default: the setting's)"
    )
    parser.add_argument("--exact-backend", choices=["numpy", "faiss"], default=None, help="the artifact's")
    parser.add_argument("--name", default="service", help="result file name")
    args = parser.parse_args(argv)
    variants = [args.text_backend] if args.text_backend else [v for v in args.variants.split(",") if v]
    rates = [float(r) for r in args.rates.split(",") if r]
    from clipsearch.settings import IndexSettings

    exact = args.exact_backend or IndexSettings().exact_backend
    result = run(args.size, variants, rates, args.duration, args.single, args.cache_size, args.probe_rate, exact)
    for v in result["variants"]:
        print_table(
            v["results"], COLUMNS, f"{v['variant']}: cold start {v['cold_start_s']} s, load {v['loadavg_at_start']}"
        )
        print(f"RSS ready {v['rss_ready_mb']} MiB, after load {v['rss_after_load_mb']} MiB")
    print(f"wrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
