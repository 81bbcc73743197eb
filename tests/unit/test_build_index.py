"""The build_index stage over synthetic feature chunks, photos table and image files in a tmp dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clipsearch.errors import ArtifactError
from clipsearch.identity import ModelIdentity
from clipsearch.index.artifact import load_artifact
from clipsearch.settings import Settings
from training import build_index as stage

DIM = 8
MODEL = ModelIdentity(arch="tiny", pretrained="random", weights_sha256="c" * 64, dim=DIM)
PHOTO_IDS = ["ph-a", "ph-b", "ph-c", "ph-d", "ph-e", "ph-f"]  # ph-c has no image file
WITH_IMAGES = ["ph-a", "ph-b", "ph-d", "ph-e", "ph-f"]
CHUNK = 2


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_chunk(
    features: Path, j: int, ids: list[str], *, skipped: list[str] | None = None, model: ModelIdentity = MODEL
) -> None:
    arrays: dict[str, Any] = {
        "vectors": unit_rows(len(ids), seed=j),
        "ids": np.asarray(ids, dtype=str),
        "model": np.asarray(model.model_dump_json()),
    }
    if skipped is not None:
        arrays["skipped_ids"] = np.asarray(skipped, dtype=str)
    np.savez(features / f"chunk-{j:06d}.npz", **arrays)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CLIPSEARCH_PARAMS", str(tmp_path / "no-params.yaml"))
    data = tmp_path / "data"
    (data / "lite").mkdir(parents=True)
    (data / "images").mkdir()
    (data / "features").mkdir()
    photos = pd.DataFrame(
        {
            "photo_id": pd.array(PHOTO_IDS[::-1], dtype="string"),  # unsorted on disk: the stage sorts
            "photo_image_url": [f"https://images.unsplash.com/{p}" for p in PHOTO_IDS[::-1]],
            "photo_width": pd.array([6000, 5000, 4000, None, 3000, 2000], dtype="Int64"),
            "photo_height": pd.array([4000] * 6, dtype="Int64"),
            "photo_description": pd.array([None, "A dog", None, "x", "y", "z"], dtype="string"),
            "ai_description": pd.array(["ai f", "ai e", "ai d", "ai c", "ai b", "ai a"], dtype="string"),
            "photographer_username": pd.array(["uf", "ue", "ud", "uc", "ub", "ua"], dtype="string"),
            "photographer_first_name": pd.array(["Fay", None, "Dee", "Cy", "Bo", "Al"], dtype="string"),
            "photographer_last_name": pd.array([None, None, "Doe", "C", "B", "A"], dtype="string"),
            "blur_hash": pd.array(["L1", "L2", "L3", "L4", None, "L6"], dtype="string"),
        }
    )
    photos.to_parquet(data / "lite" / "photos.parquet")
    (data / "lite" / "dataset.json").write_text(
        json.dumps({"version": "latest", "resolved_version": "1.3.0", "zip_sha256": "f" * 64, "limit": 6})
    )
    for p in WITH_IMAGES:
        (data / "images" / f"{p}.jpg").write_bytes(b"jpeg")
    return Settings.model_validate(
        {
            "dataset": {"data_dir": data},
            "embed": {"features_dir": data / "features", "chunk_size": CHUNK},
            "index": {"kind": "exact", "dtype": "float32", "output_dir": data / "index"},
        }
    )


def write_all_chunks(settings: Settings) -> None:
    features = settings.embed.features_dir
    write_chunk(features, 0, ["ph-a", "ph-b"])
    write_chunk(features, 1, ["ph-e"], skipped=["ph-d"])  # ph-d failed to decode during embedding
    write_chunk(features, 2, ["ph-f"], skipped=[])


def test_builds_a_verified_artifact_with_joined_metadata(settings: Settings) -> None:
    write_all_chunks(settings)
    result = stage.build(settings)
    assert result.n_chunks == 3
    assert result.n_skipped == 1
    art = load_artifact(settings.index.output_dir, expected_model=MODEL)
    assert art.ids.tolist() == ["ph-a", "ph-b", "ph-e", "ph-f"]
    assert art.manifest.dataset_version == "1.3.0@ffffffffffff/limit=6"
    meta = art.metadata.set_index("photo_id")
    assert meta.loc["ph-a", "description"] == "z"
    assert meta.loc["ph-f", "description"] == "ai f"
    assert meta.loc["ph-e", "photographer"] == "ue"  # no name -> username
    assert meta.loc["ph-f", "photographer"] == "Fay"
    assert meta.loc["ph-a", "photographer"] == "Al A"
    assert meta.loc["ph-a", "image_url"] == "https://images.unsplash.com/ph-a"
    assert meta.loc["ph-b", "blur_hash"] is None or pd.isna(meta.loc["ph-b", "blur_hash"])
    assert int(meta.loc["ph-e", "width"]) == 5000
    assert int(meta.loc["ph-f", "width"]) == 6000
    # chunk 0's first vector is ph-a's: searching with it finds ph-a first
    first = np.load(settings.embed.features_dir / "chunk-000000.npz")["vectors"][0]
    assert art.search(first, 1)[0][0].photo_id == "ph-a"


def test_main_prints_a_summary(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_all_chunks(settings)
    monkeypatch.setattr(stage, "get_settings", lambda: settings)
    stage.main()
    out = capsys.readouterr().out
    assert "4 vectors x 8" in out
    assert "3 chunks (1 photos skipped)" in out
    assert "tiny/random" in out


def test_missing_chunk_is_refused(settings: Settings) -> None:
    write_all_chunks(settings)
    (settings.embed.features_dir / "chunk-000002.npz").unlink()
    with pytest.raises(ArtifactError, match=r"lacks 1 of 3 chunks \(chunk-000002\.npz\).*dvc repro embed"):
        stage.build(settings)
    assert not settings.index.output_dir.exists()


def test_chunks_from_two_models_are_refused(settings: Settings) -> None:
    write_all_chunks(settings)
    other = MODEL.model_copy(update={"weights_sha256": "d" * 64})
    write_chunk(settings.embed.features_dir, 2, ["ph-f"], model=other)
    with pytest.raises(ArtifactError, match="all chunks must come from one model"):
        stage.build(settings)


def test_stale_chunk_is_refused(settings: Settings) -> None:
    write_all_chunks(settings)
    write_chunk(settings.embed.features_dir, 1, ["ph-c", "ph-d"])  # ph-c has no image any more, ph-e missing
    with pytest.raises(ArtifactError, match=r"missing e\.g\. \['ph-e'\], unexpected e\.g\. \['ph-c'\]"):
        stage.build(settings)


def test_extra_chunk_is_refused(settings: Settings) -> None:
    write_all_chunks(settings)
    write_chunk(settings.embed.features_dir, 3, ["zz"])
    with pytest.raises(ArtifactError, match="beyond the 3"):
        stage.build(settings)


def test_unreadable_chunk_is_refused(settings: Settings) -> None:
    write_all_chunks(settings)
    (settings.embed.features_dir / "chunk-000001.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"chunk-000001\.npz is unreadable"):
        stage.build(settings)


def test_no_features_dir(settings: Settings) -> None:
    settings.embed.features_dir.rmdir()
    with pytest.raises(ArtifactError, match="does not exist"):
        stage.build(settings)
