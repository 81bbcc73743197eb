"""The Gemini spend guard: calls per minute (limits' moving window) and USD per UTC day from counted tokens."""

from __future__ import annotations

from pathlib import Path

from clipsearch.rerank.spend import BUDGET, REQUESTS_PER_MINUTE, USD_PER_DAY, SpendGuard
from clipsearch.types import Candidate
from clipsearch_devtools.gemini_standin import GeminiStandin, rank
from services.search.telemetry import Metrics
from tests.unit.test_gemini_reranker import MakeReranker, candidates, images_dir, make_reranker  # noqa: F401

DAY = 86_400.0


class FakeWallClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_calls_per_minute_are_capped_and_counted() -> None:
    guard = SpendGuard(requests_per_minute=2, usd_per_day=100.0)
    assert guard.acquire() is None
    assert guard.acquire() is None
    denied = guard.acquire()
    assert denied is not None
    assert "2 Gemini calls per minute" in denied
    assert guard.check() is not None  # check() takes nothing but sees the same window
    snap = guard.snapshot()
    assert snap.denials[REQUESTS_PER_MINUTE] == 2
    assert snap.exhausted[REQUESTS_PER_MINUTE]
    assert not snap.exhausted[USD_PER_DAY]


def test_dollars_per_day_reset_at_utc_midnight() -> None:
    clock = FakeWallClock()
    guard = SpendGuard(requests_per_minute=1000, usd_per_day=0.01, wall_clock=clock)
    guard.record(0.004)
    assert guard.check() is None
    guard.record(0.007)  # an answer's price is counted after it arrives: the total may pass the budget once
    denied = guard.check()
    assert denied is not None
    assert "$0.01" in denied
    assert "midnight UTC" in denied
    assert guard.acquire() is not None
    snap = guard.snapshot()
    assert snap.exhausted[USD_PER_DAY]
    assert snap.spent_today_usd == 0.011
    assert snap.denials[USD_PER_DAY] == 2
    clock.t += DAY
    assert guard.check() is None
    assert guard.snapshot().spent_today_usd == 0.0


def test_reranker_falls_back_with_reason_budget_once_the_day_is_spent(
    make_reranker: MakeReranker,  # noqa: F811
    gemini_standin: GeminiStandin,
    candidates: list[Candidate],  # noqa: F811
) -> None:
    gemini_standin.script(rank(), rank())
    # The stand-in reports 1,200 prompt + 80 output tokens: $0.00056 at gemini-3.5-flash-lite prices.
    reranker = make_reranker(spend_usd_per_day=0.0005, response_cache_size=8)
    first = reranker.rerank("a red bicycle", candidates, k=4)
    assert first.applied
    assert first.usage["cost_usd"] > 0.0005
    assert reranker.spend.snapshot().spent_today_usd == first.usage["cost_usd"]
    second = reranker.rerank("a blue bicycle", candidates, k=4)
    assert not second.applied
    assert second.fallback_reason == BUDGET
    assert "daily Gemini budget" in (second.detail or "")
    assert gemini_standin.request_count == 1  # the guard refused before any call (or thumbnail work)
    cached = reranker.rerank("a red bicycle", candidates, k=4)  # a cached answer costs nothing: still served
    assert cached.applied
    assert cached.usage["cached"] == 1
    assert reranker.breaker.state.value == "closed"


def test_reranker_counts_every_attempt_against_the_minute(
    make_reranker: MakeReranker,  # noqa: F811
    gemini_standin: GeminiStandin,
    candidates: list[Candidate],  # noqa: F811
) -> None:
    from clipsearch_devtools.gemini_standin import quota

    gemini_standin.script(quota(), rank())
    reranker = make_reranker(spend_requests_per_minute=1, max_retries=2)
    outcome = reranker.rerank("a red bicycle", candidates, k=4)
    # the 429 used the only slot; the retry was refused by the guard, not sent
    assert not outcome.applied
    assert outcome.fallback_reason == BUDGET
    assert "calls per minute" in (outcome.detail or "")
    assert "quota" in (outcome.detail or "").lower()
    assert gemini_standin.request_count == 1


def test_spend_metrics_are_exported(tmp_path: Path) -> None:  # noqa: ARG001
    from prometheus_client import generate_latest

    guard = SpendGuard(requests_per_minute=1, usd_per_day=1.0)
    guard.acquire()
    guard.acquire()
    guard.record(0.25)
    metrics = Metrics()
    metrics.watch_spend(guard.snapshot)
    text = generate_latest(metrics.registry).decode()
    assert "clipsearch_gemini_spend_today_usd 0.25" in text
    assert "clipsearch_gemini_budget_usd_per_day 1.0" in text
    assert 'clipsearch_gemini_budget_exhausted{limit="requests_per_minute"} 1.0' in text
    assert 'clipsearch_gemini_budget_exhausted{limit="usd_per_day"} 0.0' in text
    assert 'clipsearch_gemini_budget_denials_total{limit="requests_per_minute"} 1.0' in text
    assert 'clipsearch_rerank_outcomes_total{outcome="budget"} 0.0' in text
    assert 'clipsearch_rate_limited_total{limit="rerank"} 0.0' in text
