"""`SearchEngine`: the only code that answers a query (encode → search → re-rank), with per-stage timings.

The HTTP API, the chat page, the CLI and the `evaluate` stage all call `SearchEngine.search`, so what is
measured offline is what is served. The engine is immutable once built: the service swaps a whole engine
when a new index version arrives, so a request never mixes two versions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from clipsearch.errors import ArtifactError
from clipsearch.rerank.base import NoopReranker, Reranker, clip_order
from clipsearch.types import Candidate, RerankOutcome, SearchResult

if TYPE_CHECKING:
    from clipsearch.identity import ModelIdentity
    from clipsearch.index.artifact import IndexArtifact


class QueryEncoder(Protocol):
    """What the engine needs to encode text queries: `ClipEncoder` (torch) or the artifact's ONNX encoder."""

    @property
    def identity(self) -> ModelIdentity: ...

    def encode_text_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]: ...


@dataclass(frozen=True)
class QueryVector:
    """An encoded query: the unit vector and whether the text was cut to CLIP's context length."""

    vector: np.ndarray
    truncated: bool


class SearchEngine:
    """An encoder, an index artifact built by that same encoder, and a re-ranker."""

    def __init__(self, encoder: QueryEncoder, artifact: IndexArtifact, reranker: Reranker | None = None) -> None:
        if encoder.identity != artifact.manifest.model:
            raise ArtifactError(
                f"The index at {artifact.path} was built with {artifact.manifest.model.describe()}, but the "
                f"encoder is {encoder.identity.describe()}. Vectors from different models are not comparable: "
                "serve this index with the model named in its manifest, or rebuild it with `dvc repro`."
            )
        self.encoder = encoder
        self.artifact = artifact
        self.reranker: Reranker = reranker or NoopReranker()

    @property
    def index_version(self) -> str:
        return self.artifact.version

    def encode_query(self, query: str) -> QueryVector:
        """Encode one query (EOT-truncated text path); report whether it exceeded CLIP's context."""
        return self.encode_queries([query])[0]

    def encode_queries(self, queries: Sequence[str]) -> list[QueryVector]:
        """Encode a batch of queries in one forward pass (the service micro-batches concurrent requests)."""
        vectors, truncated = self.encoder.encode_text_with_flags(list(queries))
        return [QueryVector(vector=v, truncated=t) for v, t in zip(vectors, truncated, strict=True)]

    def retrieve(self, vectors: np.ndarray, candidates: int) -> list[list[Candidate]]:
        """The nearest `candidates` photos for each row of `vectors`, in one batched index search."""
        scores, rows = self.artifact.index.search(np.asarray(vectors, dtype=np.float32), candidates)
        return [self.artifact.candidates_for(r, s) for r, s in zip(rows, scores, strict=True)]

    def search(self, query: str, k: int = 4, candidates: int = 10, rerank: bool = True) -> SearchResult:
        """Answer one query: the best `k` of the index's top `candidates`, re-ranked when asked and possible."""
        start = time.perf_counter()
        encoded = self.encode_query(query)
        encoded_at = time.perf_counter()
        return self.search_vector(
            query,
            encoded,
            k=k,
            candidates=candidates,
            rerank=rerank,
            started_at=start,
            encode_ms=(encoded_at - start) * 1000.0,
        )

    def search_vector(
        self,
        query: str,
        encoded: QueryVector,
        *,
        k: int = 4,
        candidates: int = 10,
        rerank: bool = True,
        started_at: float | None = None,
        encode_ms: float = 0.0,
    ) -> SearchResult:
        """The part of `search` after encoding, for callers that encode in batches or cache embeddings."""
        start = started_at if started_at is not None else time.perf_counter()
        t0 = time.perf_counter()
        pool = self.retrieve(encoded.vector[None, :], max(k, candidates))[0]
        search_ms = (time.perf_counter() - t0) * 1000.0
        return self.rank(
            query,
            encoded,
            pool,
            k=k,
            rerank=rerank,
            started_at=start,
            timings_ms={"encode": encode_ms, "search": search_ms},
        )

    def rank(
        self,
        query: str,
        encoded: QueryVector,
        pool: list[Candidate],
        *,
        k: int,
        rerank: bool,
        started_at: float,
        timings_ms: dict[str, float],
    ) -> SearchResult:
        """Re-rank the retrieved pool (or keep CLIP order) and assemble the result; `timings_ms` gains
        `rerank` and `total` (measured from `started_at`)."""
        t0 = time.perf_counter()
        if rerank and not isinstance(self.reranker, NoopReranker) and pool:
            outcome = self.reranker.rerank(query, pool, k)
        else:
            outcome = RerankOutcome(
                results=clip_order(pool, k),
                applied=False,
                fallback_reason="not_requested" if not rerank else "disabled",
            )
        done = time.perf_counter()
        return SearchResult(
            results=outcome.results,
            query=query,
            timings_ms={**timings_ms, "rerank": (done - t0) * 1000.0, "total": (done - started_at) * 1000.0},
            rerank_applied=outcome.applied,
            rerank_fallback_reason=None if outcome.applied else outcome.fallback_reason,
            query_truncated=encoded.truncated,
            index_version=self.index_version,
            rerank_detail=outcome.detail,
            rerank_usage=outcome.usage,
            rerank_model=outcome.model,
        )


def load_engine(index_dir: Path, encoder: QueryEncoder, reranker: Reranker | None = None) -> SearchEngine:
    """Load and verify an artifact for this encoder (checksums, format, model identity), then build an engine."""
    from clipsearch.index.artifact import load_artifact

    artifact = load_artifact(index_dir, expected_model=encoder.identity)
    return SearchEngine(encoder, artifact, reranker)
