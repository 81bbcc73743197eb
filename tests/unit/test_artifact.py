"""The index artifact: atomic write, verified load, refusal of anything corrupt, incomplete or foreign."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsearch import fileio
from clipsearch.errors import ArtifactError
from clipsearch.identity import ModelIdentity
from clipsearch.index import artifact as artifact_mod
from clipsearch.index.artifact import (
    FORMAT_VERSION,
    load_artifact,
    read_manifest,
    with_reference_queries,
    write_artifact,
)
from clipsearch.settings import IndexSettings

DIM = 16
MODEL = ModelIdentity(arch="tiny", pretrained="random", weights_sha256="a" * 64, dim=DIM)


def make_inputs(n: int = 60, seed: int = 0) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"photo{i:03d}" for i in range(n)]
    meta = pd.DataFrame(
        {
            "photo_id": ids,
            "image_url": [f"https://images.example/{i}" for i in ids],
            "description": [None if i % 3 == 0 else f"desc {i}" for i in range(n)],
            "photographer": [f"Ann {i}" for i in range(n)],
            "width": [4000 + i for i in range(n)],
            "height": [None if i == 1 else 3000 for i in range(n)],
            "blur_hash": ["LEHV6nWB2yk8" for _ in range(n)],
            "extra_column": 1,  # ignored: the artifact keeps the contract's columns only
        }
    )
    return x, ids, meta


@pytest.fixture
def built(tmp_path: Path) -> Path:
    x, ids, meta = make_inputs()
    write_artifact(tmp_path / "index", x, ids, meta, MODEL, IndexSettings(kind="exact"), "lite-1.2.0@abc")
    return tmp_path / "index"


def test_round_trip_exact_float16(built: Path) -> None:
    x, ids, _ = make_inputs()
    art = load_artifact(built, expected_model=MODEL)
    assert art.vectors.dtype == np.float16 and art.vectors.shape == (60, DIM)
    assert art.ids.tolist() == ids and art.ids.dtype.kind == "U"
    assert art.manifest.count == 60 and art.manifest.dim == DIM and art.manifest.metric == "cosine"
    assert art.manifest.format_version == FORMAT_VERSION
    assert art.manifest.created_at.tzinfo is not None
    assert set(art.manifest.files) == {"vectors.npy", "ids.npy", "metadata.parquet"}
    assert len(art.version) == 12 and art.version == read_manifest(built).version
    assert list(art.metadata.columns) == list(artifact_mod.METADATA_COLUMNS)
    top = art.search(x[7], 3)[0]
    assert [c.rank for c in top] == [1, 2, 3]
    assert top[0].photo_id == "photo007" and top[0].score == pytest.approx(1.0, abs=3e-3)
    assert top[0].image_url == "https://images.example/photo007" and top[0].width == 4007


def test_candidates_map_missing_values_to_none_and_drop_negative_rows(built: Path) -> None:
    art = load_artifact(built)
    cands = art.candidates_for(np.array([0, -1, 1]), np.array([0.9, 0.0, 0.8], dtype=np.float32))
    assert [c.photo_id for c in cands] == ["photo000", "photo001"]
    assert [c.rank for c in cands] == [1, 2]
    assert cands[0].description is None and cands[1].description == "desc 1"
    assert cands[1].height is None and cands[0].height == 3000
    assert art.row_of("photo042") == 42
    np.testing.assert_allclose(art.vector_of("photo042"), art.vectors[42].astype(np.float32))
    with pytest.raises(KeyError, match="not in index"):
        art.row_of("nope")


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    x, ids, meta = make_inputs()
    settings = IndexSettings(kind="exact", dtype="float32")
    a = write_artifact(tmp_path / "a", x, ids, meta, MODEL, settings, "v1")
    b = write_artifact(tmp_path / "b", x, ids, meta, MODEL, settings, "v1")
    c = write_artifact(tmp_path / "c", x[::-1], ids[::-1], meta.iloc[::-1], MODEL, settings, "v1")
    assert a.version == b.version != c.version


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_round_trip_faiss_kinds(tmp_path: Path, kind: str) -> None:
    x, ids, meta = make_inputs(n=400)
    settings = IndexSettings(kind=kind, dtype="float32", ivf_nlist=4, ivf_nprobe=4, hnsw_m=8)
    manifest = write_artifact(tmp_path / "idx", x, ids, meta, MODEL, settings, "v1")
    assert "faiss.index" in manifest.files and manifest.index.kind == kind
    art = load_artifact(tmp_path / "idx", MODEL)
    assert art.index.kind == kind and len(art.index) == 400
    assert art.search(x[:1], 5)[0][0].photo_id == "photo000"


def test_overwrite_replaces_atomically_and_leaves_no_temp_dirs(built: Path) -> None:
    x, ids, meta = make_inputs(n=30, seed=1)
    write_artifact(built, x, ids, meta, MODEL, IndexSettings(kind="exact"), "v2")
    assert load_artifact(built).manifest.count == 30
    assert sorted(p.name for p in built.parent.iterdir()) == ["index"]


def test_failed_write_keeps_the_old_artifact(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio, "fsync_path", boom)
    x, ids, meta = make_inputs(n=30, seed=1)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(built, x, ids, meta, MODEL, IndexSettings(kind="exact"), "v2")
    monkeypatch.undo()
    assert load_artifact(built).manifest.count == 60
    assert sorted(p.name for p in built.parent.iterdir()) == ["index"]


def test_corrupt_file_is_refused(built: Path) -> None:
    ids_path = built / "ids.npy"
    data = bytearray(ids_path.read_bytes())
    data[-1] ^= 0xFF
    ids_path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"ids\.npy is corrupt: sha256 .*dvc repro build_index"):
        load_artifact(built)


def test_missing_file_is_refused(built: Path) -> None:
    (built / "metadata.parquet").unlink()
    with pytest.raises(ArtifactError, match=r"metadata\.parquet is missing"):
        load_artifact(built)


def test_missing_manifest_is_refused(built: Path) -> None:
    (built / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="not an index artifact"):
        load_artifact(built)


def test_other_format_version_is_refused(built: Path) -> None:
    raw = json.loads((built / "manifest.json").read_text())
    raw["format_version"] = FORMAT_VERSION + 1
    (built / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="format_version 2 but this clipsearch reads format 1"):
        load_artifact(built)


def test_count_mismatch_is_refused(built: Path) -> None:
    raw = json.loads((built / "manifest.json").read_text())
    raw["count"] = 61
    (built / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"shape \(60, 16\), manifest says \(61, 16\)"):
        load_artifact(built)


def test_other_model_is_refused(built: Path) -> None:
    other = MODEL.model_copy(update={"weights_sha256": "b" * 64})
    with pytest.raises(ArtifactError, match=r"built with tiny/random .* serve it with the matching model"):
        load_artifact(built, expected_model=other)


def test_unnormalised_vectors_on_disk_are_refused(built: Path) -> None:
    # Rewrite vectors.npy with a scaled row and a manifest whose checksum matches: only the norm check can catch it.
    vectors = np.load(built / "vectors.npy")
    vectors[3] *= 2
    np.save(built / "vectors.npy", vectors)
    raw = json.loads((built / "manifest.json").read_text())
    raw["files"]["vectors.npy"] = artifact_mod._sha256((built / "vectors.npy").read_bytes())
    (built / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"row 3 has norm 1\.99"):
        load_artifact(built)
    assert load_artifact(built, verify=False).manifest.count == 60  # trusted reload skips the norm check


def test_inputs_are_validated(tmp_path: Path) -> None:
    x, ids, meta = make_inputs()
    settings = IndexSettings(kind="exact")
    with pytest.raises(ArtifactError, match="duplicate photo ids"):
        write_artifact(tmp_path / "i", x, ["same"] * 60, meta.assign(photo_id="same"), MODEL, settings, "v")
    with pytest.raises(ArtifactError, match="not L2-normalised"):
        write_artifact(tmp_path / "i", x * 3, ids, meta, MODEL, settings, "v")
    with pytest.raises(ArtifactError, match="same order"):
        write_artifact(tmp_path / "i", x, ids, meta.iloc[::-1], MODEL, settings, "v")
    with pytest.raises(ArtifactError, match="lacks columns"):
        write_artifact(tmp_path / "i", x, ids, meta.drop(columns="blur_hash"), MODEL, settings, "v")
    with pytest.raises(ArtifactError, match=r"shape \(n, 16\)"):
        write_artifact(tmp_path / "i", x[:, :8], ids, meta, MODEL, settings, "v")
    assert not (tmp_path / "i").exists()


def test_reference_queries_are_added_atomically(built: Path) -> None:
    before = read_manifest(built)
    queries = np.random.default_rng(9).normal(size=(5, DIM)).astype(np.float32)
    after = with_reference_queries(built, queries)
    assert "reference_queries.npy" in after.files and after.version != before.version
    assert after.created_at == before.created_at
    art = load_artifact(built, MODEL)
    np.testing.assert_array_equal(art.reference_queries, queries)
    assert sorted(p.name for p in built.parent.iterdir()) == ["index"]
    with pytest.raises(ArtifactError, match=r"shape \(n, 16\)"):
        with_reference_queries(built, queries[:, :3])
