"""SearchEngine: the one query path. Encode -> search -> re-rank, per-stage timings, refusal of a foreign index."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from clipsearch.engine import SearchEngine, load_engine
from clipsearch.errors import ArtifactError
from clipsearch.identity import ModelIdentity
from clipsearch.index.artifact import write_artifact
from clipsearch.rerank.base import RerankContext
from clipsearch.settings import IndexSettings
from clipsearch.types import Candidate, RankedResult, RerankOutcome
from clipsearch_devtools.artifacts import metadata_frame

WORDS = ["red car", "green forest", "blue ocean", "night city", "white snow", "desert dunes"]


def _artifact(tmp_path, encoder, model: ModelIdentity | None = None):
    vectors = encoder.encode_text(WORDS)  # text vectors stand in for images: each word finds itself first
    ids = [f"photo{i}" for i in range(len(WORDS))]
    metadata = metadata_frame(ids, description=WORDS, photographer="A. Person")
    write_artifact(
        tmp_path / "index", vectors, ids, metadata, model or encoder.identity, IndexSettings(dtype="float32"), "test@0"
    )
    return tmp_path / "index"


class Reverse:
    """A re-ranker that reverses CLIP order and explains itself."""

    name = "reverse"

    def rerank(
        self,
        query: str,  # noqa: ARG002 - protocol
        candidates: Sequence[Candidate],
        k: int,
        *,
        context: RerankContext | None = None,  # noqa: ARG002
    ) -> RerankOutcome:
        ranked = list(reversed(candidates))[:k]
        results = [RankedResult(candidate=c, rank=i + 1, reason=f"reversed {c.photo_id}") for i, c in enumerate(ranked)]
        return RerankOutcome(results=results, applied=True, usage={"prompt_tokens": 10.0})


def test_search_returns_the_nearest_with_timings(tmp_path, tiny_encoder) -> None:
    engine = load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder)
    result = engine.search_text("night city", k=3, candidates=5)
    assert [r.rank for r in result.results] == [1, 2, 3]
    assert result.results[0].candidate.photo_id == "photo3"
    assert result.results[0].candidate.score == pytest.approx(1.0, abs=1e-4)
    assert set(result.timings_ms) == {"encode", "select", "search", "rank", "rerank", "total"}
    assert result.timings_ms["total"] >= result.timings_ms["search"]
    assert result.rerank_applied is False
    assert result.rerank_fallback_reason == "disabled"
    assert result.index_version == engine.index_version


def test_reranker_is_applied_only_when_asked(tmp_path, tiny_encoder) -> None:
    engine = load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder, reranker=Reverse())
    applied = engine.search_text("night city", k=2, candidates=6)
    assert applied.rerank_applied
    assert applied.results[0].reason
    assert applied.results[0].candidate.photo_id != "photo3"
    assert applied.rerank_usage == {"prompt_tokens": 10.0}
    skipped = engine.search_text("night city", k=2, candidates=6, rerank=False)
    assert skipped.results[0].candidate.photo_id == "photo3"
    assert skipped.rerank_fallback_reason == "not_requested"


def test_long_queries_are_flagged_as_truncated(tmp_path, tiny_encoder) -> None:
    engine = load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder)
    assert engine.search_text(" ".join(["forest"] * 120), k=1).query_truncated is True
    assert engine.search_text("forest", k=1).query_truncated is False


def test_an_index_of_another_model_is_refused(tmp_path, tiny_encoder) -> None:
    foreign = ModelIdentity(arch="ViT-B-32", pretrained="openai", weights_sha256="0" * 64, dim=tiny_encoder.dim)
    path = _artifact(tmp_path, tiny_encoder, model=foreign)
    with pytest.raises(ArtifactError, match="ViT-B-32/openai"):
        load_engine(path, tiny_encoder)
    from clipsearch.index.artifact import load_artifact

    with pytest.raises(ArtifactError, match="not comparable"):
        SearchEngine(tiny_encoder, load_artifact(path))
    assert np.isfinite(tiny_encoder.encode_text(["x"])).all()
