"""Query images through ONNX Runtime (`model.query_image_backend`): the same vectors as the torch vision tower,
exported once per weights and reused; `torch` keeps PyTorch; the embed path (`encode_images`) stays torch."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipsearch.encoder import ClipEncoder
from clipsearch.onnx_visual import OnnxImageBackend


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(3)]


def test_onnx_query_images_match_torch(tiny_model_settings, onnx_cache_dir) -> None:
    encoder = ClipEncoder(tiny_model_settings).load()
    backend = encoder.query_image_backend
    assert isinstance(backend, OnnxImageBackend)
    assert backend.name == "onnx-fp32"
    assert backend.path.parent == onnx_cache_dir
    assert backend.path.name.startswith("clipsearch-visual-")
    images = _images()
    onnx = encoder.encode_query_images(images)
    torch_vectors = encoder.encode_images(images)
    assert onnx.shape == torch_vectors.shape
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(onnx * torch_vectors, axis=1))) > 0.9999
    again = ClipEncoder(tiny_model_settings).load().query_image_backend
    assert isinstance(again, OnnxImageBackend)
    assert again.path == backend.path  # reused from the cache, not exported again


def test_torch_choice_keeps_pytorch(tiny_model_settings) -> None:
    encoder = ClipEncoder(tiny_model_settings.model_copy(update={"query_image_backend": "torch"})).load()
    assert encoder.query_image_backend is encoder.image_backend
    assert encoder.encode_query_images([]).shape == (0, encoder.dim)


def test_int8_query_images_stay_close(tiny_model_settings) -> None:
    encoder = ClipEncoder(tiny_model_settings.model_copy(update={"query_image_quantize": "int8"})).load()
    assert encoder.query_image_backend.name == "onnx-int8"
    images = _images()
    cosine = np.sum(encoder.encode_query_images(images) * encoder.encode_images(images), axis=1)
    assert float(cosine.min()) > 0.98
