"""The evaluation run's dataset input: Unsplash Lite release and DVC's hash of the data."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from clipsearch.lineage import dataset_lineage


def _record(data_dir: Path, **extra: object) -> None:
    (data_dir / "lite").mkdir(parents=True)
    record = {
        "url": "https://unsplash.com/data/lite/latest",
        "resolved_url": "https://x/unsplash-research-dataset-lite-1.2.1.zip",
        "version": "latest",
        "resolved_version": "1.2.1",
        "zip_sha256": "f" * 64,
        "limit": None,
        **extra,
    }
    (data_dir / "lite" / "dataset.json").write_text(json.dumps(record))


def test_lineage_names_the_release_and_uses_dvc_hashes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _record(data)
    lock = tmp_path / "dvc.lock"
    outs = [
        {"path": f"{data.as_posix()}/lite", "md5": "abc123.dir"},
        {"path": f"{data.as_posix()}/images", "md5": "def456.dir"},
    ]
    lock.write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"download": {"cmd": "python -m training.download", "outs": outs}}})
    )
    lineage = dataset_lineage(data, lock)
    assert lineage.name == "unsplash-lite-1.2.1"
    assert lineage.digest == "abc123.dir"
    assert lineage.source.endswith("lite-1.2.1.zip")
    assert lineage.tags["unsplash_lite_version"] == "1.2.1"
    assert lineage.tags[f"dvc_md5:{data.as_posix()}/images"] == "def456.dir"


def test_without_a_lock_the_zip_checksum_is_the_digest_and_a_subset_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _record(data, limit=2000)
    lineage = dataset_lineage(data, tmp_path / "missing.lock")
    assert lineage.digest == ("f" * 64)[:36]
    assert lineage.name == "unsplash-lite-1.2.1-first2000"
