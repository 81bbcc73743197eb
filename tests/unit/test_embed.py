"""The embed stage: chunk layout, shards, resume, refusal of another model's chunks, --shard parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ConfigError, DataFormatError
from clipsearch.features import FeatureChunk, chunk_path, list_chunks, read_chunk, write_chunk
from clipsearch.identity import ModelIdentity
from clipsearch.settings import ModelSettings, Settings
from training import embed as stage
from training.embed import Shard, embed, parse_shard

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 30
CHUNK_SIZE = 8


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`data/lite/photos.parquet` + `data/images/`: 30 good JPEGs, 1 corrupt file, 2 photos without a file."""
    monkeypatch.setenv("CLIPSEARCH_PARAMS", str(tmp_path / "no-params.yaml"))
    root = tmp_path / "data"
    (root / "lite").mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"photo{i:04d}x" for i in range(N_IMAGES)]
    for photo_id in ids:
        pixels = rng.integers(0, 255, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "images" / f"{photo_id}.jpg", quality=90)
    (root / "images" / "broken0001.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "images" / "stray.jpg.part").write_bytes(b"half")
    all_ids = [*ids, "broken0001", "nofile0001", "nofile0002"]
    pd.DataFrame({"photo_id": all_ids[::-1], "photo_url": "x"}).to_parquet(root / "lite" / "photos.parquet")
    return root


def _settings(data: Path, tiny_model_settings: ModelSettings, workers: int = 0) -> Settings:
    return Settings(
        dataset={"data_dir": data},
        model=tiny_model_settings.model_copy(update={"num_workers": workers, "batch_size": 5}).model_dump(),
        embed={"features_dir": data.parent / "features", "chunk_size": CHUNK_SIZE},
    )


def _expected_ids() -> list[str]:
    return sorted([*(f"photo{i:04d}x" for i in range(N_IMAGES)), "broken0001"])


def _all_covered(features: Path) -> list[str]:
    out: list[str] = []
    for path in list_chunks(features):
        out.extend(read_chunk(path).covered)
    return out


def test_parse_shard_accepts_i_of_n_and_explains_mistakes() -> None:
    assert parse_shard("0/1") == Shard(0, 1)
    assert parse_shard(" 3 / 8 ") == Shard(3, 8)
    for bad in ["", "1", "a/b", "2/2", "-1/2", "0/0", "1/2/3"]:
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_main_rejects_a_bad_shard_before_any_work() -> None:
    with pytest.raises(ConfigError, match="0 <= i < N"):
        stage.main(["--shard", "4/4"])


@pytest.mark.e2e
def test_bad_shard_on_the_command_line_is_a_clear_error() -> None:
    """The real CLI: one line on stderr, exit code 2, no traceback (a separate interpreter: slow to import torch)."""
    proc = subprocess.run(
        [sys.executable, "-m", "training.embed", "--shard", "4/4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLIPSEARCH_PARAMS": "/nonexistent/params.yaml"},
    )
    assert proc.returncode == 2
    assert "0 <= i < N" in proc.stderr and "Traceback" not in proc.stderr


def test_embed_writes_complete_chunks(
    data: Path, tiny_model_settings: ModelSettings, tiny_encoder: ClipEncoder
) -> None:
    settings = _settings(data, tiny_model_settings)
    summary = embed(settings, encoder=tiny_encoder)
    features = settings.embed.features_dir
    expected = _expected_ids()
    assert summary.chunks_written == [0, 1, 2, 3] and summary.images == N_IMAGES
    assert summary.skipped == ["broken0001"]
    assert [p.name for p in list_chunks(features)] == [f"chunk-{j:06d}.npz" for j in range(4)]
    assert not list(features.glob("*.part"))
    for j, path in enumerate(list_chunks(features)):
        chunk = read_chunk(path)
        assert chunk.covered == expected[j * CHUNK_SIZE : (j + 1) * CHUNK_SIZE]
        assert chunk.model == tiny_encoder.identity
        assert chunk.vectors.dtype == np.float32 and chunk.vectors.shape == (len(chunk.ids), 32)
        np.testing.assert_allclose(np.linalg.norm(chunk.vectors, axis=1), 1.0, atol=1e-5)
        images = [Image.open(data / "images" / f"{p}.jpg") for p in chunk.ids]
        np.testing.assert_allclose(chunk.vectors, tiny_encoder.encode_images(images), atol=1e-5)
    assert read_chunk(chunk_path(features, 0)).skipped_ids == ["broken0001"]
    # Plain numpy can read every member without pickle (what build_index relies on).
    with np.load(chunk_path(features, 1), allow_pickle=False) as raw:
        assert set(raw.files) == {"vectors", "ids", "skipped_ids", "model", "format_version"}
        assert raw["ids"].dtype.kind == "U"
    assert "images/s" in summary.describe()


def test_two_shards_cover_every_photo_exactly_once(
    data: Path, tiny_model_settings: ModelSettings, tiny_encoder: ClipEncoder
) -> None:
    settings = _settings(data, tiny_model_settings)
    first = embed(settings, Shard(0, 2), encoder=tiny_encoder)
    second = embed(settings, Shard(1, 2), encoder=tiny_encoder)
    assert first.chunks_written == [0, 2] and second.chunks_written == [1, 3]
    covered = _all_covered(settings.embed.features_dir)
    assert sorted(covered) == _expected_ids() and len(covered) == len(set(covered))


def test_rerun_writes_nothing_and_a_deleted_chunk_alone_is_redone(
    data: Path, tiny_model_settings: ModelSettings, tiny_encoder: ClipEncoder
) -> None:
    settings = _settings(data, tiny_model_settings)
    features = settings.embed.features_dir
    embed(settings, encoder=tiny_encoder)
    before = {p.name: p.stat().st_mtime_ns for p in list_chunks(features)}
    again = embed(settings, encoder=tiny_encoder)
    assert again.chunks_written == [] and again.images == 0 and again.chunks_already_done == 4
    assert {p.name: p.stat().st_mtime_ns for p in list_chunks(features)} == before
    chunk_path(features, 2).unlink()
    chunk_path(features, 1).write_bytes(b"torn")  # unreadable (not possible via .part+rename, but disks lie)
    redo = embed(settings, encoder=tiny_encoder)
    assert redo.chunks_written == [1, 2] and redo.images == 2 * CHUNK_SIZE
    assert sorted(_all_covered(features)) == _expected_ids()


def test_changed_image_set_redoes_shifted_chunks_and_drops_extra_ones(
    data: Path, tiny_model_settings: ModelSettings, tiny_encoder: ClipEncoder
) -> None:
    settings = _settings(data, tiny_model_settings)
    features = settings.embed.features_dir
    embed(settings, encoder=tiny_encoder)
    removed = [f"photo{i:04d}x" for i in range(7)]
    for photo_id in removed:
        (data / "images" / f"{photo_id}.jpg").unlink()  # 31 -> 24 photos: 3 chunks, all shifted
    summary = embed(settings, encoder=tiny_encoder)
    assert summary.chunks_written == [0, 1, 2]
    assert [p.name for p in list_chunks(features)] == [f"chunk-{j:06d}.npz" for j in range(3)]
    assert sorted(_all_covered(features)) == [p for p in _expected_ids() if p not in removed]


def test_chunks_from_another_model_are_refused(
    data: Path, tiny_model_settings: ModelSettings, tiny_encoder: ClipEncoder
) -> None:
    settings = _settings(data, tiny_model_settings)
    features = settings.embed.features_dir
    features.mkdir()
    other = ModelIdentity(arch="ViT-B-32", pretrained="openai", weights_sha256="ab" * 32, dim=2)
    write_chunk(
        chunk_path(features, 3),
        FeatureChunk(vectors=np.ones((1, 2), np.float32), ids=["x"], skipped_ids=[], model=other),
    )
    with pytest.raises(ConfigError) as info:
        embed(settings, Shard(0, 2), encoder=tiny_encoder)  # chunk 3 belongs to the other shard: still refused
    message = str(info.value)
    assert "another model" in message and "ViT-B-32/openai" in message and f"delete {features}" in message
    assert [p.name for p in list_chunks(features)] == ["chunk-000003.npz"]

    # What `dvc repro` asks for after a model change: the stale chunk goes, this model's chunks are written.
    replaced = embed(settings, encoder=tiny_encoder, replace_other_model=True)
    assert replaced.chunks_written == [0, 1, 2, 3]
    assert all(read_chunk(p).model == tiny_encoder.identity for p in list_chunks(features))


def test_decoding_in_worker_processes_gives_the_same_chunks(
    data: Path, tiny_model_settings: ModelSettings, tiny_encoder: ClipEncoder, tmp_path: Path
) -> None:
    inline = _settings(data, tiny_model_settings)
    embed(inline, encoder=tiny_encoder)
    workers = _settings(data, tiny_model_settings, workers=2)
    workers.embed.features_dir = tmp_path / "features-workers"
    summary = embed(workers, encoder=tiny_encoder)
    assert summary.skipped == ["broken0001"]
    for path in list_chunks(inline.embed.features_dir):
        a, b = read_chunk(path), read_chunk(workers.embed.features_dir / path.name)
        assert (a.ids, a.skipped_ids) == (b.ids, b.skipped_ids)
        np.testing.assert_array_equal(a.vectors, b.vectors)


def test_missing_download_is_a_clear_error(tmp_path: Path, tiny_model_settings: ModelSettings) -> None:
    settings = _settings(tmp_path / "data", tiny_model_settings)
    with pytest.raises(DataFormatError, match="run the download stage first"):
        embed(settings)
