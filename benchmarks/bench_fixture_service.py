"""Single-client latency of `/search` (no re-rank) on the fixture index that `make fixture-run` registers.

The service pulls the champion from the fixture workspace's MLflow store (`.fixture-run/repo/mlflow.db`), with
the tiny CLIP trained on the fixture; this is the figure the service issue asks for. For ViT-B-32 at 25K see
`bench_service.py`.

    make fixture-run && python -m benchmarks.bench_fixture_service [--n 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import QUERIES, percentiles_ms, print_table, write_result
from clipsearch_devtools.processes import free_port, running

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=REPO / ".fixture-run" / "repo")
    parser.add_argument("--n", type=int, default=300, help="sequential requests, each query distinct")
    args = parser.parse_args()
    repo = args.workspace
    if not (repo / "mlflow.db").is_file():
        raise SystemExit(f"{repo / 'mlflow.db'} is missing: run `make fixture-run` first")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "CLIPSEARCH_PARAMS": str(repo / "params.yaml"),
            "CLIPSEARCH_SERVICE__CACHE_DIR": str(Path(tmp) / "cache"),
            "CLIPSEARCH_SERVICE__EMBEDDING_CACHE_SIZE": "0",
        }
        cmd = [
            str(BIN / "uvicorn"),
            "services.search.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        with running(cmd, f"{base}/readyz", Path(tmp) / "service.log", env=env, cwd=repo, timeout_s=120):
            latencies, server_total = [], []
            with httpx.Client(timeout=10) as client:
                for i in range(20):  # warm-up
                    client.get(f"{base}/search", params={"q": f"warm {i}", "rerank": "off"})
                for i in range(args.n):
                    query = f"{QUERIES[i % len(QUERIES)]} {i}"
                    start = time.perf_counter()
                    r = client.get(f"{base}/search", params={"q": query, "rerank": "off"})
                    latencies.append(time.perf_counter() - start)
                    r.raise_for_status()
                    server_total.append(r.json()["timings_ms"]["total"] / 1000.0)
            size = httpx.get(f"{base}/readyz").json()["index_size"]
    row = {
        "variant": f"single client, fixture index ({size} photos, clipsearch-tiny)",
        "n": args.n,
        **percentiles_ms(latencies),
        "server_total_p50_ms": percentiles_ms(server_total)["p50_ms"],
    }
    print_table([row], ["variant", "n", "p50_ms", "p95_ms", "p99_ms", "server_total_p50_ms"])
    write_result("service_fixture", {"results": [row]})


if __name__ == "__main__":
    main()
