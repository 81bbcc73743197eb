"""Query understanding: overhead beyond the model's own latency, the hard budget, and tokens/dollars per request.

The real `GeminiUnderstander` (google-genai client, prompt, response schema, validation, usage accounting) talks
to the local Gemini REST stand-in in another process, as a remote API would. The stand-in answers each golden
request with its expected composed query after a fixed `--latency`; everything beyond that is our overhead
(prompt and schema building, the SDK, HTTP on loopback, JSON, validation). A hanging stand-in checks how far past
the budget a call can run. Skipped (a few plain words) and cached requests are timed too: they make no call.

Cost: the stand-in reports fixed token counts, so the real-Gemini figure is estimated from what is actually sent
and received: characters of system instruction + request JSON + response schema, and of the golden answers, at
~4 characters a token, priced with each `rerank.models` profile.

    python -m benchmarks.bench_understand [--latency 0.3] [--calls 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles_ms, print_table, write_result
from clipsearch.settings import RerankSettings, UnderstandSettings
from clipsearch.understand.golden import load_golden
from clipsearch.understand.understander import (
    SYSTEM_INSTRUCTION,
    GeminiUnderstander,
    build_contents,
    build_request,
    response_schema,
)

GOLDEN = Path(__file__).resolve().parents[1] / "training" / "understanding_golden.jsonl"
CHARS_PER_TOKEN = 4


def _serve(queue: Any, latency_s: float, hang_s: float, answers: dict[str, Any]) -> None:
    from clipsearch_devtools.gemini_standin import GeminiStandin, hang

    standin = GeminiStandin(hang(hang_s) if hang_s else None, latency_s=latency_s).start()
    for request, answer in answers.items():
        standin.answer(request, answer)
    queue.put(standin.base_url)
    time.sleep(3600)


def _start_standin(latency_s: float, answers: dict[str, Any], hang_s: float = 0.0) -> tuple[Any, str]:
    ctx = mp.get_context("spawn")
    queue: Any = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(queue, latency_s, hang_s, answers), daemon=True)
    proc.start()
    return proc, str(queue.get(timeout=60))


def _understander(url: str, budget_s: float, cache: int = 0) -> GeminiUnderstander:
    rerank = RerankSettings(api_key="bench-key", base_url=url)
    return GeminiUnderstander(
        UnderstandSettings(budget_s=budget_s, cache_size=cache, max_retries=0), rerank, api_key="bench-key"
    )


def cost_estimate() -> dict[str, Any]:
    """Tokens and dollars of one understood request on each configured model, from the characters sent."""
    items = load_golden(GOLDEN)
    prompt_chars, answer_chars = [], []
    for item in items:
        request = build_request(
            item.request,
            today=date.today(),
            previous_terms=item.previous_terms,
            previous_filters=item.previous_filters,
            shown=item.shown,
        )
        user = build_contents(request)[0].parts[0].text or ""  # type: ignore[index]
        schema = json.dumps(response_schema(item.shown).model_dump(mode="json", exclude_none=True))
        prompt_chars.append(len(SYSTEM_INSTRUCTION) + len(user) + len(schema))
        answer_chars.append(len(json.dumps(item.expected)))
    prompt_tokens = round(statistics.mean(prompt_chars) / CHARS_PER_TOKEN)
    output_tokens = round(statistics.mean(answer_chars) / CHARS_PER_TOKEN)
    per_model = {}
    for name, p in RerankSettings().models.items():
        usd = (prompt_tokens * p.price_input_per_mtok + output_tokens * p.price_output_per_mtok) / 1e6
        per_model[name] = {
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "thinking_tokens": 0,
            "price_input_per_mtok": p.price_input_per_mtok,
            "price_output_per_mtok": p.price_output_per_mtok,
            "cost_usd": round(usd, 7),
        }
    return {
        "prompt_chars_mean": round(statistics.mean(prompt_chars)),
        "system_instruction_chars": len(SYSTEM_INSTRUCTION),
        "answer_chars_mean": round(statistics.mean(answer_chars)),
        "chars_per_token": CHARS_PER_TOKEN,
        "per_model": per_model,
    }


def run(latency_s: float, calls: int, budget_s: float) -> dict[str, Any]:
    items = load_golden(GOLDEN)
    answers = {i.request: i.expected for i in items}
    rows: list[dict[str, Any]] = []
    proc, url = _start_standin(latency_s, answers)
    try:
        u = _understander(url, budget_s)
        first = items[0]
        t = time.perf_counter()
        got = u.understand(first.request, mode="on")
        cold = time.perf_counter() - t - latency_s
        assert got.understood, got.reason
        usage = dict(got.usage)
        overheads = []
        for n in range(calls):
            item = items[n % len(items)]
            t = time.perf_counter()
            got = u.understand(
                item.request,
                mode="on",
                previous_terms=item.previous_terms,
                previous_filters=item.previous_filters,
                shown=item.shown,
            )
            overheads.append(time.perf_counter() - t - latency_s)
            assert got.understood, (got.reason, got.detail)
        u.close()
        cached = _understander(url, budget_s, cache=64)
        cached.understand(first.request, mode="on")
        hits = []
        for _ in range(200):
            t = time.perf_counter()
            assert cached.understand(first.request).cached
            hits.append(time.perf_counter() - t)
        skips = []
        for _ in range(200):
            t = time.perf_counter()
            assert cached.understand("red bicycle").reason == "not_needed"
            skips.append(time.perf_counter() - t)
        cached.close()
    finally:
        proc.terminate()
    rows.append({"variant": f"stand-in {latency_s * 1000:.0f} ms: overhead beyond it", **percentiles_ms(overheads)})
    rows.append({"variant": "first call (new connection)", **percentiles_ms([cold])})
    rows.append({"variant": "cache hit (no call)", **percentiles_ms(hits)})
    rows.append({"variant": "skipped: a few plain words (no call)", **percentiles_ms(skips)})

    proc, url = _start_standin(0.0, answers, hang_s=budget_s + 5.0)
    try:
        u = _understander(url, budget_s)
        late, reasons = [], []
        for n in range(5):
            t = time.perf_counter()
            got = u.understand(items[n].request, mode="on")
            late.append(time.perf_counter() - t - budget_s)
            reasons.append(got.reason)
        u.close()
    finally:
        proc.terminate()
    rows.append({"variant": f"stand-in hangs; time past the {budget_s:.1f} s budget", **percentiles_ms(late)})
    return {
        "latency_s": latency_s,
        "budget_s": budget_s,
        "calls": calls,
        "overhead": rows,
        "overhead_p50_ms": round(statistics.median(overheads) * 1000, 2),
        "overhead_p95_ms": round(sorted(overheads)[max(0, round(0.95 * (len(overheads) - 1)))] * 1000, 2),
        "hang_fallback_reasons": reasons,
        "standin_usage": usage,
        "cost": cost_estimate(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.3, help="stand-in latency, seconds")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--budget", type=float, default=UnderstandSettings().budget_s)
    args = parser.parse_args(argv)
    result = run(args.latency, args.calls, args.budget)
    print_table(result["overhead"], ["variant", "n", "p50_ms", "p95_ms", "max_ms"], "understanding overhead (ms)")
    c = result["cost"]
    for name, est in c["per_model"].items():
        print(
            f"{name}: ~{est['prompt_tokens']} in / ~{est['output_tokens']} out tokens = "
            f"${est['cost_usd']:.7f} per understood request"
        )
    print(f"\nwrote {write_result('understand', result)}")


if __name__ == "__main__":
    main()
