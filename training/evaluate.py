"""DVC stage `evaluate`: run the SearchEngine over judged queries, write metrics.json, log everything to MLflow.

Judgments come from Unsplash Lite itself (conversions graded by distinct users, with a temporal hold-out,
plus user-confirmed keywords); see `clipsearch.relevance`. Retrieval is evaluated without the re-ranker (an
online component with its own budget and fallbacks), through the same `SearchEngine.search` the service calls,
so the latency recorded here is the served code path's.

Both retrieval modes are measured side by side on the same judged queries: `vector` (CLIP) and `hybrid` (CLIP
fused with the BM25 keyword index by RRF) when the artifact has a keyword index. Their metrics are logged as
`vector_<metric>` and `hybrid_<metric>`; the unprefixed metrics (which the promotion gate reads) are those of
the configured default mode, `search.mode`. The keyword index never sees the judgments (see
clipsearch.index.keyword), so the comparison is fair.

Query by example ("more like this") is scored beside the text metrics (`qbe_*`, see `training.evaluate_qbe`),
through the same `SearchEngine.search`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from clipsearch.cli_support import run_cli
from clipsearch.encoder import ClipEncoder
from clipsearch.engine import SearchEngine, load_engine
from clipsearch.errors import DataFormatError
from clipsearch.images import image_path
from clipsearch.lineage import dataset_lineage
from clipsearch.metrics import evaluate_rankings, latency_summary
from clipsearch.query import Query, SearchMode
from clipsearch.registry import client_for, flatten_params, registry_errors, use_experiment
from clipsearch.relevance import JudgedQuery, build_judgments, normalise_query
from clipsearch.settings import Settings, get_settings
from training.evaluate_qbe import evaluate_examples

log = logging.getLogger("training.evaluate")

METRICS_FILE = Path("metrics.json")
GRID_THUMB = 160


MAX_REFERENCE_QUERIES = 5000


def load_tables(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    lite = settings.dataset.data_dir / "lite"
    try:
        return pd.read_parquet(lite / "conversions.parquet"), pd.read_parquet(lite / "keywords.parquet")
    except FileNotFoundError as exc:
        raise DataFormatError(f"{exc.filename} is missing: run `dvc repro download` first.") from exc


def reference_queries(
    conversions: pd.DataFrame, keywords: pd.DataFrame, limit: int = MAX_REFERENCE_QUERIES
) -> list[str]:
    """What people search for (the drift reference): distinct conversion keywords, most frequent first, then
    the photo keywords, until `limit`.

    Drift compares live queries with this set, so it is taken from all conversions, not only the held-out
    judged queries: a reference of a few dozen queries would make every check noisy.
    """
    seen: dict[str, None] = {}
    for column in (conversions["keyword"], keywords["keyword"]):
        for query in column.dropna().astype(str).map(normalise_query).value_counts().index:
            if query and len(seen) < limit:
                seen.setdefault(query, None)
    return list(seen)


def load_judgments(
    settings: Settings, indexed_ids: list[str], conversions: pd.DataFrame, keywords: pd.DataFrame
) -> tuple[list[JudgedQuery], dict[str, Any]]:
    judgments = build_judgments(conversions, keywords, indexed_ids, settings.evaluate)
    if not judgments.queries:
        raise DataFormatError(
            "No judged queries could be built from conversions and keywords for the photos in the index. "
            "Lower evaluate.min_users / evaluate.min_positives, or index more photos (dataset.limit)."
        )
    return judgments.queries, judgments.describe()


def run_queries(
    engine: SearchEngine, queries: list[JudgedQuery], depth: int, mode: SearchMode = "vector"
) -> list[dict[str, Any]]:
    """Search every judged query through the engine in `mode`; keep the ranking and the per-stage timings."""

    def query(text: str) -> Query:
        return Query.from_text(text, k=depth, candidates=depth, mode=mode, rerank="off")

    engine.search(query("warm-up query"))
    rows = []
    for judged in tqdm(queries, desc=f"evaluate ({mode})", unit="query"):
        result = engine.search(query(judged.query))
        rows.append(
            {
                "query": judged.query,
                "ranked": [r.candidate.photo_id for r in result.results],
                "scores": [round(r.candidate.score, 5) for r in result.results],
                "relevant": judged.relevant,
                "timings_ms": result.timings_ms,
            }
        )
    return rows


def results_grid(engine: SearchEngine, queries: list[str], images_dir: Path, out: Path, k: int = 4) -> Path:
    """A PNG with one row per sample query: the query text and its top-k images (from the local image cache)."""
    label_w, pad = 260, 6
    grid = Image.new("RGB", (label_w + k * (GRID_THUMB + pad), len(queries) * (GRID_THUMB + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for row, query in enumerate(queries):
        y = pad + row * (GRID_THUMB + pad)
        draw.text((pad, y + GRID_THUMB // 2 - 6), query[:40], fill="black")
        for col, ranked in enumerate(engine.search_text(query, k=k, candidates=max(k, 10), rerank=False).results):
            path = image_path(images_dir, ranked.candidate.photo_id)
            x = label_w + col * (GRID_THUMB + pad)
            if path.is_file():
                with Image.open(path) as img:
                    thumb = img.convert("RGB")
                    thumb.thumbnail((GRID_THUMB, GRID_THUMB))
                    grid.paste(thumb, (x, y))
            draw.text((x + 3, y + 3), f"{ranked.candidate.score:.3f}", fill="yellow")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def log_dataset_input(data_dir: Path, engine: SearchEngine) -> None:
    """Record the indexed photos as the run's MLflow dataset input: Unsplash Lite version + DVC data hash."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    lineage = dataset_lineage(data_dir)
    photos = pd.DataFrame({"photo_id": [str(i) for i in engine.artifact.ids]})
    dataset = from_pandas(photos, source=HTTPDatasetSource(lineage.source), name=lineage.name, digest=lineage.digest)
    mlflow.log_input(dataset, context="evaluation", tags=lineage.tags)


