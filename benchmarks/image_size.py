"""Estimate the Python payload of the service images from the installed packages (no docker daemon here).

Walks the dependency closure of the project's runtime dependencies (pyproject.toml) through the installed
distributions' metadata and sums the sizes of their files in site-packages: for today's torch image, and for
the torch-free `cpu` image (the closure without torch, torchvision, open-clip-torch and onnxscript, which only
the pipeline needs). The interpreter (~75 MB) and the Debian slim base (~75 MB) are the same in both.

This venv's torch is the CUDA build; the CPU-only wheel the `cpu-torch` image installs is smaller, so the
script also reports the total without the nvidia-*/cuda-* libraries and triton (closer to today's `cpu` image;
the CUDA torch wheel itself is still larger than the CPU one, so it remains an upper bound).

    python -m benchmarks.image_size
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

REPO = Path(__file__).resolve().parents[1]
PIPELINE_ONLY = {"torch", "torchvision", "open-clip-torch", "onnxscript"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requires(dist: metadata.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        out.append(_name(req))
    return out


def closure(roots: list[str], exclude: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [r for r in roots if r not in exclude]
    while todo:
        name = todo.pop()
        if name in seen or name in exclude:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(r for r in _requires(dist) if r not in seen)
    return seen


def size_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        dist = metadata.distribution(name)
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20


def main() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    roots = [_name(d) for d in deps]
    full = closure(roots, set())
    slim = closure(roots, PIPELINE_ONLY)
    dropped = sorted(full - slim)
    cuda = {n for n in full if n.startswith(("nvidia-", "cuda-")) or n == "triton"}  # not in the CPU torch wheel
    result: dict[str, Any] = {
        "packages_with_torch": len(full),
        "packages_torch_free": len(slim),
        "site_packages_mb_with_torch_cuda": round(size_mb(full), 1),
        "site_packages_mb_with_torch_no_cuda_libs": round(size_mb(full - cuda), 1),
        "site_packages_mb_torch_free": round(size_mb(slim), 1),
        "dropped_packages": dropped,
        "dropped_mb": {n: round(size_mb({n}), 1) for n in dropped},
    }
    for key, value in result.items():
        if key != "dropped_mb":
            print(f"{key}: {value}")
    top = sorted(result["dropped_mb"].items(), key=lambda kv: -kv[1])[:8]
    print("largest dropped:", ", ".join(f"{n} {mb} MB" for n, mb in top))
    print(f"wrote {write_result('image_size', result)}")


if __name__ == "__main__":
    main()
