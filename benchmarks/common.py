"""Shared helpers for the benchmark scripts: percentiles, the machine description, tables and JSON results.

Timings on shared machines are noisy, so every script compares its variants side by side in one run and
reports medians with p95/p99; nothing here is a pass/fail test. Each result file records the machine
(CPU count, load average, BLAS kernel as threadpoolctl sees it, the OpenBLAS environment variables) so a
figure can always be read against the conditions it was taken under.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# Fifty short, photo-search-like queries (mean ~8 tokens with start/end markers), shared by every benchmark.
QUERIES: tuple[str, ...] = (
    "a red bicycle", "a foggy forest at dawn", "city at night", "dog on the beach", "portrait of a smiling woman",
    "aerial view of a mountain lake", "coffee cup on a wooden table", "snow covered pine trees",
    "neon lights in the rain", "sunset over the ocean", "black and white street photography",
    "a cat sleeping on a sofa", "fresh fruit on a market stall", "people walking in a busy city street at night",
    "old car parked in front of a colorful wall", "hot air balloons", "minimalist white architecture",
    "desert sand dunes", "waterfall in a tropical jungle", "northern lights over mountains",
    "yoga on a beach at sunrise", "a bowl of ramen", "graffiti art", "misty morning in the countryside",
    "surfer riding a wave", "bride and groom", "skyscrapers from below", "autumn leaves on the ground",
    "a lone tree in a field", "starry night sky", "close up of a flower with water drops", "vintage camera",
    "child playing in the park", "train station", "laptop on a desk", "horse running in a field",
    "lighthouse on a cliff", "rainy window", "colorful umbrellas", "cozy cabin in the woods", "pizza",
    "bridge at night", "hands holding a cup of tea", "empty road through the desert", "kayak on a calm lake",
    "birthday cake with candles", "mountain climber on a ridge", "city skyline reflected in water",
    "a bookshelf full of books", "friends laughing around a campfire",
)  # fmt: skip


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max in milliseconds of durations given in seconds, plus the sample count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def time_calls(fn: Callable[[Any], object], inputs: Iterable[Any], warmup: int = 3) -> list[float]:
    """Durations (s) of `fn(x)` for each input, after calling it on the first `warmup` inputs untimed."""
    items = list(inputs)
    for x in items[:warmup]:
        fn(x)
    out = []
    for x in items:
        start = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - start)
    return out


def blas_info() -> list[dict[str, Any]]:
    """The BLAS/OpenMP libraries loaded in this process and the kernel each picked (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn/scipy stacks
        return []
    keys = ("user_api", "internal_api", "num_threads", "version", "architecture", "threading_layer", "prefix")
    return [{k: lib.get(k) for k in keys if k in lib} for lib in threadpool_info()]


def machine() -> dict[str, Any]:
    """What the figures were measured on (and how loaded the machine was when they were)."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    cpu_name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu_name or platform.processor(),
        "cpus_usable": cpus,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy": np.__version__,
        "openblas_env": {name: os.environ.get(name) for name in OPENBLAS_VARS},
        "blas": blas_info(),
    }


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write `payload` (plus the machine and a timestamp) to `<results_dir>/<name>.json`; return the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    document = {
        "benchmark": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    """A plain fixed-width table of `rows` (missing cells print as '-')."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def structured_vectors(
    n: int,
    dim: int,
    rank: int = 64,
    clusters: int = 1000,
    spread: float = 0.6,
    noise: float = 0.1,
    seed: int = 0,
    space_seed: int = 1234,
) -> np.ndarray:
    """L2-normalised float32 vectors clustered in a low-rank subspace plus isotropic noise, like CLIP embeddings.

    Real embeddings have low intrinsic dimension and topical clusters; isotropic Gaussians (or one Gaussian in a
    64-d subspace) have neither and are the worst case for every ANN index. Here: `clusters` topic centres in a
    random rank-`rank` subspace, each point a centre plus `spread` x a Gaussian in the subspace, plus `noise` x a
    Gaussian in all `dim` dimensions. Corpus and queries share `space_seed` (one embedding space) and differ in
    `seed` (which points). Generated in blocks, so 1M x 512 needs only the output's memory.
    """
    space = np.random.default_rng(space_seed)
    basis = (space.normal(size=(rank, dim)) / np.sqrt(rank)).astype(np.float32)
    centres = space.normal(size=(clusters, rank)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    block = 65536
    for start in range(0, n, block):
        m = min(block, n - start)
        coef = centres[rng.integers(0, clusters, size=m)] + spread * rng.standard_normal((m, rank), dtype=np.float32)
        x = coef @ basis + np.float32(noise) * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def recall_at_k(k: int, approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    hits = sum(len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_rows, exact_rows, strict=True))
    return hits / (k * len(exact_rows))


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB (this one by default)."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20
