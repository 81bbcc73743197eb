"""The query encoder an artifact carries: a torch-free tokenizer that matches open_clip, an exported text graph
that matches the torch encoder, the int8 parity gate, and the artifact's checksum and identity checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip.tokenizer
import pytest

from benchmarks.common import QUERIES
from clipsearch.bpe import ClipBpeTokenizer
from clipsearch.errors import ArtifactError
from clipsearch.index.artifact import add_query_encoders, load_artifact, write_artifact
from clipsearch.onnx_query import ArtifactTextEncoder
from clipsearch.query_encoders import SPEC, export_query_encoders, load_dir
from clipsearch.settings import IndexSettings, ModelSettings
from tests.unit.test_engine import _artifact

AWKWARD = [
    "",
    "Café  crème — naïve résumé",
    "  HTML &amp; entities &lt;b&gt; ",
    "emoji 🚲🌲 and 日本語 text",
    "don't you'll we've 1234 x-ray",
    "word " * 90,  # past the 77-token context
    "<start_of_text> literal <end_of_text> markers",
]


def test_bpe_tokenizer_matches_open_clip_without_torch() -> None:
    ours = ClipBpeTokenizer(Path(open_clip.tokenizer.default_bpe()))
    reference = open_clip.tokenizer.SimpleTokenizer()
    texts = list(QUERIES) + AWKWARD
    ids, truncated = ours(texts)
    assert ids.tolist() == reference(texts).tolist()
    assert truncated == [t == "word " * 90 for t in texts]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder):
    out = tmp_path_factory.mktemp("encoders")
    index_dir = _artifact(tmp_path_factory.mktemp("index"), tiny_encoder)
    index = load_artifact(index_dir).index
    spec = export_query_encoders(tiny_encoder, out, ModelSettings(onnx_quantize="none"), list(QUERIES[:8]), index)
    return out, spec, index_dir


def test_exported_encoder_matches_the_torch_encoder(exported, tiny_encoder) -> None:
    out, spec, _ = exported
    assert json.loads((out / SPEC).read_text()) == spec
    assert spec["model"] == tiny_encoder.identity.model_dump(mode="json")
    assert spec["text"]["precision"] == "fp32"
    onnx = ArtifactTextEncoder(spec, load_dir(out, spec))
    texts = [*QUERIES[:20], "word " * 90]
    ours, truncated = onnx.encode_text_with_flags(texts)
    theirs, their_truncated = tiny_encoder.encode_text_with_flags(texts)
    assert truncated == their_truncated
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert onnx.identity == tiny_encoder.identity


@pytest.mark.parametrize(("floor", "shipped"), [(0.0, "int8"), (1.0, "fp32")])
def test_int8_gate_ships_int8_only_within_the_floors(tmp_path, tiny_encoder, exported, floor, shipped) -> None:
    _, _, index_dir = exported
    index = load_artifact(index_dir).index
    settings = ModelSettings(onnx_quantize="int8", int8_min_cosine=floor, int8_min_top10_overlap=floor)
    spec = export_query_encoders(tiny_encoder, tmp_path, settings, list(QUERIES[:12]), index)
    gate = spec["int8_gate"]
    assert gate["requested"]
    assert gate["shipped"] == shipped
    assert spec["text"]["precision"] == shipped
    assert 0.0 < gate["min_cosine"] <= 1.0 + 1e-6
    assert 0.0 <= gate["top10_overlap"] <= 1.0
    assert gate["n_queries"] == 12
    assert gate["floors"] == {"min_cosine": floor, "top10_overlap": floor}
    if shipped == "fp32":
        assert not gate["passed"]
        assert "below the parity floor" in gate["reason"]
        assert "min cosine" in gate["reason"]
    else:
        assert gate["passed"]
    vectors = ArtifactTextEncoder(spec, load_dir(tmp_path, spec)).encode_text(["a red bicycle"])
    assert vectors.shape == (1, tiny_encoder.dim)
    assert abs(float(np.linalg.norm(vectors)) - 1.0) < 1e-5


def test_artifact_carries_checksummed_encoders_of_its_own_model(exported, tmp_path) -> None:  # noqa: ARG001
    out, spec, index_dir = exported
    files = load_dir(out, spec)
    manifest = add_query_encoders(index_dir, files, spec)
    assert manifest.query_encoders == spec
    assert set(spec["files"].values()) <= set(manifest.files)
    plain = load_artifact(index_dir)
    assert plain.query_encoder_blobs == {}  # not read unless asked for
    full = load_artifact(index_dir, query_encoders=True)
    assert set(full.query_encoder_blobs) == set(spec["files"].values())

    other = {**spec, "model": {**spec["model"], "weights_sha256": "0" * 64}}
    with pytest.raises(ArtifactError, match=r"exported from .* but the index .* was built with"):
        add_query_encoders(index_dir, files, other)

    graph = index_dir / spec["files"]["text_graph"]
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    load_artifact(index_dir)  # the encoder files are not read (nor verified) by a plain load...
    with pytest.raises(ArtifactError, match=r"text_tower\.onnx is corrupt"):
        load_artifact(index_dir, query_encoders=True)  # ...but are when they will be used


def test_write_artifact_then_add_keeps_index_settings(tmp_path, exported, tiny_encoder) -> None:  # noqa: ARG001
    out, spec, index_dir = exported
    art = load_artifact(index_dir)
    copy = tmp_path / "copy"
    write_artifact(copy, art.vectors, [str(i) for i in art.ids], art.metadata, art.manifest.model, IndexSettings(), "v")
    manifest = add_query_encoders(copy, load_dir(out, spec), spec)
    assert manifest.index.kind == "exact"
    assert manifest.count == len(art.ids)
