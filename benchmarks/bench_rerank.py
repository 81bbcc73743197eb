"""Gemini re-rank: overhead beyond the model's own latency, the hard time budget, and tokens/dollars per request.

The real `GeminiReranker` (google-genai client, thumbnails, schema-constrained prompt, usage accounting) talks
to the local Gemini REST stand-in (`tests/fixtures/gemini_standin.py`) running in another process, as a remote
API would. The stand-in answers after a fixed `--latency` (800 ms by default); everything beyond that is
our overhead (thumbnails, JPEG encode, JSON, HTTP). A second stand-in that hangs checks that no call outlives
the budget by more than 50 ms. Tokens and dollars come from the same `usage_metadata` path the service uses;
the stand-in reports fixed token counts, so the real-Gemini estimate is computed beside them for every model in
`rerank.models` (`clipsearch.rerank.cost`: 258 tokens per small image on Gemini 2.x, the `media_resolution`
budget on Gemini 3.x, each model's prices).

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
from clipsearch.rerank.cost import OUTPUT_TOKENS, TEXT_TOKENS, estimate, image_tokens_per_thumbnail
from clipsearch.rerank.gemini import GeminiReranker
from clipsearch.settings import RerankSettings
from clipsearch.types import Candidate

N_CANDIDATES = 10
SEED_COST_USD = 0.0031
GOAL_COST_USD = 0.001


def _serve(queue: Any, latency_s: float, hang_s: float) -> None:
    from tests.fixtures.gemini_standin import GeminiStandin, hang

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
    per_model = {}
    for name, profile in settings.models.items():
        est = estimate(profile, images=N_CANDIDATES)
        per_model[name] = {
            "image_tokens": est.image_tokens,
            "text_tokens": TEXT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "cost_usd": round(est.cost_usd, 6),
            "price_input_per_mtok": profile.price_input_per_mtok,
            "price_output_per_mtok": profile.price_output_per_mtok,
            "prices_read": profile.prices_read,
            "basis": f"{image_tokens_per_thumbnail(profile)} tokens per {thumb_w}x{thumb_h} thumbnail "
            f"(media_resolution {profile.media_resolution or 'not set'})",
        }
    cost = {
        "model": settings.model,
        "thumbnail_px": thumbnail_px,
        "standin_usage": usage,
        "estimate_real_gemini": per_model[settings.model],
        "estimate_per_model": per_model,
        "seed_cost_usd": SEED_COST_USD,
        "goal_cost_usd": GOAL_COST_USD,
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
    print(
        f"\nstand-in usage per request: {c['standin_usage'].get('prompt_tokens')} in / "
        f"{c['standin_usage'].get('output_tokens')} out tokens, ${c['standin_usage'].get('cost_usd', 0):.6f}"
    )
    for name, est in c["estimate_per_model"].items():
        mark = "default" if name == c["model"] else "       "
        print(
            f"{mark} {name} estimate at {c['thumbnail_px']} px: {est['image_tokens'] + est['text_tokens']} in / "
            f"{est['output_tokens']} out tokens = ${est['cost_usd']:.6f} per request "
            f"(goal ${c['goal_cost_usd']}, seed ${c['seed_cost_usd']})"
        )
    print(f"\nwrote {write_result('rerank', result)}")


if __name__ == "__main__":
    main()
