"""Text-encoding latency per query (batch of one, as the service encodes) for several CPU variants.

Variants, all measured side by side in one process on the same 50 queries, interleaved round-robin so a
burst of load from another process hits every variant alike:

- `padded`: open_clip's own `encode_text` over the 77-token padded context (the seed's path).
- `eot`: `ClipEncoder.encode_text`, the transformer run only up to the end-of-text token (the default).
- `eot-bf16`: `eot` on a bf16 copy of the text transformer (`model.text_precision: bf16`).
- `eot-int8`: `eot` with the MLP Linear layers dynamically quantised to int8 through
  `torch.ao.quantization.quantize_dynamic` (deprecated API, so measured here only and not offered as a
  setting; attention projections are not quantisable this way).
- `onnx-fp32`: the same EOT-truncated tower in ONNX Runtime (`model.text_backend: onnx`).
- `onnx-int8`: `onnx-fp32` dynamically quantised to int8 (`model.onnx_quantize: int8`).
- `*-1thread`: one intra-op thread (what each of two service workers would get).

Parity is the cosine between each variant's embedding and the padded fp32 reference, min over the queries.
Random weights of the real architecture cost the same as pretrained ones; int8 parity on real weights can
be lower (outlier channels), so re-check it with real weights before enabling int8 in production.

The ONNX graphs are exported on the first run and cached (`model.onnx_cache_dir`, default
`~/.cache/clipsearch/onnx`); an ONNX Runtime session's thread count is fixed when it is created.

    python -m benchmarks.bench_text_encode [--arch ViT-B-32] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.common import QUERIES, percentiles_ms, print_table, write_result
from clipsearch.encoder import ClipEncoder
from clipsearch.settings import ModelSettings

Variant = tuple[ClipEncoder, Callable[[list[str]], np.ndarray], int]


def _int8_encoder(settings: ModelSettings) -> ClipEncoder:
    """An encoder whose text transformer's MLP Linear layers are dynamically quantised to int8 (bench only)."""
    encoder = ClipEncoder(settings).load()
    transformer = encoder.model.transformer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(transformer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    # open_clip reads the cast dtype from mlp.c_fc.weight, which a quantised Linear replaces by a method.
    transformer.get_cast_dtype = lambda: torch.float32
    return encoder


def _onnx_encoder(settings: ModelSettings, quantize: str, threads: int) -> ClipEncoder:
    """An encoder on the ONNX Runtime text backend whose session runs `threads` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the session takes its thread count from torch's at load
    try:
        onnx_settings = settings.model_copy(update={"text_backend": "onnx", "onnx_quantize": quantize})
        return ClipEncoder(onnx_settings).load()
    finally:
        torch.set_num_threads(previous)


def _variants(arch: str, threads: int) -> dict[str, Variant]:
    # torch variants pin the torch backend (`auto` would run ONNX Runtime on CPU); the onnx ones override it.
    base = ModelSettings(arch=arch, pretrained="random", device="cpu", precision="fp32", text_backend="torch")
    fp32 = ClipEncoder(base).load()
    bf16 = ClipEncoder(base.model_copy(update={"text_precision": "bf16"})).load()
    int8 = _int8_encoder(base)
    onnx_fp32 = _onnx_encoder(base, "none", threads)
    onnx_int8 = _onnx_encoder(base, "int8", threads)
    onnx_int8_1 = _onnx_encoder(base, "int8", 1)
    return {
        "padded": (fp32, fp32.encode_text_padded, threads),
        "eot": (fp32, fp32.encode_text, threads),
        "eot-bf16": (bf16, bf16.encode_text, threads),
        "eot-int8": (int8, int8.encode_text, threads),
        "eot-1thread": (fp32, fp32.encode_text, 1),
        "eot-bf16-1thread": (bf16, bf16.encode_text, 1),
        "onnx-fp32": (onnx_fp32, onnx_fp32.encode_text, threads),
        "onnx-int8": (onnx_int8, onnx_int8.encode_text, threads),
        "onnx-int8-1thread": (onnx_int8_1, onnx_int8_1.encode_text, 1),
    }


def run(arch: str, threads: int, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    variants = _variants(arch, threads)
    queries = list(QUERIES)
    reference = variants["padded"][0].encode_text_padded(queries)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _name, (_, fn, n_threads) in variants.items():  # warm-up: first-call allocations and kernel selection
        torch.set_num_threads(n_threads)
        for q in queries[:5]:
            fn([q])
    for _ in range(rounds):
        for q in queries:
            for name, (_, fn, n_threads) in variants.items():
                torch.set_num_threads(n_threads)
                start = time.perf_counter()
                fn([q])
                timings[name].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    rows = []
    for name, (_, fn, n_threads) in variants.items():
        vectors = np.concatenate([fn([q]) for q in queries])
        cosine = np.sum(vectors * reference, axis=1)
        rows.append(
            {
                "variant": name,
                "threads": n_threads,
                **percentiles_ms(timings[name]),
                "cos_min": round(float(cosine.min()), 6),
                "cos_mean": round(float(cosine.mean()), 6),
                "max_abs_diff": float(np.abs(vectors - reference).max()),
            }
        )
    tokens, _ = variants["eot"][0].tokenize(queries)
    return {
        "arch": arch,
        "weights": "random (same architecture and cost as pretrained)",
        "threads": threads,
        "rounds": rounds,
        "n_queries": len(queries),
        "mean_tokens": float((tokens.argmax(-1) + 1).float().mean()),
        "target_p50_ms": 10.0,
        "seed_p50_ms": 300.0,
        "variants": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 50 queries per variant")
    parser.add_argument("--name", default="text_encode", help="result file name under benchmarks/results/")
    args = parser.parse_args(argv)
    result = run(args.arch, args.threads, args.rounds)
    cols = ["variant", "threads", "n", "p50_ms", "p95_ms", "p99_ms", "cos_min", "max_abs_diff"]
    print_table(result["variants"], cols, f"text encode, {args.arch}, batch of 1, target p50 <= 10 ms")
    print(f"\nwrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
