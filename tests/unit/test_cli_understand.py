"""`clipsearch search --understand`: the CLI reads a request through the same Turns as the service."""

from __future__ import annotations

import pytest
import typer

from clipsearch.cli import _understood
from clipsearch.errors import ConfigError
from clipsearch.settings import Settings
from tests.fixtures.gemini_standin import GeminiStandin, compose


def test_on_understands_off_does_not_and_on_without_a_key_is_an_error(
    gemini_standin: GeminiStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    settings = Settings(rerank={"base_url": gemini_standin.base_url, "api_key": "k"})  # type: ignore[arg-type]
    gemini_standin.script(compose(terms=[{"text": "beach", "weight": 1}], filters={"country": ["Portugal"]}))
    turn = _understood(settings, "beaches in Portugal since 2020", "on", 4, 10)
    assert turn is not None and turn.understood and turn.summary == "Portugal, beach"
    assert turn.as_dict()["parts"][0] == {"key": "filters.country", "label": "Portugal", "kind": "filter"}
    assert _understood(settings, "beaches in Portugal", "off", 4, 10) is None
    with pytest.raises(typer.BadParameter):
        _understood(settings, "x", "maybe", 4, 10)
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        _understood(Settings(rerank={"api_key": None}), "x y z w", "on", 4, 10)  # type: ignore[arg-type]
