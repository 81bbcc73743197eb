"""Extraction: embed-stage throughput (decode + preprocess + model + chunk writes) against the model alone.

The embed stage should hide JPEG decoding and file I/O behind the model (DataLoader workers run ahead), so
its images/s should be >= 90% of the model-only images/s on the same batches. Images are Unsplash-Lite-sized
(400 x 267) JPEGs written to a temporary data directory; the model is the real architecture with random
weights (same cost as pretrained). Model-only and stage runs alternate `--repeats` times so load from other
processes hits both alike.

    python -m benchmarks.bench_embed [--arch ViT-B-32] [--images 128] [--workers 0,1,2] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.common import print_table, write_result
from clipsearch.encoder import ClipEncoder
from clipsearch.settings import ModelSettings, Settings


def make_images(root: Path, n: int) -> list[str]:
    """`n` distinct 400x267 JPEGs under root/images and a photos table under root/lite."""
    (root / "lite").mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    base = np.asarray(
        Image.fromarray(rng.integers(0, 255, (27, 40, 3), dtype=np.uint8)).resize((400, 267), Image.Resampling.BICUBIC)
    )
    ids = [f"p{i:05d}" for i in range(n)]
    for i, photo_id in enumerate(ids):
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(root / "images" / f"{photo_id}.jpg", quality=90)
    pd.DataFrame({"photo_id": ids}).to_parquet(root / "lite" / "photos.parquet")
    return ids


def run(arch: str, n_images: int, workers: list[int], threads: int, batch_size: int, repeats: int) -> dict[str, Any]:
    from training.embed import embed

    torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="bench-embed-")) / "data"
    ids = make_images(root, n_images)
    settings = ModelSettings(arch=arch, pretrained="random", device="cpu", batch_size=batch_size)
    encoder = ClipEncoder(settings).load()
    images = [Image.open(root / "images" / f"{p}.jpg").convert("RGB") for p in ids]
    start = time.perf_counter()
    batch = torch.stack([encoder.preprocess(img) for img in images])
    preprocess_ips = n_images / (time.perf_counter() - start)
    encoder.encode_image_tensors(batch[:batch_size])  # warm-up
    model_ips: list[float] = []
    stage_ips: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(repeats):
        start = time.perf_counter()
        encoder.encode_image_tensors(batch)
        model_ips.append(n_images / (time.perf_counter() - start))
        for w in workers:
            s = Settings(
                dataset={"data_dir": root},
                model=settings.model_copy(update={"num_workers": w}).model_dump(),
                embed={"features_dir": root.parent / f"features-{w}-{r}", "chunk_size": 64},
            )
            stage_ips[w].append(embed(s, encoder=encoder).images_per_s)
    model_median = float(np.median(model_ips))
    rows: list[dict[str, Any]] = [
        {"variant": "preprocess only (1 process)", "images_per_s": round(preprocess_ips, 1)},
        {"variant": "model only (preprocessed tensors)", "images_per_s": round(model_median, 2), "ratio": 1.0},
    ]
    for w in workers:
        ips = float(np.median(stage_ips[w]))
        rows.append(
            {
                "variant": f"embed stage, num_workers={w}",
                "images_per_s": round(ips, 2),
                "ratio": round(ips / model_median, 3),
            }
        )
    return {
        "arch": arch,
        "threads": threads,
        "batch_size": batch_size,
        "images": n_images,
        "repeats": repeats,
        "gpu": None,
        "target_ratio": 0.9,
        "results": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]
    result = run(args.arch, args.images, workers, args.threads, args.batch_size, args.repeats)
    print_table(result["results"], ["variant", "images_per_s", "ratio"], f"embed throughput, {args.arch}, CPU")
    print(f"\nwrote {write_result('embed', result)}")


if __name__ == "__main__":
    main()
