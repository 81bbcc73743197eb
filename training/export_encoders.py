"""DVC stage `export_encoders`: the query encoder the service runs without torch, exported from the very weights
that embedded the images, plus the int8 parity gate when `model.onnx_quantize: int8` (see
`clipsearch.query_encoders`). Writes `data/query_encoders/` (files + spec.json); `register` adds them to the
registered artifact (checksummed, identity-checked), and `evaluate` logs the gate to MLflow.

Usage: `python -m training.export_encoders` (settings from params.yaml / env).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ArtifactError
from clipsearch.index.artifact import load_artifact
from clipsearch.query_encoders import SPEC, export_query_encoders
from clipsearch.settings import Settings, get_settings

log = logging.getLogger("training.export_encoders")

OUTPUT_DIR = Path("data/query_encoders")


def parity_texts(settings: Settings, ids: list[str]) -> list[str]:
    """The evaluation queries (the judged set the evaluate stage scores), else the sample queries."""
    texts: list[str] = []
    try:
        from training.evaluate import load_judgments, load_tables

        conversions, keywords = load_tables(settings)
        queries, _ = load_judgments(settings, ids, conversions, keywords)
        texts = [q.query for q in queries]
    except Exception as exc:  # no judged data (a fresh checkout): the gate still runs on the sample queries
        log.warning("evaluation queries unavailable (%s); the int8 gate uses evaluate.sample_queries", exc)
    return texts or list(settings.evaluate.sample_queries)


def export(settings: Settings, out: Path = OUTPUT_DIR) -> dict:
    artifact = load_artifact(settings.index.output_dir)
    encoder = ClipEncoder.from_settings(settings.model.model_copy(update={"device": "cpu"})).load()
    if encoder.identity != artifact.manifest.model:
        raise ArtifactError(
            f"the index at {settings.index.output_dir} was built with {artifact.manifest.model.describe()} but "
            f"model settings load {encoder.identity.describe()}; re-run `dvc repro` so both come from one model"
        )
    texts = parity_texts(settings, [str(i) for i in artifact.ids])
    return export_query_encoders(encoder, out, settings.model, texts, artifact.index)


def main() -> None:
    configure_logging()
    settings = get_settings()
    started = time.perf_counter()
    spec = export(settings)
    gate = spec["int8_gate"]
    sizes = sum((OUTPUT_DIR / name).stat().st_size for name in spec["files"].values())
    print(
        f"exported the {spec['text']['precision']} text encoder of {spec['model']['arch']} to {OUTPUT_DIR} "
        f"({sizes / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f}s"
        + (f"; int8 gate: {gate['reason']}" if gate.get("requested") else "")
    )
    (OUTPUT_DIR / SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_cli(main)
