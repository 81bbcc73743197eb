"""Summarise `benchmarks/results/*.json` as the Markdown "target vs measured" table of docs/PERFORMANCE.md.

python -m benchmarks.report            # prints the table; paste it into docs/PERFORMANCE.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR


def _load(name: str, results_dir: Path) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    return next((r for r in rows if r["variant"] == variant), {})


def _best(rows: list[dict[str, Any]], family_prefix: str, key: str, max_value: float) -> dict[str, Any]:
    """The row of a family with the highest recall among those whose `key` latency is within `max_value`."""
    ok = [r for r in rows if r["variant"].startswith(family_prefix) and r[key] <= max_value]
    return max(ok, key=lambda r: (r["recall_at_10"], -r[key])) if ok else {}


def lines(results_dir: Path = RESULTS_DIR) -> list[str]:
    out = ["| target | measured | variant | parity / notes |", "|---|---|---|---|"]
    text = _load("text_encode", results_dir)
    if text:
        for v in ("padded", "eot", "eot-bf16", "eot-int8", "eot-bf16-1thread"):
            r = _row(text["variants"], v)
            if r:
                out.append(
                    f"| text encode p50 <= 10 ms | p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms | {v}, "
                    f"{r['threads']} thread(s) | cosine to padded fp32 >= {r['cos_min']} |"
                )
    for data in ("clustered", "diffuse"):
        s25 = _load(f"search_{data}_25000", results_dir)
        if s25:
            for v in ("exact numpy f32 (default)", "exact faiss f32", "exact faiss fp16"):
                r = _row(s25["results"], v)
                out.append(
                    f"| search 25K p50 <= 1 ms | p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms | {v} ({data}) | exact |"
                )
            for prefix in ("hnsw", "ivf"):
                r = _best(s25["results"], prefix, "p50_ms", 1.0)
                if r:
                    out.append(
                        f"| search 25K p50 <= 1 ms | p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms | {r['variant']} "
                        f"({data}) | recall@10 {r['recall_at_10']} |"
                    )
        s1m = _load(f"search_{data}_1000000", results_dir)
        if s1m:
            for prefix in ("ivf1024 flat", "ivf1024 sq8", "ivf1024 pq"):
                r = _best(s1m["results"], prefix, "p95_ms", 2.0)
                if r:
                    out.append(
                        f"| 1M p95 <= 2 ms @ recall@10 >= 0.95 | p95 {r['p95_ms']} ms, recall@10 {r['recall_at_10']} "
                        f"| {r['variant']} ({data}) | build {r['build_s']} s, {r['bytes_per_vector']} B/vector, "
                        f"{r['memory_mb']} MiB |"
                    )
    for name in ("service_fp32_numpy", "service_bf16_faiss"):
        svc = _load(name, results_dir)
        if not svc:
            continue
        batching = svc.get("service_batching", {})
        label = (
            f"{svc['text_precision']} text, exact {svc['exact_backend']}, "
            f"embedding cache {svc.get('embedding_cache_size', 'n/a')}, "
            f"micro-batch {batching.get('batch_max_size', 'off')}"
        )
        single = svc["results"][0]
        out.append(
            f"| service single client p95 <= 25 ms | p50 {single['p50_ms']} ms, p95 {single['p95_ms']} ms | {label} | |"
        )
        for r in svc["results"][1:]:
            out.append(
                f"| >= 60 req/s, p95 <= 100 ms, 0 errors | {r['completed_rps']} req/s of {r['offered_rps']:g} offered, "
                f"p95 {r['p95_ms']} ms, errors {r['errors']} | {label} | |"
            )
        out.append(
            f"| cold start <= 10 s | {svc['cold_start_s']} s | {label} | RSS ready {svc['rss_ready_mb']} MiB, "
            f"after load {svc['rss_after_load_mb']} MiB |"
        )
    rr = _load("rerank", results_dir)
    if rr:
        warm, _, hang = rr["overhead"]
        out.append(
            f"| re-rank overhead <= 30 ms | p50 {warm['p50_ms']} ms, p95 {warm['p95_ms']} ms | stand-in at 800 ms | |"
        )
        out.append(
            f"| hang: no reply later than budget + 50 ms | max {hang['max_ms']} ms past the {rr['budget_s']} s budget "
            f"| stand-in hangs | fallback {set(rr['hang_fallback_reasons'])} |"
        )
        est = rr["cost"]["estimate_real_gemini"]
        out.append(
            f"| cost vs seed ${rr['cost']['seed_cost_usd']} (goal ${rr['cost'].get('goal_cost_usd', 0.001)}) "
            f"| ${est['cost_usd']} per re-ranked request | "
            f"{rr['cost']['model']}, {rr['cost']['thumbnail_px']} px thumbnails | {est['basis']} |"
        )
    emb = _load("embed", results_dir)
    if emb:
        model = _row(emb["results"], "model only (preprocessed tensors)")
        for r in emb["results"]:
            if r["variant"].startswith("embed stage"):
                out.append(
                    f"| embed >= 90% of model-only | {r['images_per_s']} img/s = {r['ratio']:.0%} of "
                    f"{model['images_per_s']} img/s | {r['variant']}, {emb['arch']} CPU | |"
                )
    return out


def main() -> None:
    print("\n".join(lines()))


if __name__ == "__main__":
    main()
