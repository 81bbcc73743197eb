"""`SearchEngine`: the only code that answers a query (encode → search → re-rank), with per-stage timings.

The HTTP API, the chat page, the CLI and the `evaluate` stage all call `SearchEngine.search`, so what is
measured offline is what is served. The engine is immutable once built: the service swaps a whole engine
when a new index version arrives, so a request never mixes two versions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.compose import QueryVector, compose, encode_missing, gather_images, without_excluded
from clipsearch.errors import ArtifactError
from clipsearch.image_input import ImageLimits, QueryImage
from clipsearch.query import Query
from clipsearch.rerank.base import NoopReranker, RerankContext, Reranker, clip_order, rerank_context
from clipsearch.types import Candidate, RerankOutcome, SearchResult

if TYPE_CHECKING:
    from clipsearch.encoder import ClipEncoder
    from clipsearch.index.artifact import IndexArtifact
    from clipsearch.safe_fetch import SafeFetcher

__all__ = ["QueryVector", "SearchEngine", "load_engine"]


class SearchEngine:
    """An encoder, an index artifact built by that same encoder, and a re-ranker."""

    def __init__(self, encoder: ClipEncoder, artifact: IndexArtifact, reranker: Reranker | None = None) -> None:
        if encoder.identity != artifact.manifest.model:
            raise ArtifactError(
                f"The index at {artifact.path} was built with {artifact.manifest.model.describe()}, but the "
                f"encoder is {encoder.identity.describe()}. Vectors from different models are not comparable: "
                "serve this index with the model named in its manifest, or rebuild it with `dvc repro`."
            )
        self.encoder = encoder
        self.artifact = artifact
        self.reranker: Reranker = reranker or NoopReranker()
        # Query images (clipsearch.image_input / safe_fetch): set by the caller from `inputs` settings.
        self.image_limits = ImageLimits()
        self.fetcher: SafeFetcher | None = None

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

    def query_vector(
        self,
        query: Query,
        encoded: Mapping[str, QueryVector] | None = None,
        images: Mapping[str, QueryImage] | None = None,
    ) -> QueryVector:
        """The query's terms -> one unit vector: the normalised weighted sum of the terms' unit vectors
        (`clipsearch.compose`). Texts and images not in `encoded` (keyed by `compose.term_key`) are encoded here,
        each kind in one pass; images not in `images` are decoded (URLs fetched by `self.fetcher`); photo ids use
        the index's stored vectors. The result carries the echo of each term and the photo ids to exclude."""
        known = dict(encoded or {})
        decoded = dict(images or {})
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        gathered = gather_images(query, self.image_limits, self.fetcher, skip={**known, **decoded})
        if gathered:
            timings["image_input"] = (time.perf_counter() - t0) * 1000.0
            decoded.update(gathered)
        new, encode_timings = encode_missing(self.encoder, query, known, decoded)
        known.update(new)
        timings.update(encode_timings)
        return compose(query, known, self.artifact, decoded, timings)

    def search_query(self, query: Query) -> SearchResult:
        """Answer a composed `Query` (terms with weights; k, candidates, rerank): the CLI and evaluate path."""
        start = time.perf_counter()
        encoded = self.query_vector(query)
        t0 = time.perf_counter()
        depth = max(query.k, query.candidates)
        pool = self.retrieve(encoded.vector[None, :], depth + len(encoded.exclude))[0]
        pool = without_excluded(pool, encoded.exclude, depth)
        search_ms = (time.perf_counter() - t0) * 1000.0
        result = self.rank(
            query.text,
            encoded,
            pool,
            k=query.k,
            rerank=query.rerank != "off",
            started_at=start,
            timings_ms={"encode": 0.0, **encoded.timings_ms, "search": search_ms},
            context=rerank_context(query, encoded, self.artifact),
        )
        return result

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
        context: RerankContext | None = None,
    ) -> SearchResult:
        """Re-rank the retrieved pool (or keep CLIP order) and assemble the result; `timings_ms` gains
        `rerank` and `total` (measured from `started_at`). `context`: query images and terms to avoid."""
        t0 = time.perf_counter()
        if rerank and not isinstance(self.reranker, NoopReranker) and pool:
            if context is not None:
                outcome = self.reranker.rerank(query, pool, k, context=context)
            else:
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
            understood=encoded.terms,
        )


def load_engine(index_dir: Path, encoder: ClipEncoder, reranker: Reranker | None = None) -> SearchEngine:
    """Load and verify an artifact for this encoder (checksums, format, model identity), then build an engine."""
    from clipsearch.index.artifact import load_artifact

    artifact = load_artifact(index_dir, expected_model=encoder.identity)
    return SearchEngine(encoder, artifact, reranker)
