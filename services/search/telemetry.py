"""Prometheus metrics and structured JSON logs for the search service.

Metric names are a contract with `k8s/` (alerts, dashboard); change them there too. Every search stage is
timed with a histogram (the clip-retrieval idea), re-rank outcomes are counted by reason, Gemini usage is
counted in tokens and dollars. Logs are one JSON object per line with the request id; secrets never appear
because nothing logs settings or headers wholesale.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from clipsearch.rerank.spend import SpendSnapshot

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RERANK_OUTCOMES = (
    "applied",
    "timeout",
    "quota",
    "overloaded",
    "blocked",
    "invalid_output",
    "breaker_open",
    "model_unavailable",
    "budget",
    "disabled",
    "not_requested",
    "error",
)

SHED_REASONS = ("queue_full", "deadline", "expired")
QUERY_KINDS = ("text", "image", "photo_id", "composed")


class Metrics:
    """All service metrics on one registry (a fresh registry per app keeps tests independent)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clipsearch_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "clipsearch_request_latency_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "clipsearch_stage_latency_seconds",
            "Search latency per stage (queue, encode, image_input, image_encode, search, rerank, total).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rerank_outcomes = Counter(
            "clipsearch_rerank_outcomes", "Re-rank outcomes by reason.", ["outcome"], registry=r
        )
        self.gemini_tokens = Counter(
            "clipsearch_gemini_tokens",
            "Gemini tokens by kind: prompt, output (billed, thinking included) and thoughts (the thinking part).",
            ["kind"],
            registry=r,
        )
        self.gemini_cost = Counter("clipsearch_gemini_cost_usd", "Estimated Gemini spend in USD.", registry=r)
        self.gemini_requests = Counter(
            "clipsearch_gemini_requests", "HTTP calls made to Gemini (retries included).", registry=r
        )
        self.understand_outcomes = Counter(
            "clipsearch_understand_outcomes",
            "Query understanding outcomes: understood, cached, or why the request was searched as typed.",
            ["outcome"],
            registry=r,
        )
        self.understand_tokens = Counter(
            "clipsearch_understand_tokens", "Gemini tokens spent reading requests, by kind.", ["kind"], registry=r
        )
        self.understand_cost = Counter(
            "clipsearch_understand_cost_usd", "Estimated Gemini spend on reading requests, in USD.", registry=r
        )
        self.gemini_quota_rpm = Gauge(
            "clipsearch_gemini_quota_requests_per_minute", "Configured Gemini RPM quota.", registry=r
        )
        self.index_info = Gauge(
            "clipsearch_index_info",
            "The index version being served (value 1).",
            ["version", "registry_version"],
            registry=r,
        )
        self.index_size = Gauge("clipsearch_index_size", "Vectors in the served index.", registry=r)
        self.index_stale = Gauge(
            "clipsearch_index_stale", "1 when a cached index is served because the registry is unreachable.", registry=r
        )
        self.index_swaps = Counter("clipsearch_index_swaps", "Index versions loaded and swapped in.", registry=r)
        self.index_refusals = Counter(
            "clipsearch_index_refusals", "Index versions refused (verification or model mismatch).", registry=r
        )
        self.drift_score = Gauge(
            "clipsearch_drift_score", "Latest embedding drift score of recent queries vs the reference.", registry=r
        )
        self.drift_detected = Gauge(
            "clipsearch_drift_detected", "1 when the latest drift check detected drift.", registry=r
        )
        self.top1_similarity = Histogram(
            "clipsearch_top1_similarity",
            "Cosine similarity of each query's best result.",
            buckets=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0),
            registry=r,
        )
        self.shed = Counter(
            "clipsearch_shed_requests",
            "Queries refused by admission control (503 + Retry-After), by reason: queue_full, deadline (predicted "
            "to start past service.queue_deadline_ms), expired (waited past twice the deadline).",
            ["reason"],
            registry=r,
        )
        self.abandoned = Counter(
            "clipsearch_abandoned_requests",
            "Queries dropped before they started because their client disconnected.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "clipsearch_queue_depth", "Queries waiting for the encoder/search worker (the HPA's signal).", registry=r
        )
        self.queue_predicted_wait = Gauge(
            "clipsearch_queue_predicted_wait_seconds",
            "Predicted wait before a query arriving now would start (admission control's estimate).",
            registry=r,
        )
        for reason in SHED_REASONS:
            self.shed.labels(reason=reason)
        self.rate_limited = Counter(
            "clipsearch_rate_limited",
            "Requests refused with 429 by the per-client rate limits, by limit (search, rerank).",
            ["limit"],
            registry=r,
        )
        for limit in ("search", "rerank"):
            self.rate_limited.labels(limit=limit)
        self.queries = Counter(
            "clipsearch_queries",
            "Search requests by query kind (text, image, photo_id, composed) and HTTP status.",
            ["kind", "status"],
            registry=r,
        )
        self.query_latency = Histogram(
            "clipsearch_query_latency_seconds",
            "Search latency (the engine's total) of answered requests by query kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for kind in QUERY_KINDS:
            self.query_latency.labels(kind=kind)
        for outcome in RERANK_OUTCOMES:
            self.rerank_outcomes.labels(outcome=outcome)
        for kind in ("prompt", "output", "thoughts"):
            self.gemini_tokens.labels(kind=kind)
        self._model_collector: Collector | None = None
        self._spend_collector: Collector | None = None

    def observe_search(
        self, timings_ms: Mapping[str, float], outcome: str, usage: Mapping[str, float], top1: float | None
    ) -> None:
        for stage, ms in timings_ms.items():
            self.stage_latency.labels(stage=stage).observe(ms / 1000.0)
        self.rerank_outcomes.labels(outcome=outcome).inc()
        if usage and not usage.get("cached"):
            self.gemini_tokens.labels(kind="prompt").inc(usage.get("prompt_tokens", 0.0))
            self.gemini_tokens.labels(kind="output").inc(usage.get("output_tokens", 0.0))
            self.gemini_tokens.labels(kind="thoughts").inc(usage.get("thoughts_tokens", 0.0))
            self.gemini_cost.inc(usage.get("cost_usd", 0.0))
            self.gemini_requests.inc(usage.get("attempts", 0.0))
        if top1 is not None:
            self.top1_similarity.observe(top1)

    def observe_query(self, kind: str, status: int, total_ms: float | None) -> None:
        """One search request of `kind`: counted by status; timed when it was answered."""
        self.queries.labels(kind=kind, status=str(status)).inc()
        if total_ms is not None:
            self.query_latency.labels(kind=kind).observe(total_ms / 1000.0)

    def observe_understanding(self, outcome: str, usage: Mapping[str, float]) -> None:
        """One request's understanding: beside re-ranking's tokens and cost, and in the Gemini call count."""
        self.understand_outcomes.labels(outcome=outcome).inc()
        if usage and not usage.get("cached"):
            for kind in ("prompt", "output", "thoughts"):
                self.understand_tokens.labels(kind=kind).inc(usage.get(f"{kind}_tokens", 0.0))
            self.understand_cost.inc(usage.get("cost_usd", 0.0))
            self.gemini_requests.inc(usage.get("attempts", 0.0))

    def watch_reranker_models(self, availability: Callable[[], Mapping[str, bool | None]], primary: str) -> None:
        """Export `clipsearch_reranker_model_available{model, role}` from the re-ranker's state at each scrape:
        1 = found or answering, 0 = not found (retired or renamed); a model not checked yet has no sample."""
        if self._model_collector is not None:
            self.registry.unregister(self._model_collector)
        self._model_collector = _ModelAvailability(availability, primary)
        self.registry.register(self._model_collector)

    def watch_spend(self, snapshot: Callable[[], SpendSnapshot]) -> None:
        """Export the Gemini spend guard's state at each scrape (see `clipsearch.rerank.spend`)."""
        if self._spend_collector is not None:
            self.registry.unregister(self._spend_collector)
        self._spend_collector = _SpendGuardCollector(snapshot)
        self.registry.register(self._spend_collector)

    def set_index(self, version: str, registry_version: str | None, size: int, stale: bool) -> None:
        self.index_info.clear()
        self.index_info.labels(version=version, registry_version=registry_version or "local").set(1)
        self.index_size.set(size)
        self.index_stale.set(1 if stale else 0)


class _ModelAvailability(Collector):
    def __init__(self, availability: Callable[[], Mapping[str, bool | None]], primary: str) -> None:
        self._availability = availability
        self._primary = primary

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "clipsearch_reranker_model_available",
            "1 when the configured Gemini model was found or answered, 0 when the API said it was not found.",
            labels=["model", "role"],
        )
        for model, available in self._availability().items():
            if available is not None:
                role = "primary" if model == self._primary else "fallback"
                family.add_metric([model, role], 1.0 if available else 0.0)
        yield family


class _SpendGuardCollector(Collector):
    def __init__(self, snapshot: Callable[[], SpendSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self._snapshot()
        yield GaugeMetricFamily(
            "clipsearch_gemini_spend_today_usd",
            "USD spent on Gemini today (UTC) by this process, priced from the counted tokens.",
            value=snap.spent_today_usd,
        )
        yield GaugeMetricFamily(
            "clipsearch_gemini_budget_usd_per_day",
            "The spend guard's daily USD budget (rerank.spend_usd_per_day).",
            value=snap.usd_per_day,
        )
        yield GaugeMetricFamily(
            "clipsearch_gemini_budget_requests_per_minute",
            "The spend guard's Gemini calls per minute (rerank.spend_requests_per_minute).",
            value=snap.requests_per_minute,
        )
        exhausted = GaugeMetricFamily(
            "clipsearch_gemini_budget_exhausted",
            "1 while the spend guard refuses Gemini calls for this limit (usd_per_day: until midnight UTC; "
            "requests_per_minute: a call was refused in the last minute).",
            labels=["limit"],
        )
        denials = CounterMetricFamily(
            "clipsearch_gemini_budget_denials",
            "Gemini calls the spend guard refused, by limit (each is a search served in CLIP order, reason budget).",
            labels=["limit"],
        )
        for limit, value in snap.exhausted.items():
            exhausted.add_metric([limit], 1.0 if value else 0.0)
        for limit, count in snap.denials.items():
            denials.add_metric([limit], float(count))
        yield exhausted
        yield denials


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any `extra` fields."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            payload["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Route the root logger (and uvicorn's) through the JSON formatter on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the service logs each request itself, with its id
