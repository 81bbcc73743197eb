"""The trained test-only CLIP: real retrieval quality through the real `ClipEncoder`, determinism, caching."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss
from PIL import Image

from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ConfigError, DataFormatError
from clipsearch.settings import ModelSettings
from clipsearch_devtools import tiny_clip
from clipsearch_devtools.unsplash_lite import THEMES, FixtureInfo, build_fixture
from tests.conftest import ServedFixture

K = 4


def _encoder(checkpoint: Path) -> ClipEncoder:
    return ClipEncoder(
        ModelSettings(arch="clipsearch-tiny", pretrained=str(checkpoint), device="cpu", precision="fp32", batch_size=64)
    )


def _precision_at_k_by_query(encoder: ClipEncoder, info: FixtureInfo) -> dict[str, float]:
    """P@4 of every theme search keyword: the share of its top 4 photos that belong to its theme."""
    images = []
    for pid in info.photo_ids:
        with Image.open(info.images_dir / f"{pid}.jpg") as img:
            images.append(img.convert("RGB"))
    vectors = encoder.encode_images(images)
    queries = {keyword: theme.name for theme in THEMES for keyword in theme.search_keywords}
    scores = vectors @ encoder.encode_text(list(queries)).T  # (photos, queries)
    result: dict[str, float] = {}
    for column, (keyword, theme) in enumerate(queries.items()):
        top = np.argsort(-scores[:, column], kind="stable")[:K]
        result[keyword] = sum(info.theme_of[info.photo_ids[i]] == theme for i in top) / K
    return result


def test_trained_checkpoint_finds_each_themes_photos_and_random_weights_do_not(
    unsplash_fixture_server: ServedFixture, tiny_clip_checkpoint: Path, tiny_encoder: ClipEncoder
) -> None:
    info = unsplash_fixture_server.info
    trained = _precision_at_k_by_query(_encoder(tiny_clip_checkpoint), info)
    random = _precision_at_k_by_query(tiny_encoder, info)
    trained_mean, random_mean = float(np.mean(list(trained.values()))), float(np.mean(list(random.values())))
    assert trained_mean >= 0.9, trained
    assert min(trained.values()) >= 0.5, trained  # every query, not just most of them
    assert random_mean <= 0.35, random  # chance is 1/8
    assert trained_mean - random_mean >= 0.5


def test_checkpoint_identity_is_stable_and_not_the_random_one(
    tiny_clip_checkpoint: Path, tiny_encoder: ClipEncoder, tmp_path: Path
) -> None:
    first, again = _encoder(tiny_clip_checkpoint).identity, _encoder(tiny_clip_checkpoint).identity
    assert first == again
    assert first.pretrained == tiny_clip_checkpoint.name
    assert first.dim == 32
    assert first.weights_sha256 != tiny_encoder.identity.weights_sha256
    copy = tmp_path / tiny_clip_checkpoint.name
    shutil.copyfile(tiny_clip_checkpoint, copy)
    assert _encoder(copy).identity == first  # the checksum is of the weights, not of where the file lies


@pytest.fixture(scope="module")
def small_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-photo fixture for the tests that train more than once."""
    root = tmp_path_factory.mktemp("small-lite")
    build_fixture(root, n_photos=40, seed=3)
    return root


def test_training_is_deterministic_and_leaves_torch_settings_alone(small_fixture: Path, tmp_path: Path) -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng_state = torch.random.get_rng_state()
    a = tiny_clip.train_tiny_clip(small_fixture, tmp_path / "a.pt", steps=4, seed=1)
    b = tiny_clip.train_tiny_clip(small_fixture, tmp_path / "sub" / "b.pt", steps=4, seed=1)
    c = tiny_clip.train_tiny_clip(small_fixture, tmp_path / "c.pt", steps=4, seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert not list(tmp_path.rglob("*.part"))
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_cache_reuses_a_checkpoint_for_the_same_content(
    small_fixture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tiny_clip.cached_tiny_clip(small_fixture, cache_dir=tmp_path, steps=2, seed=0)
    moved = tmp_path / "moved-fixture"
    shutil.copytree(small_fixture, moved)  # same content elsewhere: same key

    def no_training(*args: object, **kwargs: object) -> Path:
        raise AssertionError("trained again although a cached checkpoint exists")

    monkeypatch.setattr(tiny_clip, "train_on_pairs", no_training)
    assert tiny_clip.cached_tiny_clip(moved, cache_dir=tmp_path, steps=2, seed=0) == first
    monkeypatch.undo()
    other = tiny_clip.cached_tiny_clip(small_fixture, cache_dir=tmp_path, steps=3, seed=0)
    assert other != first
    assert other.is_file()


def test_cache_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tiny_clip.CACHE_ENV, str(tmp_path))
    assert tiny_clip.default_cache_dir() == tmp_path
    monkeypatch.delenv(tiny_clip.CACHE_ENV)
    assert tiny_clip.default_cache_dir() == Path.home() / ".cache" / "clipsearch-tests"


def test_pairs_use_descriptive_texts_only(small_fixture: Path) -> None:
    pairs = tiny_clip.prepare_pairs(small_fixture)
    assert len(pairs.photo_ids) == 40
    assert pairs.images.shape == (40, 3, 32, 32)
    assert "forest" in pairs.texts
    assert "a foggy forest at dawn" in pairs.texts
    assert "nature" not in pairs.texts  # on ~3/7 of all photos: a stop word, not a description
    assert bool(pairs.positives.any(dim=1).all())
    assert bool(pairs.positives.any(dim=0).all())


def test_loss_with_one_positive_each_is_clips_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    scale = torch.tensor(10.0)
    ours = tiny_clip.multi_positive_clip_loss(images, texts, torch.eye(6, dtype=torch.bool), scale)
    torch.testing.assert_close(ours, ClipLoss()(images, texts, scale))
    shared = torch.eye(6, dtype=torch.bool)
    shared[0, 1] = shared[1, 0] = True  # photos 0 and 1 share their texts: not negatives of each other
    assert not torch.isclose(tiny_clip.multi_positive_clip_loss(images, texts, shared, scale), ours)


def test_trimmed_text_path_matches_open_clip() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("clipsearch-tiny", pretrained=None).eval()
    padded = open_clip.get_tokenizer("clipsearch-tiny")(["forest", "sand dunes under a blue sky", "a"])
    with torch.no_grad():
        expected = model.encode_text(padded)
        got = tiny_clip.encode_text_trimmed(model, tiny_clip._trim_padding(padded))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_missing_inputs_fail_with_a_clear_error(tmp_path: Path, small_fixture: Path) -> None:
    with pytest.raises(ConfigError, match="no Unsplash Lite zip"):
        tiny_clip.train_tiny_clip(tmp_path, tmp_path / "x.pt", steps=1)
    no_images = tmp_path / "no-images"
    no_images.mkdir()
    shutil.copyfile(small_fixture / "lite.zip", no_images / "lite.zip")
    with pytest.raises(DataFormatError, match="photos"):
        tiny_clip.train_tiny_clip(no_images, tmp_path / "x.pt", steps=1)
    with pytest.raises(ConfigError, match="steps"):
        tiny_clip.train_tiny_clip(small_fixture, tmp_path / "x.pt", steps=0)


def test_cli_writes_a_checkpoint_and_reports_errors(
    small_fixture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.pt"
    assert tiny_clip.main(["--fixture", str(small_fixture), "--out", str(out), "--steps", "2"]) == 0
    assert out.is_file()
    assert str(out) in capsys.readouterr().out
    assert tiny_clip.main(["--fixture", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no Unsplash Lite zip" in capsys.readouterr().err
