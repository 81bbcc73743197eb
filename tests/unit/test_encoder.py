"""ClipEncoder: EOT-truncated text path == open_clip's padded path, identity, weight resolution, images."""

from __future__ import annotations

import json
import pickle
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipsearch import weights as weights_module
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ConfigError, ModelLoadError
from clipsearch.settings import ModelSettings
from clipsearch.weights import resolve_weights

WORDS = [
    "a",
    "dog",
    "cat",
    "red",
    "bicycle",
    "street",
    "rain",
    "foggy",
    "forest",
    "at",
    "dawn",
    "city",
    "night",
    "mountain",
    "lake",
    "portrait",
    "of",
    "woman",
    "man",
    "smiling",
    "coffee",
    "cup",
    "on",
    "wooden",
    "table",
    "aerial",
    "view",
    "beach",
    "sunset",
    "neon",
    "lights",
    "snow",
    "covered",
    "pine",
    "trees",
]


def _open_clip_reference(encoder: ClipEncoder, texts: list[str]) -> np.ndarray:
    """open_clip's own tokenizer + model.encode_text(normalize=True) on the full padded context."""
    tokens = open_clip.get_tokenizer(encoder.settings.arch)(texts)
    with torch.inference_mode():
        return encoder.model.encode_text(tokens, normalize=True).float().numpy()


def _queries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    # Mostly search-like lengths, some long ones that cross the 77-token context.
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 30, 90]))) for _ in range(n)]


EDGE_CASES = [
    "",
    "dog",
    "a " * 75,  # 75 BPE tokens + start + end = exactly 77: fits
    "a " * 76,  # one over: truncated
    "word " * 300,  # far over
    "  leading and trailing spaces  ",
    "UPPER case & punctuation!? ünïcödé 東京 🚲",
    "<|endoftext|> inside the text",
]


def test_tiny_config_is_registered_with_open_clip() -> None:
    assert "clipsearch-tiny" in open_clip.list_models()


def test_dim_and_context_are_known_without_loading(tiny_model_settings: ModelSettings) -> None:
    enc = ClipEncoder(tiny_model_settings)
    assert (enc.dim, enc.context_length) == (32, 77)
    assert not enc.is_loaded


def test_tokenize_matches_open_clip_and_reports_truncation(tiny_encoder: ClipEncoder) -> None:
    texts = [*EDGE_CASES, *_queries(50, seed=1)]
    tokens, truncated = tiny_encoder.tokenize(texts)
    assert torch.equal(tokens, open_clip.get_tokenizer("clipsearch-tiny")(texts))
    assert truncated[:5] == [False, False, False, True, True]
    tok = open_clip.get_tokenizer("clipsearch-tiny")
    assert truncated == [len(tok.encode(t)) + 2 > 77 for t in texts]
    assert tiny_encoder.tokenize([])[0].shape == (0, 77)


@pytest.fixture(scope="module")
def torch_encoder(tiny_model_settings: ModelSettings) -> ClipEncoder:
    """The tiny encoder on the torch text backend: the EOT-truncated path these tests pin down."""
    return ClipEncoder(tiny_model_settings.model_copy(update={"text_backend": "torch"})).load()


