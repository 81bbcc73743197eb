"""The service's re-ranker metrics: model availability from the re-ranker's state, thinking tokens, outcomes."""

from __future__ import annotations

from prometheus_client import generate_latest

from services.search.telemetry import RERANK_OUTCOMES, Metrics


def test_model_availability_is_read_at_scrape_time() -> None:
    state: dict[str, bool | None] = {"gemini-3.5-flash-lite": None, "gemini-3.1-flash-lite": None}
    metrics = Metrics()
    metrics.watch_reranker_models(lambda: state, "gemini-3.5-flash-lite")
    assert "clipsearch_reranker_model_available{" not in generate_latest(metrics.registry).decode()  # unknown yet

    state.update({"gemini-3.5-flash-lite": False, "gemini-3.1-flash-lite": True})
    text = generate_latest(metrics.registry).decode()
    assert 'clipsearch_reranker_model_available{model="gemini-3.5-flash-lite",role="primary"} 0.0' in text
    assert 'clipsearch_reranker_model_available{model="gemini-3.1-flash-lite",role="fallback"} 1.0' in text

    metrics.watch_reranker_models(lambda: {"m": True}, "m")  # replacing the source keeps one collector
    text = generate_latest(metrics.registry).decode()
    assert text.count("# TYPE clipsearch_reranker_model_available gauge") == 1
    assert 'clipsearch_reranker_model_available{model="m",role="primary"} 1.0' in text


def test_thinking_tokens_and_model_unavailable_outcome_are_exported() -> None:
    metrics = Metrics()
    assert "model_unavailable" in RERANK_OUTCOMES
    usage = {"prompt_tokens": 100.0, "output_tokens": 50.0, "thoughts_tokens": 20.0, "cost_usd": 1e-4, "attempts": 1.0}
    metrics.observe_search({"total": 5.0}, "applied", usage, 0.3)
    metrics.observe_search({"total": 5.0}, "model_unavailable", {}, 0.3)
    text = generate_latest(metrics.registry).decode()
    assert 'clipsearch_gemini_tokens_total{kind="thoughts"} 20.0' in text
    assert 'clipsearch_gemini_tokens_total{kind="output"} 50.0' in text
    assert 'clipsearch_rerank_outcomes_total{outcome="model_unavailable"} 1.0' in text
