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
    out += service_lines(results_dir) + ann_lines(results_dir)
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


def service_lines(results_dir: Path = RESULTS_DIR) -> list[str]:
    """Rows of `bench_service --variants ...` (service.json): every variant side by side, targets of issue 12."""
    svc = _load("service", results_dir)
    if not svc:
        return []
    out = []
    for v in svc["variants"]:
        rows = {r["variant"]: r for r in v["results"]}
        single = rows.get("single client, sequential", {})
        hits = rows.get("cache hits, sequential", {})
        label = f"`{v['variant']}` ({', '.join(f'{k}={x}' for k, x in v['overrides'].items()) or 'settings defaults'})"
        load = f"load avg {v['loadavg_at_start'][0]}"
        out.append(
            f"| single client p95 <= 12 ms | p50 {single.get('p50_ms')} ms, p95 {single.get('p95_ms')} ms | {label} | {load} |"
        )
        out.append(f"| cache hit p95 <= 3 ms | p50 {hits.get('p50_ms')} ms, p95 {hits.get('p95_ms')} ms | {label} | |")
        for name, r in rows.items():
            if name.startswith("open loop"):
                out.append(
                    f"| >= 150 req/s at p95 <= 100 ms, 0 errors | {r['completed_rps']} of {r['offered_rps']:g} offered, "
                    f"p95 {r['p95_ms']} ms, errors {r['errors']}, shed {r.get('shed', 0)} | {label} | |"
                )
            elif name.startswith("capacity probe"):
                out.append(
                    f"| capacity (saturated, shedding on) | {r['completed_rps']} req/s completed of {r['offered_rps']:g} "
                    f"offered, admitted p95 {r.get('p95_ms')} ms, shed {r.get('shed')} (p95 {r.get('shed_p95_ms')} ms) "
                    f"| {label} | |"
                )
            elif name.startswith("overload"):
                out.append(
                    f"| 2x capacity: >= 95% of capacity done, admitted p95 <= 100 ms, shed <= 5 ms | "
                    f"{r['completed_rps']} req/s = {r.get('completed_over_capacity', 0):.0%} of capacity, admitted "
                    f"p95 {r.get('p95_ms')} ms, shed {r.get('shed')} (p50 {r.get('shed_p50_ms')} / p95 "
                    f"{r.get('shed_p95_ms')} ms), other errors {r['errors']} | {label} | |"
                )
        out.append(
            f"| cold start <= 3 s (registry pull -> ready, 25K) | {v['cold_start_s']} s | {label} | RSS ready "
            f"{v['rss_ready_mb']} MiB, after load {v['rss_after_load_mb']} MiB |"
        )
    size = _load("image_size", results_dir)
    if size:
        out.append(
            f"| `cpu` image without torch | site-packages {size['site_packages_mb_torch_free']} MB vs "
            f"{size['site_packages_mb_with_torch_no_cuda_libs']} MB with torch (CUDA libs and triton excluded; "
            f"{size['site_packages_mb_with_torch_cuda']} MB with them) | estimate from installed packages | no docker daemon here |"
        )
    return out


def ann_lines(results_dir: Path = RESULTS_DIR) -> list[str]:
    """Rows of `bench_ann` at 1M (diffuse data): every measured variant with recall >= 0.9."""
    out = []
    for name in ("ann_diffuse_1000000_run1", "ann_diffuse_1000000"):
        ann = _load(name, results_dir)
        if not ann:
            continue
        load = ann["machine"]["loadavg"][0]
        for r in ann["results"]:
            if r["recall_at_10"] >= 0.9:
                out.append(
                    f"| 1M diffuse: recall@10 >= 0.95 at p95 <= 2 ms, build <= 15 min | p50 {r['p50_ms']} ms, p95 "
                    f"{r['p95_ms']} ms, recall@10 {r['recall_at_10']} | {r['variant']} | build {r['build_s']} s, "
                    f"{r['bytes_per_vector']} B/vector; load avg {load} |"
                )
    return out


def main() -> None:
    print("\n".join(lines()))


if __name__ == "__main__":
    main()
