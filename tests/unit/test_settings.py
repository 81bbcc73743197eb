"""Settings: a typo is an error naming the key; the data set is pinned by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.errors import ConfigError
from clipsearch.settings import (
    PARAMS_ENV,
    UNSPLASH_LITE_PINNED_URL,
    UNSPLASH_LITE_SHA256,
    DatasetSettings,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  arch: ViT-B-32\n")
    monkeypatch.setenv(PARAMS_ENV, str(path))
    return path


def test_unknown_key_in_params_file_names_it_and_the_likely_key(params_file: Path) -> None:
    params_file.write_text("model:\n  text_backnd: onnx\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "unknown setting 'model.text_backnd'" in message
    assert "did you mean 'model.text_backend'" in message
    assert str(params_file) in message


def test_unknown_section_in_params_file_is_an_error(params_file: Path) -> None:
    params_file.write_text("modle:\n  arch: ViT-B-32\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'modle'.*did you mean 'model'"):
        load_settings()


def test_unknown_nested_env_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_RERANK__BUDGET", "2")
    with pytest.raises(ConfigError, match=r"unknown setting 'rerank.budget' \(in .* or CLIPSEARCH_RERANK__BUDGET\)"):
        load_settings()


def test_unknown_env_section_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_SERVCE__CACHE_DIR", "/tmp/x")
    with pytest.raises(ConfigError, match="CLIPSEARCH_SERVCE__CACHE_DIR: did you mean CLIPSEARCH_SERVICE__"):
        load_settings()


def test_bad_value_names_key_and_value(params_file: Path) -> None:
    params_file.write_text("search:\n  k: 0\n")
    with pytest.raises(ConfigError, match=r"search.k = 0 .*greater than or equal to 1"):
        load_settings()


def test_variables_that_are_not_settings_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_TEST_CACHE", "/tmp/cache")
    monkeypatch.setenv("CLIPSEARCH_TOOLS_BIN", "/tmp/tools")
    monkeypatch.setenv("CLIPSEARCH_MODEL__ARCH", "RN50")
    assert load_settings().model.arch == "RN50"


def test_repository_params_file_loads_and_pins_the_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PARAMS_ENV, str(REPO / "params.yaml"))
    dataset = load_settings().dataset
    assert dataset.url == UNSPLASH_LITE_PINNED_URL == "https://unsplash.com/data/lite/1.2.1"
    assert dataset.sha256 == UNSPLASH_LITE_SHA256
    assert dataset.limit is None  # the whole set is the product's data set


def test_defaults_pin_the_release_and_another_url_drops_the_default_checksum() -> None:
    assert DatasetSettings().sha256 == UNSPLASH_LITE_SHA256
    mirror = DatasetSettings(url="http://127.0.0.1:8765/lite.zip")
    assert mirror.sha256 == ""
    assert mirror.version == "unpinned"
    latest = DatasetSettings(url="https://unsplash.com/data/lite/latest")
    assert latest.version == "latest"
    assert latest.sha256 == ""
    pinned_mirror = DatasetSettings(url="http://127.0.0.1:8765/lite.zip", sha256="ab" * 32)
    assert pinned_mirror.sha256 == "ab" * 32
