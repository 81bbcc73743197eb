"""One typed settings object for the pipeline, the CLI and the service.

Values come from, highest priority first: keyword arguments, environment variables
(``CLIPSEARCH_<SECTION>__<FIELD>``, e.g. ``CLIPSEARCH_MODEL__PRETRAINED=/weights/vit-b-32.pt``), then
``params.yaml`` (the file DVC tracks, so a pipeline run is reproducible from git alone), then the defaults
below. The service reads the same object, so a cluster overrides a value with one env var in a ConfigMap.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from clipsearch.errors import ConfigError

PARAMS_ENV = "CLIPSEARCH_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"

# The real Unsplash Lite endpoint: `latest` redirects to the newest zip; a version string pins one.
UNSPLASH_LITE_URL = "https://unsplash.com/data/lite/latest"
# The pinned default: Unsplash Lite 1.2.1 and the SHA-256 Unsplash publishes for it in the CHANGELOG of
# github.com/unsplash/datasets, so `dvc repro` means the same input on every machine.
UNSPLASH_LITE_VERSION = "1.2.1"
UNSPLASH_LITE_PINNED_URL = f"https://unsplash.com/data/lite/{UNSPLASH_LITE_VERSION}"
UNSPLASH_LITE_SHA256 = "d29a13678f1cc3a3e706897b0a8dbbdb5837715b0d78d0492b68b9b5e96b03db"

# Environment variables that carry the prefix but are not settings fields (so they are not "unknown keys").
NON_SETTINGS_ENV = frozenset(
    {PARAMS_ENV, "CLIPSEARCH_TEST_CACHE", "CLIPSEARCH_TEST_BROWSER", "CLIPSEARCH_TOOLS_BIN", "CLIPSEARCH_NETPOL_BIN"}
)


class Section(BaseModel):
    """A settings section: an unknown key (a typo in params.yaml or in a CLIPSEARCH_ variable) is an error."""

    model_config = ConfigDict(extra="forbid")


class DatasetSettings(Section):
    """Where Unsplash Lite comes from and how much of it to fetch."""

    url: str = Field(
        UNSPLASH_LITE_PINNED_URL,
        description=f"The zip: pinned to Unsplash Lite {UNSPLASH_LITE_VERSION} by default; {UNSPLASH_LITE_URL} "
        "follows the newest release (the log and data/lite/dataset.json say which version it got).",
    )
    version: str = UNSPLASH_LITE_VERSION
    sha256: str = Field(
        UNSPLASH_LITE_SHA256,
        description="Expected sha256 of the zip (Unsplash's CHANGELOG lists one per release); empty skips the "
        "check (only sensible with latest).",
    )
    limit: int | None = Field(
        None, ge=1, description="Use only the first N photos (a quick subset, e.g. 2000); null = all (~25K)."
    )
    image_width: int = Field(400, ge=16, le=4096, description="Images are fetched resized with ?w=<width>.")
    concurrency: int = Field(16, ge=1, le=256)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0)
    max_failure_ratio: float = Field(0.02, ge=0, le=1, description="The download fails above this share of bad images.")
    data_dir: Path = Path("data")

    @model_validator(mode="after")
    def _checksum_belongs_to_its_url(self) -> DatasetSettings:
        """The default checksum names the default release: another URL without its own sha256 gets none."""
        if self.url != UNSPLASH_LITE_PINNED_URL and "sha256" not in self.model_fields_set:
            self.sha256 = ""
            if "version" not in self.model_fields_set:
                self.version = "latest" if self.url.rstrip("/").endswith("/latest") else "unpinned"
        return self


class ModelSettings(Section):
    """The CLIP model: an open_clip architecture plus an open_clip `pretrained` tag or a local checkpoint path."""

    arch: str = "ViT-B-32"
    pretrained: str = Field(
        "openai",
        description="open_clip pretrained tag (e.g. 'openai'), a local checkpoint path, or 'random' (tests/benchmarks).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    text_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Query-encoding text tower on CPU: bf16 is ~2x faster on CPUs with AVX512-BF16/AMX (cosine to "
        "fp32 >= 0.999); fp32 is exact. Ignored when the model already runs in fp16.",
    )
    text_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Engine for the query text tower: 'auto' is ONNX Runtime fp32 on CPU (exported once per weights "
        "and cached; torch when text_precision is bf16 or the export is impossible) and torch on CUDA; 'onnx' and "
        "'torch' force one (onnx is ignored on CUDA). Same weights and identity.",
    )
    query_image_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Engine for the vision tower on query images (uploads, image URLs): 'auto' is ONNX Runtime fp32 "
        "on CPU (exported once per weights and cached beside the text graph; torch when the export is impossible) "
        "and torch on CUDA. The embed stage always runs torch. Same weights and identity.",
    )
    query_image_quantize: Literal["none", "int8"] = Field(
        "none",
        description="With the ONNX query image backend: 'int8' dynamic quantisation (2.3x faster on 2 cores, cosine "
        "to fp32 >= 0.9998 on random weights; re-check on real weights before enabling).",
    )
    onnx_quantize: Literal["none", "int8"] = Field(
        "none", description="With text_backend onnx: 'int8' dynamic quantisation (faster, cosine to fp32 >= 0.99)."
    )
    int8_min_cosine: float = Field(
        0.995, ge=0, le=1, description="int8 parity gate: minimum cosine to fp32 over the evaluation queries."
    )
    int8_min_top10_overlap: float = Field(
        0.9, ge=0, le=1, description="int8 parity gate: minimum mean top-10 overlap with fp32 on the index."
    )
    onnx_cache_dir: Path | None = Field(
        None, description="Where exported ONNX text towers are cached; default $XDG_CACHE_HOME/clipsearch/onnx."
    )
    batch_size: int = Field(64, ge=1, le=4096)
    num_workers: int = Field(2, ge=0, le=64, description="Image decode workers that run ahead of the model.")
    cache_dir: Path | None = Field(None, description="Where open_clip caches downloaded weights.")


class EmbedSettings(Section):
    features_dir: Path = Path("data/features")
    chunk_size: int = Field(1024, ge=1, description="Images per resumable chunk file.")


class IndexSettings(Section):
    """Which nearest-neighbour structure the artifact carries. `exact` is right up to ~1M vectors; `hnsw_sq`
    (PCA + 8-bit codes + HNSW + exact refine, ~400 B/vector) is the choice beyond (benchmarks/bench_ann.py)."""

    kind: Literal["exact", "hnsw", "ivf", "hnsw_sq"] = "exact"
    exact_backend: Literal["numpy", "faiss"] = Field(
        "numpy",
        description="How `exact` scores: numpy BLAS, or FAISS's flat kernels (same top-k and scores within float "
        "rounding, ~2-5x faster for one query; float16-stored vectors stay float16 in memory).",
    )
    dtype: Literal["float16", "float32"] = "float16"
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=8)
    hnsw_pca_dim: int = Field(
        64, ge=0, description="hnsw_sq: PCA to this many dimensions before the 8-bit codes (0 = no PCA)."
    )
    hnsw_refine: int = Field(
        4, ge=0, le=100, description="hnsw_sq: re-score the top k x this exactly with the stored vectors (0 = off)."
    )
    ivf_nlist: int = Field(1024, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    ivf_pq_m: int = Field(0, ge=0, description="0 = IVF-Flat; >0 = IVF-PQ with this many sub-quantizers.")
    keyword_index: bool = Field(
        True, description="Build the BM25 keyword index (hybrid and keyword search) into the artifact."
    )
    keyword_min_ai_confidence: float = Field(
        50.0,
        ge=0,
        le=100,
        description="Machine-suggested keywords enter the keyword index at this AI confidence or more (user-confirmed "
        "keywords never do: they are evaluation judgments).",
    )
    output_dir: Path = Path("data/index")


class EvaluateSettings(Section):
    """How the judged query set is built from Unsplash Lite and scored."""

    min_users: int = Field(1, ge=1, description="A conversion counts only when this many distinct users made it.")
    holdout_fraction: float = Field(
        0.2, gt=0, le=1, description="The newest share of conversions (by converted_at) forms the test set."
    )
    use_keywords: bool = Field(True, description="Also judge with keywords users confirmed (suggested_by_user).")
    max_queries: int = Field(500, ge=1)
    min_positives: int = Field(1, ge=1)
    k: int = Field(4, ge=1)
    candidates: int = Field(10, ge=1)
    sample_queries: list[str] = Field(
        default_factory=lambda: ["a foggy forest at dawn", "a red bicycle", "city at night"]
    )
    output_dir: Path = Path("reports")


class RegistrySettings(Section):
    """MLflow: tracking server, registered model name and the promotion quality gate."""

    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        description="Embedded sqlite store by default; an http(s):// mlflow server URL in production.",
    )
    experiment: str = "clipsearch"
    model_name: str = "clipsearch-index"
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    gate_metric: str = "ndcg_at_4"
    gate_metrics: list[str] = Field(default_factory=lambda: ["ndcg_at_4", "precision_at_4", "recall_at_10", "mrr"])
    gate_tolerance: float = Field(0.01, ge=0, description="A challenger may be this much worse per metric and pass.")


class SearchSettings(Section):
    """How the engine answers a query (see clipsearch.query for the per-request fields)."""

    k: int = Field(4, ge=1, le=100)
    candidates: int = Field(10, ge=1, le=1000)
    mode: Literal["vector", "hybrid", "keyword"] = Field(
        "vector",
        description="The default mode (and the one the promotion gate measures); hybrid becomes the default only "
        "after an evaluation run shows it better (see README, Query language).",
    )
    rrf_k: int = Field(
        60, ge=1, le=10_000, description="Reciprocal rank fusion constant: score = sum 1 / (rrf_k + rank)."
    )
    max_results: int = Field(
        1000,
        ge=10,
        le=10_000,
        description="Depth of the ranked set that cut-off, de-duplication, sort and paging work on (offset + k must "
        "fit in it).",
    )
    dedupe_threshold: float = Field(
        0.95, gt=0, le=1, description="dedupe=true collapses photos whose image vectors have at least this cosine."
    )
    filter_brute_force_max: int = Field(
        20_000,
        ge=0,
        description="Filtered searches over at most this many matching photos are brute-forced (exact, any index kind).",
    )


ThinkingLevel = Literal["minimal", "low", "medium", "high"]
MediaResolution = Literal["low", "medium", "high"]

# Where the model facts below come from (searched 2026-12-02; Google's pages were read from a stored copy,
# the live site is not reachable from the build machines):
# - Gemini API models page (ai.google.dev/gemini-api/docs/models, "last updated July 2026"): gemini-3.5-flash-lite
#   and gemini-3.1-flash-lite are listed as stable.
# - Gemini API deprecations page (ai.google.dev/gemini-api/docs/deprecations): gemini-3.5-flash-lite released
#   2026-07-21, no shutdown date announced; gemini-2.5-flash-lite released 2025-07-22, "earliest July 2026".
# - "What's new in Gemini 3.6 Flash and 3.5 Flash-Lite" (ai.google.dev/gemini-api/docs/generate-content/
#   whats-new-gemini-3.6): 3.5 Flash-Lite defaults to thinking level `minimal`; $0.30 / $2.50 per 1M tokens.
# - Gemini 3.5 Flash-Lite model page (docs.cloud.google.com/vertex-ai/generative-ai/docs/models/gemini/
#   3-5-flash-lite): custom temperature / top-K / top-P are ignored, custom frequency / presence penalties are
#   an error, a request whose last `contents` turn has role `model` is an error.
PRICES_READ = "2026-12-02"


class GeminiModelProfile(Section):
    """What the re-ranker must know about one Gemini model: its prices and the request fields it accepts."""

    price_input_per_mtok: float = Field(..., ge=0, description="USD per million input tokens (text and image).")
    price_output_per_mtok: float = Field(
        ..., ge=0, description="USD per million output tokens; thinking tokens are billed as output."
    )
    prices_read: str = Field(..., description="When and where the prices were read.")
    thinking_level: ThinkingLevel | None = Field(
        None, description="Gemini 3.x: thinking_config.thinking_level (the lowest the model allows)."
    )
    thinking_budget: int | None = Field(
        None, ge=0, description="Gemini 2.5: thinking_config.thinking_budget (0 = no thinking). Not with a level."
    )
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sent only to models that honour it; Gemini 3.x ignores custom values."
    )
    media_resolution: MediaResolution | None = Field(
        None, description="generation_config.media_resolution; Gemini 3.x bills an image by it (low = 280 tokens)."
    )

    @model_validator(mode="after")
    def _one_thinking_control(self) -> GeminiModelProfile:
        if self.thinking_level is not None and self.thinking_budget is not None:
            raise ValueError(
                "set thinking_level (Gemini 3.x) or thinking_budget (Gemini 2.5), not both: the API answers 400"
            )
        return self


def _default_model_profiles() -> dict[str, GeminiModelProfile]:
    return {
        "gemini-3.5-flash-lite": GeminiModelProfile(
            price_input_per_mtok=0.30,
            price_output_per_mtok=2.50,
            prices_read=f"{PRICES_READ}: ai.google.dev 'What's new in Gemini 3.6 Flash and 3.5 Flash-Lite' (stored copy)",
            thinking_level="minimal",
            media_resolution="low",
        ),
        "gemini-3.1-flash-lite": GeminiModelProfile(
            price_input_per_mtok=0.25,
            price_output_per_mtok=1.50,
            prices_read=f"{PRICES_READ}: openrouter.ai and vercel.com model pages (third party; Google's table not read)",
            thinking_level="minimal",
            media_resolution="low",
        ),
        "gemini-2.5-flash-lite": GeminiModelProfile(
            price_input_per_mtok=0.10,
            price_output_per_mtok=0.40,
            prices_read="2025 (the seed's README, from ai.google.dev/gemini-api/docs/pricing); not re-read",
            thinking_budget=0,
            temperature=0.0,
        ),
    }


class RerankSettings(Section):
    """The LLM re-ranker (Gemini through the maintained google-genai SDK). No API key -> CLIP order only."""

    enabled: bool = True
    model: str = Field(
        "gemini-3.5-flash-lite",
        description=(
            "A current stable Flash-Lite. Checked 2026-12-02 against stored copies of Google's Gemini API models "
            "page (gemini-3.5-flash-lite: stable, July 2026) and deprecations page (released 2026-07-21, no "
            "shutdown date announced); gemini-2.5-flash-lite's earliest shutdown was July 2026. It must have an "
            "entry in `models` (prices, thinking); see README 'Switching the re-rank model'."
        ),
    )
    fallback_models: list[str] = Field(
        default_factory=lambda: ["gemini-3.1-flash-lite"],
        description=(
            "Tried in order only when a model is not found (404: retired or renamed), never on 429/5xx. "
            "The primary model is skipped if listed here."
        ),
    )
    models: dict[str, GeminiModelProfile] = Field(
        default_factory=_default_model_profiles,
        description="Per-model prices and request fields; entries given here are added to (or replace) the defaults.",
    )
    api_key: str | None = Field(None, description="Read from GEMINI_API_KEY; never logged.", repr=False)
    base_url: str | None = Field(None, description="Override the Gemini endpoint (tests, proxies).")
    budget_s: float = Field(1.5, gt=0, le=30, description="Hard time budget per re-rank call, retries included.")
    max_retries: int = Field(2, ge=0, le=5, description="Retries on 429/5xx only, and only while the budget allows.")
    thumbnail_px: int = Field(128, ge=32, le=1024, description="Longest side of the JPEG thumbnails sent to Gemini.")
    thumbnail_cache_size: int = Field(2048, ge=0)
    response_cache_size: int = Field(1024, ge=0, description="Identical (query, candidates) answers kept in memory.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit breaker.")
    breaker_reset_s: float = Field(30.0, gt=0, description="How long the breaker stays open before one trial call.")
    model_unavailable_hold_s: float = Field(
        3600.0, gt=0, description="A model that was not found is not asked again for this long (then one trial)."
    )
    startup_check_timeout_s: float = Field(
        3.0, gt=0, le=30, description="Time allowed for the start-up models lookup of each configured model."
    )
    quota_requests_per_minute: int = Field(4000, ge=1, description="The project's Gemini RPM quota (alerting).")
    spend_requests_per_minute: int = Field(
        600,
        ge=1,
        description="Spend guard: Gemini calls (retries included) this process may make per minute; past it a "
        "search is served in CLIP order with fallback reason `budget`. Per replica: keep replicas x this under "
        "the project quota.",
    )
    spend_usd_per_day: float = Field(
        20.0,
        gt=0,
        description="Spend guard: USD this process may spend per UTC day, priced from the counted tokens of each "
        "answer (rerank.models prices); once reached, re-ranking falls back with reason `budget` until midnight UTC.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _add_default_models(cls, value: object) -> object:
        if isinstance(value, dict):
            return {**_default_model_profiles(), **value}
        return value

    @model_validator(mode="after")
    def _models_are_known(self) -> RerankSettings:
        unknown = [m for m in self.model_chain if m not in self.models]
        if unknown:
            raise ValueError(
                f"no rerank.models entry for {unknown}: add its prices and thinking setting "
                f"(known: {sorted(self.models)})"
            )
        return self

    @property
    def model_chain(self) -> tuple[str, ...]:
        """The primary model, then the fallbacks, in the order they are tried (each once)."""
        return tuple(dict.fromkeys((self.model, *self.fallback_models)))


class UnderstandSettings(Section):
    """Query understanding: Gemini reads a sentence into a composed query (clipsearch.understand).

    It uses the re-ranker's client settings (key, base_url, `rerank.models` prices and thinking); its own time
    budget is added to `rerank.budget_s`, so one request's Gemini time stays within the two together.
    """

    enabled: bool = Field(True, description="Understand requests when a Gemini key is configured (understand=auto).")
    model: str | None = Field(
        None, description="The model that reads requests; null = rerank.model (with rerank.fallback_models)."
    )
    budget_s: float = Field(0.8, gt=0, le=10, description="Hard time budget per understanding call, retries included.")
    max_retries: int = Field(1, ge=0, le=3, description="Retries on 429/5xx only, and only while the budget allows.")
    cache_size: int = Field(2048, ge=0, description="Understood requests kept in memory, per normalised request.")
    skip_max_words: int = Field(
        3, ge=0, le=20, description="A first request of at most this many plain words (no operators) is not sent."
    )
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open the understanding breaker.")
    breaker_reset_s: float = Field(30.0, gt=0, description="How long that breaker stays open before one trial call.")
    max_usd_per_hour: float = Field(
        5.0, ge=0, description="Spend guard: past this many USD in the last hour, requests go to CLIP as typed."
    )
    conversation_secret: str | None = Field(
        None,
        repr=False,
        description="HMAC key that signs conversation state (the same on every replica); unset = a random key per "
        "process, so a conversation does not survive a restart or a hop to another replica.",
    )
    conversation_ttl_s: float = Field(1800.0, gt=0, description="A conversation idle longer than this starts afresh.")
    conversation_max_age_s: float = Field(
        8 * 3600.0, gt=0, description="A conversation older than this starts afresh, however busy."
    )
    conversation_max_turns: int = Field(30, ge=1, le=1000)


class ServiceSettings(Section):
    """The HTTP service: where it caches pulled indexes and how it follows the registry."""

    cache_dir: Path = Path("/tmp/clipsearch-cache")  # noqa: S108 - overridden by a volume in k8s
    images_dir: Path | None = Field(None, description="Local image cache served by /images/{photo_id}.")
    poll_interval_s: float = Field(30.0, gt=0, description="How often the champion alias is checked.")
    admin_token: str | None = Field(None, repr=False, description="Bearer token for /admin endpoints.")
    max_query_chars: int = Field(500, ge=1)
    max_k: int = Field(50, ge=1)
    max_candidates: int = Field(200, ge=1)
    drift_window: int = Field(1000, ge=10, description="Recent query embeddings kept for drift detection.")
    drift_interval_s: float = Field(300.0, gt=0)
    drift_min_queries: int = Field(50, ge=2)
    ui_enabled: bool = True
    batch_max_size: int = Field(32, ge=1, le=1024, description="Concurrent queries encoded and searched together.")
    batch_max_wait_ms: float = Field(2.0, ge=0, le=100, description="How long a query waits for company.")
    embedding_cache_size: int = Field(
        4096, ge=0, description="Repeated query texts skip the encoder, and repeated (text, k) skip the queue (LRU)."
    )
    queue_deadline_ms: float = Field(
        50.0,
        gt=0,
        le=10_000,
        description="Admission control: a query predicted to start later than this is answered at once with 503 + "
        "Retry-After instead of queueing (admitted queries keep their latency under overload).",
    )
    max_queue: int = Field(256, ge=1, le=100_000, description="Queries allowed to wait at once; beyond it, 503.")
    query_encoder: Literal["auto", "model"] = Field(
        "auto",
        description="auto: on CPU (with text_backend auto/onnx) serve text queries with the index artifact's own "
        "ONNX query encoder, without importing torch, when the artifact carries one; model: always load the torch "
        "model from model.pretrained.",
    )
    rate_limit_enabled: bool = Field(True, description="Per-client rate limits on /search (429 + Retry-After).")
    rate_limit_search: str = Field(
        "120/minute", description="Searches one client may make (`limits` notation: '120/minute', '10/second')."
    )
    rate_limit_rerank: str = Field(
        "20/minute", description="Re-ranked searches (paid Gemini calls) one client may make; lower than the above."
    )
    rate_limit_storage_uri: str = Field(
        "memory://", description="Where the counters live (`limits` storage URI); memory:// counts per replica."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of the proxies in front of the service. Only when the socket peer "
        "is one of them is X-Forwarded-For read (right to left, skipping trusted hops); otherwise the client "
        "is the peer. Empty: X-Forwarded-For is never read.",
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        le=120,
        description="After SIGTERM: /readyz answers 503 at once, requests are still served for this long (endpoints "
        "catch up), then the server stops accepting and finishes in-flight requests.",
    )
    max_body_bytes: int = Field(
        16384, ge=256, le=10_000_000, description="Request bodies larger than this are refused (413) before parsing."
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (CORS). Empty (the default): no CORS headers, "
        "so browsers refuse cross-origin reads.",
    )

    @field_validator("rate_limit_search", "rate_limit_rerank")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit like '120/minute' ({exc})") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value


class InputSettings(Section):
    """Query images (uploads, image URLs) are hostile input: caps on bytes and pixels, and a guarded URL fetcher.

    `fetch_allow_hosts` names hosts, IP addresses or networks (CIDR) that an image URL may reach although they
    are not public (loopback, private, link-local, metadata); empty in production. Env: a JSON list, e.g.
    `CLIPSEARCH_INPUTS__FETCH_ALLOW_HOSTS='["127.0.0.1"]'`.
    """

    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Bytes of one image.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, le=200_000_000, description="width x height before decoding (decompression bombs)."
    )
    fetch_connect_timeout_s: float = Field(3.0, gt=0, le=30)
    fetch_read_timeout_s: float = Field(5.0, gt=0, le=60, description="Longest wait for the next bytes.")
    fetch_total_timeout_s: float = Field(10.0, gt=0, le=120, description="Whole fetch, redirects included.")
    fetch_max_redirects: int = Field(3, ge=0, le=10)
    fetch_allow_hosts: list[str] = Field(
        default_factory=list, description="Hosts/IPs/CIDRs allowed although not public (tests: 127.0.0.1)."
    )


class _PrefixedEnvSource(EnvSettingsSource):
    """CLIPSEARCH_* variables, minus the few that name files or test tools rather than settings."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {name: value for name, value in self.env_vars.items() if name.upper() not in NON_SETTINGS_ENV}


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="CLIPSEARCH_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    understand: UnderstandSettings = Field(default_factory=UnderstandSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    inputs: InputSettings = Field(default_factory=InputSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        params = Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, _PrefixedEnvSource(settings_cls)]
        if params.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=params))
        return tuple(sources)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "CLIPSEARCH_" + "__".join(str(part).upper() for part in loc)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The field names valid where `loc` points (the top level or one section)."""
    if len(loc) <= 1:
        return list(Settings.model_fields)
    field = Settings.model_fields.get(str(loc[0]))
    section = field.annotation if field is not None else None
    if isinstance(section, type) and issubclass(section, BaseModel):
        return list(section.model_fields)
    return []


def describe_validation_error(exc: ValidationError, params_file: Path) -> str:
    """One line per problem, naming the key, where it can come from, and (for a typo) the likely key."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        dotted = ".".join(str(part) for part in loc)
        origin = f"in {params_file} or {_env_name(loc)}"
        if error["type"] == "extra_forbidden":
            known = _known_keys(loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'? " if close else ""
            lines.append(f"unknown setting '{dotted}' ({origin}): {hint}known keys here: {', '.join(known)}")
        else:
            lines.append(f"{dotted} = {error.get('input')!r} ({origin}): {error['msg']}")
    return "; ".join(lines)


def _unknown_env_sections(environ: Mapping[str, str]) -> list[str]:
    """CLIPSEARCH_<X>[__...] variables whose <X> is no section. pydantic-settings drops these silently (nested
    unknown keys, CLIPSEARCH_MODEL__TYPO, are caught by the sections' extra="forbid")."""
    sections = {name.upper() for name in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("CLIPSEARCH_") or upper in NON_SETTINGS_ENV:
            continue
        section = upper.removeprefix("CLIPSEARCH_").split("__", 1)[0]
        if section not in sections:
            close = difflib.get_close_matches(section, sorted(sections), n=1)
            hint = f"did you mean CLIPSEARCH_{close[0]}__...? " if close else ""
            problems.append(
                f"unknown environment variable {name}: {hint}settings variables are "
                f"CLIPSEARCH_<SECTION>__<FIELD> with a section of {', '.join(sorted(s.lower() for s in sections))}"
            )
    return problems


def load_settings(**overrides: object) -> Settings:
    """Settings from params.yaml + environment, or a ConfigError that names each bad or unknown key."""
    params = Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS_FILE))
    unknown = _unknown_env_sections(os.environ)
    if unknown:
        raise ConfigError(f"Invalid settings: {'; '.join(unknown)}. Fix or unset the variable.")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid settings: {describe_validation_error(exc, params)}. Fix the key in {params} (see "
            "clipsearch/settings.py for every field) or the environment variable named."
        ) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: read params.yaml and the environment once)."""
    return load_settings()
