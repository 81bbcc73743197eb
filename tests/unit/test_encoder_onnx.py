"""`model.text_backend`: auto/onnx run the EOT-truncated text tower in ONNX Runtime (fp32, int8), export cached."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch import onnx_text
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ConfigError
from clipsearch.settings import ModelSettings
from clipsearch.textual import OnnxTextBackend

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Unequal lengths in one batch, an empty text and one cut at the 77-token context.
TEXTS = ["a red bicycle", "", "city at night with neon lights in the rain", "a " * 90, "dog", "foggy forest at dawn"]


@pytest.fixture(scope="module")
def onnx_cache(onnx_cache_dir: Path) -> Path:
    """The session's shared cache: the tiny model's fp32 graph is the one `auto` already uses."""
    return onnx_cache_dir


@pytest.fixture(scope="module")
def torch_encoder(tiny_model_settings: ModelSettings) -> ClipEncoder:
    """The reference: the same weights on the torch text backend."""
    return ClipEncoder(tiny_model_settings.model_copy(update={"text_backend": "torch"})).load()


def _onnx_settings(base: ModelSettings, cache: Path, quantize: str = "none") -> ModelSettings:
    return ModelSettings.model_validate(
        {**base.model_dump(), "text_backend": "onnx", "onnx_quantize": quantize, "onnx_cache_dir": cache}
    )


@pytest.fixture(scope="module")
def onnx_fp32(tiny_model_settings: ModelSettings, onnx_cache: Path) -> ClipEncoder:
    return ClipEncoder(_onnx_settings(tiny_model_settings, onnx_cache)).load()


@pytest.fixture(scope="module")
def onnx_int8(tiny_model_settings: ModelSettings, onnx_cache: Path) -> ClipEncoder:
    return ClipEncoder(_onnx_settings(tiny_model_settings, onnx_cache, "int8")).load()


def test_default_backend_is_auto_onnx_fp32_on_cpu(tiny_encoder: ClipEncoder) -> None:
    assert ModelSettings().text_backend == "auto"
    assert ModelSettings().onnx_quantize == "none"
    assert tiny_encoder.text_backend.name == "onnx-fp32"


def test_auto_picks_torch_for_bf16_and_when_onnx_is_missing(
    tiny_model_settings: ModelSettings, torch_encoder: ClipEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert torch_encoder.text_backend.name == "torch-fp32"
    bf16 = ClipEncoder(tiny_model_settings.model_copy(update={"text_precision": "bf16"}))
    assert bf16.text_backend.name == "torch-bf16"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    fallback = ClipEncoder(tiny_model_settings)
    assert fallback.text_backend.name == "torch-fp32"
    np.testing.assert_array_equal(fallback.encode_text(TEXTS), torch_encoder.encode_text(TEXTS))


def test_images_only_use_exports_nothing(tiny_model_settings: ModelSettings, tmp_path: Path) -> None:
    encoder = ClipEncoder(tiny_model_settings.model_copy(update={"onnx_cache_dir": tmp_path / "cache"})).load()
    encoder.encode_image_tensors(torch.zeros((1, *encoder.image_backend.input_shape)))
    assert not (tmp_path / "cache").exists()


def test_onnx_fp32_matches_torch_eot_path(torch_encoder: ClipEncoder, onnx_fp32: ClipEncoder) -> None:
    reference, ref_truncated = torch_encoder.encode_text_with_flags(TEXTS)
    vectors, truncated = onnx_fp32.encode_text_with_flags(TEXTS)
    assert isinstance(onnx_fp32.text_backend, OnnxTextBackend)  # the ONNX session really ran
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    np.testing.assert_allclose(vectors, reference, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert truncated == ref_truncated and truncated[3]


def test_onnx_batches_match_single_queries(onnx_fp32: ClipEncoder) -> None:
    """Each query alone (its own sequence length) gives the same vector as inside a mixed-length batch."""
    batch = onnx_fp32.encode_text(TEXTS)
    alone = np.concatenate([onnx_fp32.encode_text([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_onnx_int8_is_close_to_fp32(torch_encoder: ClipEncoder, onnx_int8: ClipEncoder) -> None:
    reference = torch_encoder.encode_text(TEXTS)
    vectors = onnx_int8.encode_text(TEXTS)
    cosine = np.sum(vectors * reference, axis=1)
    assert cosine.min() >= 0.99, cosine
    assert not np.allclose(vectors, reference, atol=1e-5)  # the quantised graph really ran


def test_onnx_keeps_identity_images_and_padded_path(torch_encoder: ClipEncoder, onnx_fp32: ClipEncoder) -> None:
    assert onnx_fp32.identity == torch_encoder.identity
    np.testing.assert_array_equal(onnx_fp32.encode_text_padded(TEXTS), torch_encoder.encode_text_padded(TEXTS))


def test_export_is_cached_and_reused(
    tiny_model_settings: ModelSettings, onnx_cache: Path, onnx_fp32: ClipEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(p.name for p in onnx_cache.iterdir())
    assert any(onnx_fp32.identity.weights_sha256[:20] in name and "-none-" in name for name in files), files
    assert not [name for name in files if name.startswith(".")], files  # no temporary file left behind

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(onnx_text, "export_text_graph", no_export)
    again = ClipEncoder(_onnx_settings(tiny_model_settings, onnx_cache)).load()
    np.testing.assert_array_equal(again.encode_text(TEXTS), onnx_fp32.encode_text(TEXTS))


def test_damaged_cache_entry_is_exported_again(tiny_model_settings: ModelSettings, tmp_path: Path) -> None:
    first = ClipEncoder(_onnx_settings(tiny_model_settings, tmp_path)).load()
    assert isinstance(first.text_backend, OnnxTextBackend)
    first.text_backend.path.write_bytes(b"not an onnx model")
    second = ClipEncoder(_onnx_settings(tiny_model_settings, tmp_path)).load()
    np.testing.assert_allclose(second.encode_text(TEXTS), first.encode_text(TEXTS), atol=1e-6)


def test_missing_onnxruntime_is_a_config_error(
    tiny_model_settings: ModelSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ConfigError, match=r"onnxruntime and onnxscript are dependencies"):
        ClipEncoder(_onnx_settings(tiny_model_settings, tmp_path)).encode_text(["a dog"])


@pytest.mark.e2e
def test_vit_b_32_onnx_parity(tmp_path: Path) -> None:
    """The real architecture (random weights): fp32 within 1e-4 of torch, int8 cosine >= 0.99."""
    base = ModelSettings(arch="ViT-B-32", pretrained="random", device="cpu", precision="fp32")
    reference = ClipEncoder(base.model_copy(update={"text_backend": "torch"})).encode_text(TEXTS)
    fp32 = ClipEncoder(_onnx_settings(base, tmp_path)).encode_text(TEXTS)
    np.testing.assert_allclose(fp32, reference, atol=1e-4)
    int8 = ClipEncoder(_onnx_settings(base, tmp_path, "int8")).encode_text(TEXTS)
    assert np.sum(int8 * reference, axis=1).min() >= 0.99