QUERY_ENCODER_SPEC = Path("data/query_encoders/spec.json")


def log_query_encoder_gate(mlflow: Any) -> None:
    """The export stage's int8 parity gate (what it measured, what ships and why) on the evaluation run."""
    if not QUERY_ENCODER_SPEC.is_file():
        return
    spec = json.loads(QUERY_ENCODER_SPEC.read_text())
    gate = spec.get("int8_gate", {})
    mlflow.log_params({"query_encoder.precision": spec.get("text", {}).get("precision", "fp32")})
    if gate.get("requested"):
        mlflow.log_metrics(
            {"int8_min_cosine": float(gate["min_cosine"]), "int8_top10_overlap": float(gate["top10_overlap"])}
        )
        mlflow.set_tags({"int8_gate": "passed" if gate.get("passed") else "failed", "int8_gate_reason": gate["reason"]})


def mode_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Quality and latency of one mode's run."""
    quality = evaluate_rankings([(r["ranked"], r["relevant"]) for r in rows])
    latency = latency_summary([r["timings_ms"]["total"] for r in rows])
    encode = latency_summary([r["timings_ms"]["encode"] for r in rows])
    search = latency_summary([r["timings_ms"].get("search", 0.0) + r["timings_ms"].get("keyword", 0.0) for r in rows])
    return {
        **{k: round(float(v), 6) for k, v in quality.items()},
        **{f"latency_ms_{k}": round(float(v), 3) for k, v in latency.items()},
        **{f"encode_ms_{k}": round(float(v), 3) for k, v in encode.items() if k in ("p50", "p95")},
        **{f"search_ms_{k}": round(float(v), 3) for k, v in search.items() if k in ("p50", "p95")},
    }


QUALITY_KEYS = ("precision_at_4", "recall_at_10", "ndcg_at_4", "mrr")


