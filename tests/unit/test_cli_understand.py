"""`clipsearch search --understand`: the CLI reads a request through the same Turns as the service."""

from __future__ import annotations

import pytest
import typer

from clipsearch.cli import _understood
from clipsearch.errors import ConfigError
from clipsearch.query import Filters, Query, Term
from clipsearch.settings import Settings
from clipsearch_devtools.gemini_standin import GeminiStandin, compose


def test_on_understands_off_does_not_and_on_without_a_key_is_an_error(
    gemini_standin: GeminiStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    settings = Settings(rerank={"base_url": gemini_standin.base_url, "api_key": "k"})
    gemini_standin.script(compose(terms=[{"text": "beach", "weight": 1}], filters={"country": ["Portugal"]}))
    request = Query(
        terms=[Term(text="beaches in Portugal since 2020"), Term(text="people", weight=-1)],
        filters=Filters(orientation=["landscape"]),
        k=4,
        candidates=10,
    )
    turn = _understood(settings, request, "on", has_text=True)
    assert turn is not None
    assert turn.understood
    assert turn.summary == "Portugal, landscape, beach, not: people"
    assert turn.as_dict()["parts"][0] == {"key": "filters.country", "label": "Portugal", "kind": "filter"}
    # the options given (--not, --filter, -k) stay: the understood query is merged into them and runs whole
    assert turn.query.k == 4
    assert turn.query.filters.orientation == ["landscape"]
    assert _understood(settings, request, "off", has_text=True) is None
    assert _understood(settings, request, "on", has_text=False) is None  # --image/--like only: nothing to read
    with pytest.raises(typer.BadParameter):
        _understood(settings, request, "maybe", has_text=True)
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        _understood(Settings(rerank={"api_key": None}), request, "on", has_text=True)
