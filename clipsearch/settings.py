"""One typed settings object for the pipeline, the CLI and the service.

Values come from, highest priority first: keyword arguments, environment variables
(``CLIPSEARCH_<SECTION>__<FIELD>``, e.g. ``CLIPSEARCH_MODEL__PRETRAINED=/weights/vit-b-32.pt``), then
``params.yaml`` (the file DVC tracks, so a pipeline run is reproducible from git alone), then the defaults
below. The service reads the same object, so a cluster overrides a value with one env var in a ConfigMap.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PARAMS_ENV = "CLIPSEARCH_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"

# The real Unsplash Lite endpoint: `latest` redirects to the newest zip; a version string pins one.
UNSPLASH_LITE_URL = "https://unsplash.com/data/lite/latest"


class DatasetSettings(BaseModel):
    """Where Unsplash Lite comes from and how much of it to fetch."""

    url: str = UNSPLASH_LITE_URL
    version: str = "latest"
    sha256: str = Field(
        "", description="Expected sha256 of the zip; empty skips the check (only sensible with latest)."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N photos (a quick subset); null = all.")
    image_width: int = Field(400, ge=16, le=4096, description="Images are fetched resized with ?w=<width>.")
    concurrency: int = Field(16, ge=1, le=256)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0)
    max_failure_ratio: float = Field(0.02, ge=0, le=1, description="The download fails above this share of bad images.")
    data_dir: Path = Path("data")


class ModelSettings(BaseModel):
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
    onnx_quantize: Literal["none", "int8"] = Field(
        "none", description="With text_backend onnx: 'int8' dynamic quantisation (faster, cosine to fp32 >= 0.99)."
    )
    onnx_cache_dir: Path | None = Field(
        None, description="Where exported ONNX text towers are cached; default $XDG_CACHE_HOME/clipsearch/onnx."
    )
    batch_size: int = Field(64, ge=1, le=4096)
    num_workers: int = Field(2, ge=0, le=64, description="Image decode workers that run ahead of the model.")
    cache_dir: Path | None = Field(None, description="Where open_clip caches downloaded weights.")


class EmbedSettings(BaseModel):
    features_dir: Path = Path("data/features")
    chunk_size: int = Field(1024, ge=1, description="Images per resumable chunk file.")


class IndexSettings(BaseModel):
    """Which nearest-neighbour structure the artifact carries. `exact` is right up to ~1M vectors."""

    kind: Literal["exact", "hnsw", "ivf"] = "exact"
    exact_backend: Literal["numpy", "faiss"] = Field(
        "numpy",
        description="How `exact` scores: numpy BLAS, or FAISS's flat kernels (same top-k and scores within float "
        "rounding, ~2-5x faster for one query; float16-stored vectors stay float16 in memory).",
    )
    dtype: Literal["float16", "float32"] = "float16"
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=8)
    ivf_nlist: int = Field(1024, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    ivf_pq_m: int = Field(0, ge=0, description="0 = IVF-Flat; >0 = IVF-PQ with this many sub-quantizers.")
    output_dir: Path = Path("data/index")


class EvaluateSettings(BaseModel):
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


class RegistrySettings(BaseModel):
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


class SearchSettings(BaseModel):
    k: int = Field(4, ge=1, le=100)
    candidates: int = Field(10, ge=1, le=1000)


class RerankSettings(BaseModel):
    """The LLM re-ranker (Gemini through the maintained google-genai SDK). No API key -> CLIP order only."""

    enabled: bool = True
    model: str = Field("gemini-2.5-flash-lite", description="A current Flash-Lite model; gemini-1.5-flash is retired.")
    api_key: str | None = Field(None, description="Read from GEMINI_API_KEY; never logged.", repr=False)
    base_url: str | None = Field(None, description="Override the Gemini endpoint (tests, proxies).")
    budget_s: float = Field(1.5, gt=0, le=30, description="Hard time budget per re-rank call, retries included.")
    max_retries: int = Field(2, ge=0, le=5, description="Retries on 429/5xx only, and only while the budget allows.")
    thumbnail_px: int = Field(128, ge=32, le=1024, description="Longest side of the JPEG thumbnails sent to Gemini.")
    thumbnail_cache_size: int = Field(2048, ge=0)
    response_cache_size: int = Field(1024, ge=0, description="Identical (query, candidates) answers kept in memory.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit breaker.")
    breaker_reset_s: float = Field(30.0, gt=0, description="How long the breaker stays open before one trial call.")
    price_input_per_mtok: float = Field(0.10, ge=0, description="USD per million input tokens (for cost metrics).")
    price_output_per_mtok: float = Field(0.40, ge=0, description="USD per million output tokens.")
    quota_requests_per_minute: int = Field(4000, ge=1, description="The project's Gemini RPM quota (alerting).")


class ServiceSettings(BaseModel):
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
    embedding_cache_size: int = Field(4096, ge=0, description="Repeated query texts skip the encoder (LRU).")


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="CLIPSEARCH_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if params.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=params))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: read params.yaml and the environment once)."""
    return Settings()