def test_truncated_text_path_equals_open_clip_tiny(torch_encoder: ClipEncoder) -> None:
    texts = [*EDGE_CASES, *_queries(200, seed=0)]
    fast = torch_encoder.encode_text(texts)  # batch_size 16: many batches of unequal EOT lengths
    reference = _open_clip_reference(torch_encoder, texts)
    assert fast.dtype == np.float32 and fast.shape == (len(texts), 32)
    np.testing.assert_allclose(fast, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(torch_encoder.encode_text_padded(texts), reference, atol=1e-6, rtol=0)
    # One at a time (the serving case) gives the same vectors as in a batch.
    singles = np.stack([torch_encoder.encode_text([t])[0] for t in texts[:20]])
    np.testing.assert_allclose(singles, reference[:20], atol=1e-5, rtol=0)


def test_encode_text_with_flags_and_empty_input(tiny_encoder: ClipEncoder) -> None:
    vectors, truncated = tiny_encoder.encode_text_with_flags(["a dog", "a " * 90])
    assert vectors.shape == (2, 32) and truncated == [False, True]
    assert tiny_encoder.encode_text([]).shape == (0, 32)
    np.testing.assert_array_equal(tiny_encoder.encode_text("a dog"), tiny_encoder.encode_text(["a dog"]))


def test_truncated_text_path_equals_open_clip_vit_b_32_random() -> None:
    enc = ClipEncoder(
        ModelSettings(arch="ViT-B-32", pretrained="random", device="cpu", batch_size=4, text_backend="torch")
    )
    texts = ["a red bicycle", "", "a " * 75, "city at night with neon lights in the rain", *_queries(6, seed=3)]
    np.testing.assert_allclose(enc.encode_text(texts), _open_clip_reference(enc, texts), atol=1e-5, rtol=0)
    assert enc.identity.dim == 512


def test_identity_is_deterministic_across_loads_and_processes(tiny_model_settings: ModelSettings) -> None:
    first = ClipEncoder(tiny_model_settings).identity
    second = ClipEncoder(tiny_model_settings).identity
    assert first == second
    assert (first.arch, first.pretrained, first.dim) == ("clipsearch-tiny", "random", 32)
    assert len(first.weights_sha256) == 64
    # A fresh interpreter (as a DVC stage would be) finds the tiny config and derives the same weights.
    code = (
        "from clipsearch.encoder import ClipEncoder; from clipsearch.settings import ModelSettings; "
        "print(ClipEncoder(ModelSettings(arch='clipsearch-tiny', pretrained='random', device='cpu')).identity"
        ".model_dump_json())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == first.model_dump()


def test_random_init_does_not_disturb_global_rng(tiny_model_settings: ModelSettings) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ClipEncoder(tiny_model_settings).load()
    assert torch.equal(torch.rand(3), expected)


def test_concurrent_first_use_loads_once(tiny_model_settings: ModelSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = open_clip.create_model

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(str(args[0]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(open_clip, "create_model", counting)
    enc = ClipEncoder(tiny_model_settings)
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(enc.identity.weights_sha256)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["clipsearch-tiny"]
    assert len(set(seen)) == 1 and len(seen) == 6


def test_local_checkpoint_path_loads_and_records_file_name(
    tiny_encoder: ClipEncoder, tiny_model_settings: ModelSettings, tmp_path: Path
) -> None:
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(tiny_encoder.model.state_dict(), path)
    enc = ClipEncoder(tiny_model_settings.model_copy(update={"pretrained": str(path)}))
    assert enc.identity.pretrained == "open_clip_pytorch_model.bin"
    assert enc.identity.weights_sha256 == tiny_encoder.identity.weights_sha256
    np.testing.assert_array_equal(enc.encode_text(["a dog"]), tiny_encoder.encode_text(["a dog"]))


def test_changed_weights_change_the_identity(
    tiny_encoder: ClipEncoder, tiny_model_settings: ModelSettings, tmp_path: Path
) -> None:
    state = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    state["ln_final.weight"][0] += 1e-3
    path = tmp_path / "tweaked.pt"
    torch.save(state, path)
    enc = ClipEncoder(tiny_model_settings.model_copy(update={"pretrained": str(path)}))
    assert enc.identity.weights_sha256 != tiny_encoder.identity.weights_sha256


def test_corrupt_checkpoint_is_a_clear_error(tiny_model_settings: ModelSettings, tmp_path: Path) -> None:
    path = tmp_path / "broken.bin"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelLoadError, match=r"could not build clipsearch-tiny from .*broken\.bin"):
        ClipEncoder(tiny_model_settings.model_copy(update={"pretrained": str(path)})).load()


def test_missing_checkpoint_file_is_a_clear_error(tiny_model_settings: ModelSettings, tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelLoadError, match="does not exist"):
        ClipEncoder(tiny_model_settings.model_copy(update={"pretrained": str(missing)})).load()


def test_unknown_tag_lists_the_valid_tags() -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_weights("ViT-B-32", "not-a-tag", cache_dir=None)
    message = str(info.value)
    assert "Valid tags for ViT-B-32" in message and "openai" in message and "laion2b_s34b_b79k" in message


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(ModelLoadError, match="ViT-B-32"):
        resolve_weights("ViT-B-23", "openai", cache_dir=None)


def test_unreachable_hub_fails_fast_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network (here: the hub endpoint is a closed loopback port) and nothing cached: a clear, quick error."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_loopback_port()}")
    settings = ModelSettings(arch="ViT-B-32", pretrained="openai", device="cpu", cache_dir=tmp_path / "cache")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        ClipEncoder(settings).load()
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "the weights for ViT-B-32/openai could not be downloaded" in message
    assert "CLIPSEARCH_MODEL__PRETRAINED=/path/to/open_clip_pytorch_model.bin" in message
    assert "params.yaml" in message and "ViT-B-32-quickgelu" in message


def _closed_loopback_port() -> int:
    """A loopback port that was just bound and released: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cached_hub_checkpoint_is_found_without_network(tmp_path: Path) -> None:
    """The huggingface cache layout (refs/main -> snapshots/<rev>/file) is read with local_files_only."""
    repo_dir = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    revision = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    found = weights_module._cached_checkpoint(cfg, str(tmp_path))
    assert found is not None and Path(found).read_bytes() == b"weights"
    assert weights_module._cached_checkpoint(cfg, str(tmp_path / "empty")) is None


def test_fp16_on_cpu_and_missing_cuda_are_config_errors(tiny_model_settings: ModelSettings) -> None:
    with pytest.raises(ConfigError, match="fp16"):
        ClipEncoder(tiny_model_settings.model_copy(update={"precision": "fp16"})).load()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            ClipEncoder(tiny_model_settings.model_copy(update={"device": "cuda"})).load()


def test_auto_device_and_precision(tiny_model_settings: ModelSettings) -> None:
    enc = ClipEncoder(tiny_model_settings.model_copy(update={"device": "auto", "precision": "auto"}))
    expected = ("cuda", "fp16") if torch.cuda.is_available() else ("cpu", "fp32")
    assert (enc.device.type, enc.precision) == expected


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (64, 64), (30, 50), (100, 80)]
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 4][::-1], 3), dtype=np.uint8), "RGB") for i in range(n)]


def test_image_encoding_is_batched_normalised_and_matches_open_clip(tiny_encoder: ClipEncoder) -> None:
    images = _images(37)  # more than one batch of 16, last batch partial
    vectors = tiny_encoder.encode_images(images)
    assert vectors.dtype == np.float32 and vectors.shape == (37, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    batch = torch.stack([tiny_encoder.preprocess(im) for im in images])
    np.testing.assert_allclose(tiny_encoder.encode_image_tensors(batch), vectors, atol=1e-6)
    with torch.inference_mode():
        reference = tiny_encoder.model.encode_image(batch, normalize=True).numpy()
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert tiny_encoder.encode_images([]).shape == (0, 32)
    # Grayscale and RGBA inputs go through the same transform.
    odd = [images[0].convert("L"), images[1].convert("RGBA")]
    assert tiny_encoder.encode_images(odd).shape == (2, 32)


def test_preprocess_is_picklable_for_dataloader_workers(tiny_encoder: ClipEncoder) -> None:
    restored = pickle.loads(pickle.dumps(tiny_encoder.preprocess))
    image = _images(1)[0]
    assert torch.equal(restored(image), tiny_encoder.preprocess(image))
    assert restored(image).shape == (3, 32, 32)


def test_warmup_runs(tiny_model_settings: ModelSettings) -> None:
    enc = ClipEncoder(tiny_model_settings)
    enc.warmup()
    assert enc.is_loaded
