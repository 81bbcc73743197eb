"""DVC stage `register`: register the evaluated index in MLflow as a new version with alias `challenger`.

The version is logged into the evaluation run, so its metrics travel with it and `promote` can compare a
challenger with the champion. The artifact registered is the verified `data/index` plus the evaluation
queries' embeddings (`reference_queries.npy`), which the service uses as the reference for drift reports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from clipsearch.cli_support import run_cli
from clipsearch.errors import ConfigError
from clipsearch.index.artifact import add_query_encoders, add_reference_queries, load_artifact
from clipsearch.registry import register_index
from clipsearch.settings import get_settings

# What `mlflow.pyfunc.load_model` needs to serve the registered model; pinned to this environment's versions.
RUNTIME_PACKAGES = (
    "torch",
    "torchvision",
    "open-clip-torch",
    "faiss-cpu",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "pydantic-settings",
    "mlflow",
)


QUERY_ENCODERS_DIR = Path("data/query_encoders")


def pinned_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_PACKAGES]


def main() -> None:
    settings = get_settings()
    reports = settings.evaluate.output_dir
    try:
        run = json.loads((reports / "mlflow_run.json").read_text())
        reference = np.load(reports / "reference_queries.npy")
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} is missing: run the evaluate stage first (`dvc repro evaluate`).") from exc
    artifact = load_artifact(settings.index.output_dir)
    if artifact.version != run["index_version"]:
        raise ConfigError(
            f"The evaluation run {run['run_id']} measured index {run['index_version']}, but data/index is now "
            f"{artifact.version}. Re-run evaluation (`dvc repro evaluate`) before registering."
        )
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        staged = Path(tmp) / "index"
        shutil.copytree(settings.index.output_dir, staged)
        add_reference_queries(staged, reference)
        encoders = QUERY_ENCODERS_DIR / "spec.json"
        if encoders.is_file():  # the export stage's query encoder: checksummed and identity-checked in the artifact
            spec = json.loads(encoders.read_text())
            add_query_encoders(staged, {n: (QUERY_ENCODERS_DIR / n).read_bytes() for n in spec["files"].values()}, spec)
        staged_artifact = load_artifact(staged)
        manifest = staged_artifact.manifest
        registered = register_index(
            settings.registry,
            staged,
            run_id=run["run_id"],
            tags={
                "index_version": staged_artifact.version,
                "source_index_version": artifact.version,
                "model_arch": manifest.model.arch,
                "model_pretrained": manifest.model.pretrained,
                "model_weights_sha256": manifest.model.weights_sha256,
                "dataset_version": manifest.dataset_version,
                "count": str(manifest.count),
                "index_kind": manifest.index.kind,
            },
            pip_requirements=pinned_requirements(),
        )
    out = reports / "registered.json"
    out.write_text(
        json.dumps(
            {
                "model_name": registered.name,
                "version": registered.version,
                "alias": registered.alias,
                "run_id": registered.run_id,
                "index_version": registered.tags.get("index_version"),
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"registered {registered.name} version {registered.version} as @{registered.alias} "
        f"(run {registered.run_id}); promote it with `clipsearch promote`"
    )


if __name__ == "__main__":
    run_cli(main)
