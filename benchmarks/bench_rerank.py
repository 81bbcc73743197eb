"""Gemini re-rank: overhead beyond the model's own latency, the hard time budget, and tokens/dollars per request.

The real `GeminiReranker` (google-genai client, thumbnails, schema-constrained prompt, usage accounting) talks
to the local Gemini REST stand-in (`clipsearch_devtools/gemini_standin.py`) running in another process, as a remote
API would. The stand-in answers after a fixed `--latency` (800 ms by default); everything beyond that is
our overhead (thumbnails, JPEG encode, JSON, HTTP). A second stand-in that hangs checks that no call outlives
the budget by more than 50 ms. Tokens and dollars come from the same `usage_metadata` path the service uses;
the stand-in reports fixed token counts, so the real-Gemini estimate is computed beside them (258 tokens per
image with both sides <= 384 px, Gemini 2.x image tokenisation).

    python -m benchmarks.bench_rerank [--latency 0.8] [--calls 15]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import QUERIES, percentiles_ms, print_table, write_result
from clipsearch.rerank.gemini import GeminiReranker
from clipsearch.settings import RerankSettings
from clipsearch.types import Candidate

N_CANDIDATES = 10
SEED_COST_USD = 0.0031
GEMINI_IMAGE_TOKENS_SMALL = 258  # one image with both sides <= 384 px (Gemini 2.x); larger: 258 per 768 px tile


def gemini_image_tokens(width: int, height: int) -> int:
    """Tokens Gemini 2.x bills for one image: 258 up to 384x384, else 258 per 768x768 tile."""
    if width <= 384 and height <= 384:
        return GEMINI_IMAGE_TOKENS_SMALL
    return ((width + 767) // 768) * ((height + 767) // 768) * GEMINI_IMAGE_TOKENS_SMALL


def _serve(queue: Any, latency_s: float, hang_s: float) -> None:
    from clipsearch_devtools.gemini_standin import GeminiStandin, hang

    standin = GeminiStandin(hang(hang_s) if hang_s else None, latency_s=latency_s).start()
    queue.put(standin.base_url)
    time.sleep(3600)


def _start_standin(latency_s: float, hang_s: float = 0.0) -> tuple[Any, str]:
    queue: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_serve, args=(queue, latency_s, hang_s), daemon=True)
    proc.start()
    return proc, str(queue.get(timeout=60))


def _candidates(images_dir: Path) -> list[Candidate]:
    rng = np.random.default_rng(0)
    ids = [f"bench{i:02d}XyZ" for i in range(N_CANDIDATES)]
    for i in ids:  # Unsplash-Lite-sized photos (400 px wide), smooth enough to compress like photos
        base = rng.integers(0, 255, (27, 40, 3), dtype=np.uint8)
        Image.fromarray(base).resize((400, 267), Image.Resampling.BICUBIC).save(images_dir / f"{i}.jpg", quality=90)
    return [Candidate(photo_id=i, score=0.3, rank=n + 1, image_url="http://127.0.0.1:9/x") for n, i in enumerate(ids)]


def _reranker(settings: RerankSettings, images_dir: Path) -> GeminiReranker:
    reranker = GeminiReranker.from_settings(settings, images_dir)
    if reranker is None:  # pragma: no cover - the settings above always carry a key
        raise RuntimeError("GeminiReranker.from_settings returned None: no API key")
    return reranker


def run(latency_s: float, calls: int, budget_s: float, thumbnail_px: int) -> dict[str, Any]:
    images_dir = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    candidates = _candidates(images_dir)
    settings = RerankSettings(
        api_key="bench-key", budget_s=budget_s, thumbnail_px=thumbnail_px, response_cache_size=0, max_retries=0
    )
    rows: list[dict[str, Any]] = []
    proc, url = _start_standin(latency_s)
    try:
        reranker = _reranker(settings.model_copy(update={"base_url": url}), images_dir)
        t = time.perf_counter()
        outcome = reranker.rerank(QUERIES[0], candidates, 4)
        cold = time.perf_counter() - t - latency_s
        assert outcome.applied, outcome.fallback_reason
        usage = dict(outcome.usage or {})
        overheads = []
        for n in range(calls):
            t = time.perf_counter()
            outcome = reranker.rerank(QUERIES[1 + n % (len(QUERIES) - 1)], candidates, 4)
            overheads.append(time.perf_counter() - t - latency_s)
            assert outcome.applied, outcome.fallback_reason
        reranker.close()
    finally:
        proc.terminate()
    rows.append({"variant": f"stand-in {latency_s * 1000:.0f} ms, warm thumbnails", **percentiles_ms(overheads)})
    rows.append({"variant": "first call (cold thumbnails, new connection)", **percentiles_ms([cold])})

    proc, url = _start_standin(0.0, hang_s=budget_s + 5.0)
    try:
        reranker = _reranker(settings.model_copy(update={"base_url": url}), images_dir)
        late, reasons = [], []
        for n in range(5):
            t = time.perf_counter()
            outcome = reranker.rerank(QUERIES[n], candidates, 4)
            late.append(time.perf_counter() - t - budget_s)
            reasons.append(outcome.fallback_reason)
        reranker.close()
    finally:
        proc.terminate()
    rows.append({"variant": f"stand-in hangs; time past the {budget_s:.1f} s budget", **percentiles_ms(late)})

    thumb_w = thumbnail_px
    thumb_h = round(thumbnail_px * 267 / 400)
    image_tokens = N_CANDIDATES * gemini_image_tokens(thumb_w, thumb_h)
    text_tokens = 200  # instructions + query + 10 ids + schema, ~800 characters at ~4 characters per token
    output_tokens = 60  # a JSON list of 10 short ids
    real_cost = (image_tokens + text_tokens) * settings.price_input_per_mtok / 1e6 + (
        output_tokens * settings.price_output_per_mtok / 1e6
    )
    cost = {
        "model": settings.model,
        "thumbnail_px": thumbnail_px,
        "price_input_per_mtok": settings.price_input_per_mtok,
        "price_output_per_mtok": settings.price_output_per_mtok,
        "standin_usage": usage,
        "estimate_real_gemini": {
            "image_tokens": image_tokens,
            "text_tokens": text_tokens,
            "output_tokens": output_tokens,
            "cost_usd": round(real_cost, 6),
            "basis": f"258 tokens per image with both sides <= 384 px (Gemini 2.x); thumbnails are {thumb_w}x{thumb_h}",
        },
        "seed_cost_usd": SEED_COST_USD,
    }
    return {
        "latency_s": latency_s,
        "budget_s": budget_s,
        "overhead": rows,
        "overhead_median_ms": round(statistics.median(overheads) * 1000, 2),
        "hang_fallback_reasons": reasons,
        "target_overhead_ms": 30,
        "target_past_budget_ms": 50,
        "cost": cost,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.8, help="stand-in latency, seconds")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--budget", type=float, default=RerankSettings().budget_s)
    parser.add_argument("--thumbnail-px", type=int, default=RerankSettings().thumbnail_px)
    args = parser.parse_args(argv)
    result = run(args.latency, args.calls, args.budget, args.thumbnail_px)
    print_table(result["overhead"], ["variant", "n", "p50_ms", "p95_ms", "max_ms"], "re-rank overhead (ms)")
    c = result["cost"]
    est = c["estimate_real_gemini"]
    print(
        f"\nstand-in usage per request: {c['standin_usage'].get('prompt_tokens')} in / "
        f"{c['standin_usage'].get('output_tokens')} out tokens, ${c['standin_usage'].get('cost_usd', 0):.6f}"
    )
    print(
        f"real {c['model']} estimate at {c['thumbnail_px']} px: {est['image_tokens'] + est['text_tokens']} in / "
        f"{est['output_tokens']} out tokens = ${est['cost_usd']:.6f} per request (seed: ${c['seed_cost_usd']})"
    )
    print(f"\nwrote {write_result('rerank', result)}")


if __name__ == "__main__":
    main()
