"""Soak: the search service at half its measured capacity for a long time; does anything creep?

Same set-up as `bench_service` (a real `mlflow server`, a registered artifact, `uvicorn services.search.app:app`
with ViT-B-32 random weights of the real architecture, re-ranking off, the service's default settings: embedding
cache, micro-batcher, drift window on). First a closed-loop probe measures capacity (completed req/s with 8
clients); then an open-loop generator offers half of that for `--minutes`, one window per minute, every query text
distinct. After each window: the service's resident memory (RSS) and open file descriptors, and that window's
latency percentiles (from the scheduled send time, so a backlog shows up).

Verdict, after the warm-up windows: RSS growth <= 5%, open fds flat (the last third's most <= the first third's
most + 4: sockets of requests in flight come and go, a leak grows every window), p99 stable (the last third's
worst window p99 <= 1.5 x the first third's), no errors.

    python -m benchmarks.bench_soak [--minutes 10] [--warmup 2] [--size 25000] [--rate R (default: capacity / 2)]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.bench_service import ARCH, BIN, REPO, _open_loop, _query, prepare, register
from benchmarks.common import print_table, write_result


def capacity(base_url: str, seconds: float = 20.0, clients: int = 8) -> float:
    """Completed requests per second with `clients` closed-loop clients (each sends when the last answered)."""

    async def run() -> int:
        done = 0
        deadline = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

            async def worker(w: int) -> None:
                nonlocal done
                i = 0
                while time.perf_counter() < deadline:
                    r = await client.get("/search", params={"q": _query(900_000 + w * 10_000 + i), "rerank": "off"})
                    r.raise_for_status()
                    done += 1
                    i += 1

            await asyncio.gather(*(worker(w) for w in range(clients)))
        return done

    return asyncio.run(run()) / seconds


FD_SLACK = 4  # open fds may differ by this much between the first and last third (in-flight sockets)


def verdict(windows: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    steady = windows[warmup:]
    if len(steady) < 3:
        return {"note": "too few windows after warm-up for a verdict"}
    rss = [w["rss_mb"] for w in steady]
    fds = [w["open_fds"] for w in steady]
    third = max(1, len(steady) // 3)
    p99_first = max(w["p99_ms"] for w in steady[:third])
    p99_last = max(w["p99_ms"] for w in steady[-third:])
    growth = (rss[-1] - rss[0]) / rss[0] * 100.0
    out = {
        "rss_growth_pct": round(growth, 2),
        "rss_ok": growth <= 5.0,
        "fds_range": [min(fds), max(fds)],
        # sockets of requests in flight come and go with the load; a leak grows window after window
        "fds_ok": max(fds[-third:]) <= max(fds[:third]) + FD_SLACK,
        "p99_first_third_ms": p99_first,
        "p99_last_third_ms": p99_last,
        "p99_ok": p99_last <= 1.5 * p99_first,
        "errors": sum(w["errors"] for w in windows),
    }
    out["pass"] = bool(out["rss_ok"] and out["fds_ok"] and out["p99_ok"] and out["errors"] == 0)
    return out


def run(minutes: int, warmup: int, size: int, rate: float | None, window_s: float) -> dict[str, Any]:
    import psutil

    from clipsearch_devtools.processes import free_port, mlflow_server, wait_http

    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    weights, index_dir = prepare(workdir, size, "numpy")
    with mlflow_server(workdir / "mlflow") as tracking_uri:
        register(tracking_uri, index_dir)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "CLIPSEARCH_PARAMS": str(workdir / "no-params.yaml"),
            "CLIPSEARCH_MODEL__ARCH": ARCH,
            "CLIPSEARCH_MODEL__PRETRAINED": str(weights),
            "CLIPSEARCH_MODEL__DEVICE": "cpu",
            "CLIPSEARCH_REGISTRY__TRACKING_URI": tracking_uri,
            "CLIPSEARCH_SERVICE__CACHE_DIR": str(workdir / "cache"),
            "CLIPSEARCH_RERANK__ENABLED": "false",
            "CLIPSEARCH_SERVICE__RATE_LIMIT_ENABLED": "false",  # one client sends everything here
        }
        env.pop("GEMINI_API_KEY", None)
        cmd = [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", str(port)]
        log = (workdir / "service.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            wait_http(f"{base_url}/readyz", 300, proc, workdir / "service.log")
            service = psutil.Process(proc.pid)
            measured = capacity(base_url)
            offered = rate or round(measured / 2, 1)
            print(f"capacity {measured:.1f} req/s (8 closed-loop clients); offering {offered} req/s", flush=True)
            windows = []
            for minute in range(minutes):
                row = asyncio.run(_open_loop(base_url, offered, window_s, offset=(minute + 1) * 1_000_000))
                row.update(
                    window=minute + 1,
                    rss_mb=round(service.memory_info().rss / 2**20, 1),
                    open_fds=service.num_fds(),
                    threads=service.num_threads(),
                )
                windows.append(row)
                print(
                    f"window {minute + 1}/{minutes}: {row['completed_rps']} req/s, p99 {row.get('p99_ms')} ms, "
                    f"RSS {row['rss_mb']} MiB, fds {row['open_fds']}, errors {row['errors']}",
                    flush=True,
                )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {
        "size": size,
        "arch": ARCH,
        "rerank": "off",
        "queries": "all distinct",
        "capacity_rps": round(measured, 1),
        "offered_rps": offered,
        "window_s": window_s,
        "minutes": minutes,
        "warmup_windows": warmup,
        "windows": windows,
        "verdict": verdict(windows, warmup),
        "p99_median_ms": float(np.median([w["p99_ms"] for w in windows[warmup:]])) if windows[warmup:] else None,
        "targets": {
            "rss_growth_pct": 5,
            "open_fds": f"flat (last third <= first third + {FD_SLACK})",
            "p99": "last third <= 1.5x first third",
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10, help="one-minute windows at the offered rate")
    parser.add_argument("--warmup", type=int, default=2, help="windows left out of the verdict")
    parser.add_argument("--size", type=int, default=25_000)
    parser.add_argument("--rate", type=float, default=None, help="offered req/s (default: measured capacity / 2)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument("--name", default="soak")
    args = parser.parse_args(argv)
    result = run(args.minutes, args.warmup, args.size, args.rate, args.window)
    cols = ["window", "n", "completed_rps", "errors", "p50_ms", "p99_ms", "max_ms", "rss_mb", "open_fds", "threads"]
    print_table(result["windows"], cols, f"soak at {result['offered_rps']} req/s (capacity {result['capacity_rps']})")
    print(f"verdict: {result['verdict']}")
    print(f"wrote {write_result(args.name, result)}")
    sys.exit(0 if result["verdict"].get("pass", True) else 1)


if __name__ == "__main__":
    main()