def compare_modes(
    engine: SearchEngine, queries: list[JudgedQuery], depth: int, default_mode: SearchMode
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Run vector and (with a keyword index) hybrid; metrics as `<mode>_<metric>`, plus the default mode's
    unprefixed (what the promotion gate reads)."""
    modes: list[SearchMode] = ["vector"]
    if engine.artifact.keyword_index is not None:
        modes.append("hybrid")
    else:
        log.warning("the index has no keyword index: only vector mode is evaluated (index.keyword_index: true)")
    if default_mode not in modes:
        modes.append(default_mode)  # refuses clearly below if the index cannot serve it
    runs: dict[str, list[dict[str, Any]]] = {mode: run_queries(engine, queries, depth, mode) for mode in modes}
    per_mode = {mode: mode_metrics(rows) for mode, rows in runs.items()}
    metrics: dict[str, float] = dict(per_mode[default_mode])
    for mode, values in per_mode.items():
        metrics.update({f"{mode}_{k}": v for k, v in values.items()})
    return metrics, runs


def main() -> None:
    settings = get_settings()
    encoder = ClipEncoder.from_settings(settings.model)
    engine = load_engine(settings.index.output_dir, encoder, settings=settings.search)
    conversions, keywords = load_tables(settings)
    queries, judgment_info = load_judgments(settings, [str(i) for i in engine.artifact.ids], conversions, keywords)
    depth = max(settings.evaluate.candidates, 10)
    started = time.perf_counter()
    default_mode = settings.search.mode
    metrics, runs = compare_modes(engine, queries, depth, default_mode)
    rows = runs[default_mode]
    quality = {k: metrics[k] for k in QUALITY_KEYS if k in metrics}
    latency = {k.removeprefix("latency_ms_"): v for k, v in metrics.items() if k.startswith("latency_ms_")}
    metrics.update({"n_queries": len(rows), "index_size": len(engine.artifact.ids)})
    examples, example_rows = evaluate_examples(engine, conversions, keywords, depth)  # query by example
    metrics.update(examples)
    METRICS_FILE.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    out = settings.evaluate.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(
        json.dumps({"judgments": judgment_info, "default_mode": default_mode, "queries": rows, "modes": runs}, indent=1)
    )
    (out / "evaluation_examples.json").write_text(json.dumps({"examples": example_rows}, indent=1))
    sample = list(settings.evaluate.sample_queries) + [q.query for q in queries[:3]]
    grid = results_grid(engine, sample, settings.dataset.data_dir / "images", out / "results_grid.png")
    reference_texts = reference_queries(conversions, keywords) or [q.query for q in queries]
    reference = np.concatenate(
        [encoder.encode_text(reference_texts[i : i + 256]) for i in range(0, len(reference_texts), 256)]
    ).astype(np.float32)
    np.save(out / "reference_queries.npy", reference)

    with registry_errors(settings.registry, "log the evaluation run"):
        import mlflow

        client_for(settings.registry)
        use_experiment(settings.registry)
        with mlflow.start_run(run_name=f"evaluate-{engine.index_version}") as run:
            log_dataset_input(settings.dataset.data_dir, engine)
            mlflow.log_params(flatten_params(settings.model_dump(mode="json", exclude={"rerank", "service"})))
            mlflow.log_params(
                {
                    "index.version": engine.index_version,
                    "evaluate.modes": ",".join(runs),
                    **flatten_params(judgment_info, "judgments."),
                }
            )
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_artifact(str(grid))
            mlflow.log_artifact(str(out / "evaluation.json"))
            mlflow.log_artifact(str(out / "evaluation_examples.json"))
            mlflow.log_artifact(str(METRICS_FILE))
            log_query_encoder_gate(mlflow)
            mlflow.set_tags({"index_version": engine.index_version, "model": engine.artifact.manifest.model.describe()})
            run_id = run.info.run_id
    (out / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "index_version": engine.index_version}) + "\n")

    seconds = time.perf_counter() - started
    print(
        f"evaluated {len(rows)} queries in {seconds:.1f}s ({default_mode}, the gated mode): "
        + ", ".join(f"{k}={v:.4f}" for k, v in quality.items())
        + f", latency p50={latency['p50']:.2f} ms p95={latency['p95']:.2f} ms; MLflow run {run_id}"
    )
    print(side_by_side(metrics, list(runs)))
    if any(math.isnan(float(v)) for v in quality.values()):
        log.warning("some metrics are NaN: check the judged query set")


def side_by_side(metrics: dict[str, float], modes: list[str]) -> str:
    """A small table: one row per metric, one column per mode."""
    keys = [*QUALITY_KEYS, "latency_ms_p50", "latency_ms_p95"]
    lines = [f"{'metric':<16}" + "".join(f"{m:>10}" for m in modes)]
    for key in keys:
        lines.append(f"{key:<16}" + "".join(f"{metrics.get(f'{m}_{key}', float('nan')):>10.4f}" for m in modes))
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
