"""Shared pytest fixtures. Add new ones below with a short docstring each."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.gemini_standin import GeminiStandin
from tests.fixtures.http_server import FixtureServer
from tests.fixtures.unsplash_lite import FixtureInfo, build_fixture


@dataclass
class ServedFixture:
    """The generated Unsplash Lite fixture and the local server that serves it."""

    info: FixtureInfo
    server: FixtureServer

    @property
    def zip_url(self) -> str:
        return self.server.zip_url


INFRA_DIR = Path(__file__).parent / "infra"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/infra is the `infra` tier (`make test-infra`): it needs the validator tools."""
    for item in items:
        if INFRA_DIR in item.path.parents:
            item.add_marker(pytest.mark.infra)


@pytest.fixture(scope="session")
def unsplash_fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFixture]:
    """A ~300-photo Unsplash Lite fixture (zip + images), built once and served on 127.0.0.1 for the session.

    Tests that set faults must reset them; use `fixture_server`, which does it for you.
    """
    root = tmp_path_factory.mktemp("unsplash-lite")
    with FixtureServer(root) as server:
        info = build_fixture(root, n_photos=300, seed=0, base_url=server.base_url)
        yield ServedFixture(info=info, server=server)


@pytest.fixture
def fixture_server(unsplash_fixture_server: ServedFixture) -> Iterator[ServedFixture]:
    """The session's fixture server with no faults and zeroed request counters, reset again afterwards."""
    unsplash_fixture_server.server.reset()
    yield unsplash_fixture_server
    unsplash_fixture_server.server.reset()


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ONNX text-tower cache (`CLIPSEARCH_MODEL__ONNX_CACHE_DIR`) for every encoder of the session and its child processes.

    `model.text_backend: auto` runs the text tower in ONNX Runtime on CPU, exported once per weights: shared, the
    tiny model is exported once, not once per test or per service. Kept across sessions under
    `$CLIPSEARCH_TEST_CACHE/onnx` (else ~/.cache/clipsearch-tests/onnx); on CI without a cache dir, a temp dir.
    """
    from clipsearch.onnx_text import CACHE_ENV as ONNX_CACHE_ENV
    from tests.fixtures.tiny_clip import CACHE_ENV, default_cache_dir

    fresh = bool(os.environ.get("CI")) and not os.environ.get(CACHE_ENV)
    cache = tmp_path_factory.mktemp("onnx-cache") if fresh else default_cache_dir() / "onnx"
    previous = os.environ.get(ONNX_CACHE_ENV)
    os.environ[ONNX_CACHE_ENV] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop(ONNX_CACHE_ENV, None)
    else:
        os.environ[ONNX_CACHE_ENV] = previous


@pytest.fixture(scope="session")
def tiny_model_settings():
    """ModelSettings for the test-only `clipsearch-tiny` CLIP with fixed-seed random weights, on CPU in fp32."""
    from clipsearch.settings import ModelSettings

    return ModelSettings(arch="clipsearch-tiny", pretrained="random", device="cpu", precision="fp32", batch_size=16)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_settings):
    """A loaded `ClipEncoder` of `clipsearch-tiny` (random weights), shared by the session: load once, read only."""
    from clipsearch.encoder import ClipEncoder

    return ClipEncoder(tiny_model_settings).load()


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(unsplash_fixture_server: ServedFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `clipsearch-tiny` state_dict trained on the session's fixture: theme keywords find their photos.

    Load it with `ModelSettings(arch="clipsearch-tiny", pretrained=str(path))`; read only. Reused from
    `$CLIPSEARCH_TEST_CACHE` (else ~/.cache/clipsearch-tests) when this fixture content was trained before;
    on CI (`CI` set, no cache dir given) it is trained afresh into the session's temp dir.
    """
    from tests.fixtures.tiny_clip import CACHE_ENV, cached_tiny_clip

    fresh = bool(os.environ.get("CI")) and not os.environ.get(CACHE_ENV)
    cache_dir = tmp_path_factory.mktemp("tiny-clip") if fresh else None
    return cached_tiny_clip(unsplash_fixture_server.server.root, cache_dir=cache_dir)


@pytest.fixture
def gemini_standin() -> Iterator[GeminiStandin]:
    """A local Gemini REST stand-in on 127.0.0.1 (see tests/fixtures/gemini_standin.py); script it per test."""
    with GeminiStandin() as standin:
        yield standin
