"""`model.text_precision: bf16`: a bf16 copy of the text transformer for queries; everything else stays fp32."""

from __future__ import annotations

import logging

import numpy as np
import open_clip
import pytest
import torch

from clipsearch.encoder import ClipEncoder
from clipsearch.settings import ModelSettings

TEXTS = ["a red bicycle", "", "city at night with neon lights in the rain", "a " * 90, "dog", "foggy forest at dawn"]


@pytest.fixture(scope="module")
def bf16_encoder(tiny_model_settings: ModelSettings) -> ClipEncoder:
    return ClipEncoder(tiny_model_settings.model_copy(update={"text_precision": "bf16"})).load()


def test_default_is_fp32() -> None:
    assert ModelSettings().text_precision == "fp32"


def test_bf16_text_path_is_close_to_fp32(tiny_encoder: ClipEncoder, bf16_encoder: ClipEncoder) -> None:
    reference = tiny_encoder.encode_text(TEXTS)
    fast, truncated = bf16_encoder.encode_text_with_flags(TEXTS)
    assert fast.dtype == np.float32 and fast.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(fast * reference, axis=1)
    assert cosine.min() >= 0.999, cosine
    assert not np.array_equal(fast, reference)  # the bf16 tower really ran
    assert truncated == tiny_encoder.encode_text_with_flags(TEXTS)[1]


def test_bf16_leaves_model_images_padded_path_and_identity_alone(
    tiny_encoder: ClipEncoder, bf16_encoder: ClipEncoder
) -> None:
    assert bf16_encoder.identity == tiny_encoder.identity
    assert bf16_encoder.model.transformer.get_cast_dtype() == torch.float32
    np.testing.assert_array_equal(bf16_encoder.encode_text_padded(TEXTS), tiny_encoder.encode_text_padded(TEXTS))
    images = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    size = tiny_encoder.model.visual.preprocess_cfg["size"]
    images = torch.nn.functional.interpolate(images, size=size if isinstance(size, tuple) else (size, size))
    np.testing.assert_array_equal(bf16_encoder.encode_image_tensors(images), tiny_encoder.encode_image_tensors(images))


def test_bf16_is_ignored_for_an_fp16_model(caplog: pytest.LogCaptureFixture) -> None:
    from clipsearch.textual import bf16_text_tower, find_text_tower

    encoder = ClipEncoder(ModelSettings(arch="clipsearch-tiny", pretrained="random", device="cpu")).load()
    tower = find_text_tower(encoder.model, open_clip.get_tokenizer("clipsearch-tiny"))
    assert tower is not None
    with caplog.at_level(logging.INFO, logger="clipsearch.textual"):
        assert bf16_text_tower(tower, "fp16") is tower
    assert "ignored" in caplog.text
