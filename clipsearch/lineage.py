"""What data an evaluation (and so a registered index) was built from, for MLflow's dataset inputs.

The MLflow UI shows a run's dataset inputs beside its metrics; registering the index from that run then gives
lineage from model version to data: the Unsplash Lite release (as downloaded, from `data/lite/dataset.json`)
and DVC's content hash of the data directories (from `dvc.lock`, which `dvc repro` writes as each stage ends),
so two runs on the same bytes carry the same digest whatever machine made them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3 opens an experiment on its GenAI overview unless it is tagged as model development.
EXPERIMENT_KIND = "custom_model_development"


@dataclass(frozen=True)
class DatasetLineage:
    """Name, digest, source and tags of the data behind one evaluation run."""

    name: str
    digest: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)


def _dvc_hashes(lock_path: Path, outs: tuple[str, ...]) -> dict[str, str]:
    """DVC's md5 of each named output in dvc.lock ({} when there is no lock yet, e.g. outside `dvc repro`)."""
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") in outs and out.get("md5"):
                hashes[out["path"]] = str(out["md5"])
    return hashes


def dataset_lineage(data_dir: Path, lock_path: Path = Path("dvc.lock")) -> DatasetLineage:
    """The Unsplash Lite release and DVC hashes for `data_dir` (the download stage's dataset.json must exist)."""
    record: dict[str, Any] = json.loads((data_dir / "lite" / "dataset.json").read_text())
    version = str(record.get("resolved_version") or record.get("version") or "unknown")
    lite, images = f"{data_dir.as_posix()}/lite", f"{data_dir.as_posix()}/images"
    hashes = _dvc_hashes(lock_path, (lite, images))
    tags = {
        "unsplash_lite_version": version,
        "zip_sha256": str(record.get("zip_sha256", "")),
        "limit": str(record.get("limit")),
        **{f"dvc_md5:{path}": md5 for path, md5 in hashes.items()},
    }
    # DVC's hash of the tables when known (content of data/lite), else the zip's sha256: both name the bytes.
    digest = hashes.get(lite) or str(record.get("zip_sha256", ""))
    limit = record.get("limit")
    name = f"unsplash-lite-{version}" + (f"-first{limit}" if limit else "")
    return DatasetLineage(
        name=name, digest=digest[:36], source=str(record.get("resolved_url") or record.get("url")), tags=tags
    )
