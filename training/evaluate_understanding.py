"""Score query understanding on the golden set with a real Gemini model, and log it to MLflow.

    GEMINI_API_KEY=... python -m training.evaluate_understanding [--golden PATH] [--no-mlflow]

Every request of training/understanding_golden.jsonl (first requests and follow-ups, with the composed query a
careful human would write) is read with `understand=on` through the service's own `GeminiUnderstander`
(same prompt, schema, validation, budget). Metrics: filters exact-match rate, term precision / recall / F1
(see clipsearch.understand.golden), the share understood (not fallen back), latency p50/p95 and cost. Written
to reports/understanding.json and logged to an MLflow run `evaluate-understanding-<model>`.

Without a key (GEMINI_API_KEY or rerank.api_key) there is nothing to score: it says so and exits 0, so a
pipeline without a key still runs; the plumbing itself is checked with the stand-in in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clipsearch.cli_support import run_cli
from clipsearch.errors import ConfigError
from clipsearch.registry import client_for, flatten_params, registry_errors, use_experiment
from clipsearch.rerank.gemini import API_KEY_ENV, resolve_api_key
from clipsearch.settings import get_settings
from clipsearch.understand.golden import load_golden, run_golden, summarise

log = logging.getLogger("training.evaluate_understanding")

GOLDEN = Path(__file__).with_name("understanding_golden.jsonl")
SKIP_MESSAGE = (
    f"understanding evaluation skipped: no Gemini key ({API_KEY_ENV} or rerank.api_key is not set). "
    f"Set {API_KEY_ENV} to score understanding on the golden set against the real model."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_understanding", description=__doc__)
    parser.add_argument("--golden", type=Path, default=GOLDEN, help="JSON-lines golden set (default: %(default)s)")
    parser.add_argument("--no-mlflow", action="store_true", help="Write the report only; log nothing to MLflow.")
    args = parser.parse_args(argv)
    settings = get_settings()
    if resolve_api_key(settings.rerank) is None:
        print(SKIP_MESSAGE, file=sys.stderr)
        return 0
    from clipsearch.understand.understander import GeminiUnderstander

    understand = settings.understand.model_copy(update={"enabled": True, "cache_size": 0})
    understander = GeminiUnderstander.from_settings(
        understand, settings.rerank, max_query_chars=settings.service.max_query_chars
    )
    if understander is None:  # pragma: no cover - the key was checked above
        raise ConfigError(SKIP_MESSAGE)
    items = load_golden(args.golden)
    try:
        rows = run_golden(understander, items)
    finally:
        understander.close()
    metrics = summarise(rows)
    model = understander.model_chain[0]
    out = settings.evaluate.output_dir
    out.mkdir(parents=True, exist_ok=True)
    report = out / "understanding.json"
    report.write_text(json.dumps({"model": model, "metrics": metrics, "requests": rows}, indent=1) + "\n")
    failures = sorted({str(r["reason"]) for r in rows if r["reason"]})
    run_id = None
    if not args.no_mlflow:
        with registry_errors(settings.registry, "log the understanding evaluation"):
            import mlflow

            client_for(settings.registry)
            use_experiment(settings.registry)
            with mlflow.start_run(run_name=f"evaluate-understanding-{model}") as run:
                mlflow.log_params(
                    {
                        "understand.model": model,
                        "golden.requests": len(items),
                        **flatten_params(
                            settings.understand.model_dump(exclude={"conversation_secret"}), "understand."
                        ),
                    }
                )
                mlflow.log_metrics({f"understanding_{k}": float(v) for k, v in metrics.items()})
                mlflow.log_artifact(str(report))
                mlflow.set_tags({"evaluation": "understanding", "model": model})
                run_id = run.info.run_id
    print(
        f"understanding on {len(items)} golden requests with {model}: "
        f"filters exact {metrics['filters_exact']:.3f}, term F1 {metrics['term_f1']:.3f}, "
        f"understood {metrics['understood_rate']:.3f}, latency p50 {metrics['latency_ms_p50']:.0f} ms "
        f"p95 {metrics['latency_ms_p95']:.0f} ms, ${metrics['cost_usd_per_understood']:.6f} per understood request"
        + (f"; fell back: {', '.join(failures)}" if failures else "")
        + (f"; MLflow run {run_id}" if run_id else "")
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
