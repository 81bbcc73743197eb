"""The feature-chunk format (clipsearch.features): names, round trip, format version, the photo list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsearch.errors import DataFormatError
from clipsearch.features import (
    FORMAT_VERSION,
    FeatureChunk,
    chunk_number,
    chunk_path,
    list_chunks,
    photos_with_images,
    read_chunk,
    read_chunk_model,
    write_chunk,
)
from clipsearch.identity import ModelIdentity

MODEL = ModelIdentity(arch="tiny", pretrained="random", weights_sha256="c" * 64, dim=4)


def _chunk(ids: list[str], skipped: list[str] | None = None) -> FeatureChunk:
    vectors = np.eye(4, dtype=np.float32)[: len(ids)]
    return FeatureChunk(vectors=vectors, ids=ids, skipped_ids=skipped or [], model=MODEL)


def test_round_trip_is_versioned_and_leaves_no_part_file(tmp_path: Path) -> None:
    path = chunk_path(tmp_path, 7)
    write_chunk(path, _chunk(["a", "c"], ["b"]))
    assert path.name == "chunk-000007.npz" and chunk_number(path) == 7
    assert not list(tmp_path.glob("*.part"))
    chunk = read_chunk(path)
    assert (chunk.ids, chunk.skipped_ids, chunk.model) == (["a", "c"], ["b"], MODEL)
    assert chunk.covered == ["a", "b", "c"] and chunk.covers_exactly(["a", "b", "c"])
    assert not chunk.covers_exactly(["a", "b"])
    assert read_chunk_model(path) == MODEL
    with np.load(path) as raw:
        assert int(raw["format_version"]) == FORMAT_VERSION


def test_another_format_version_is_refused(tmp_path: Path) -> None:
    path = chunk_path(tmp_path, 0)
    np.savez(
        path,
        vectors=np.zeros((0, 4), np.float32),
        ids=np.asarray([], dtype=str),
        model=np.asarray(MODEL.model_dump_json()),
        format_version=np.asarray(FORMAT_VERSION + 1),
    )
    with pytest.raises(DataFormatError, match=f"format {FORMAT_VERSION + 1}"):
        read_chunk(path)
    with pytest.raises(DataFormatError, match=f"format {FORMAT_VERSION + 1}"):
        read_chunk_model(path)


def test_list_chunks_skips_part_files_and_other_names(tmp_path: Path) -> None:
    for j in (2, 0, 10):
        write_chunk(chunk_path(tmp_path, j), _chunk(["a"]))
    (tmp_path / "chunk-000001.npz.part").write_bytes(b"half")
    (tmp_path / "notes.npz").write_bytes(b"x")
    assert [chunk_number(p) for p in list_chunks(tmp_path)] == [0, 2, 10]


def test_photos_with_images_is_sorted_unique_and_safe(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(b"x")
    ids = pd.Series(["c", "a", None, "a", "../c", "nofile", "b"], dtype="string")
    assert photos_with_images(ids, tmp_path) == ["a", "b", "c"]
    with pytest.raises(DataFormatError, match="run the download stage first"):
        photos_with_images(ids, tmp_path / "missing")
