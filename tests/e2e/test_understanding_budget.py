"""Every failure mode of the Gemini stand-in falls back to the text as typed within the understanding budget,
through the real /search route (wall-clock, so e2e tier; the unit tests check the same outcomes without time)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from clipsearch.settings import Settings
from clipsearch_devtools.gemini_standin import GeminiStandin, blocked_prompt, hang, malformed, quota, text, unavailable
from tests.support.understanding_app import create_app

pytestmark = pytest.mark.e2e

BUDGET_S = 0.5
SLACK_S = 0.25  # TestClient, the route and the fake index on a loaded 2-core machine


@pytest.fixture
def client(gemini_standin: GeminiStandin) -> Iterator[TestClient]:
    settings = Settings(
        rerank={"enabled": False, "base_url": gemini_standin.base_url, "api_key": "k"},
        understand={"budget_s": BUDGET_S, "max_retries": 2, "cache_size": 0, "breaker_failures": 100},
    )
    with TestClient(create_app(settings)) as c:
        c.post("/search", json={"q": "warm up the connection please now", "understand": "on"})
        yield c


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (hang(5.0), "timeout"),
        (quota(), "quota"),
        (unavailable(), "overloaded"),
        (malformed(), "invalid_output"),
        (text('{"k": 1000, "terms": "all"}'), "invalid_output"),
        (blocked_prompt(), "blocked"),
    ],
)
def test_failures_fall_back_within_the_budget_with_the_reason(
    client: TestClient, gemini_standin: GeminiStandin, behaviour: object, reason: str
) -> None:
    gemini_standin.default = behaviour  # type: ignore[assignment]  # every retry gets it too
    started = time.monotonic()
    r = client.post("/search", json={"q": "landscape photos of Iceland from 2021 without people"})
    took = time.monotonic() - started
    assert r.status_code == 200
    u = r.json()["understanding"]
    assert u["understood"] is False
    assert u["reason"] == reason
    assert r.json()["query"] == "landscape photos of Iceland from 2021 without people"
    assert took <= BUDGET_S + SLACK_S, f"{reason}: {took:.3f}s"
