"""The service's micro-batcher: concurrent queries share one encode + one index search, answers stay per query."""

from __future__ import annotations

import asyncio

import pytest

from clipsearch.engine import load_engine
from clipsearch.query import Filters, Query, QueryError
from services.search.batching import QueryBatcher
from tests.unit.test_engine import WORDS, _artifact


def plain(text: str, k: int) -> Query:
    return Query.from_text(text, k=k, candidates=k, rerank="off")


@pytest.fixture
def engine(tmp_path, tiny_encoder):
    return load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder)


def test_concurrent_queries_are_batched_and_answered_individually(engine) -> None:
    batcher = QueryBatcher(max_batch=16, max_wait_ms=20.0, cache_size=0)

    async def burst():
        return await asyncio.gather(*(batcher.retrieve(engine, plain(word, 3)) for word in WORDS * 2))

    try:
        answers = asyncio.run(burst())
    finally:
        batcher.close()
    assert max(a.batch_size for a in answers) > 1
    for word, answer in zip(WORDS * 2, answers, strict=True):
        expected = engine.search_text(word, k=3, candidates=3, rerank=False)
        assert [c.photo_id for c in answer.prepared.page] == [r.candidate.photo_id for r in expected.results]
        assert answer.prepared.page[0].score == pytest.approx(expected.results[0].candidate.score, abs=1e-5)
        assert set(answer.timings_ms) >= {"queue", "encode", "select", "search", "rank"}


def test_repeated_queries_hit_the_embedding_cache(engine) -> None:
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=8)

    async def twice():
        first = await batcher.retrieve(engine, plain("night city", 2))
        second = await batcher.retrieve(engine, plain("night city", 5))
        return first, second

    try:
        first, second = asyncio.run(twice())
    finally:
        batcher.close()
    assert not first.cached and second.cached
    assert second.timings_ms["encode"] == 0.0
    assert len(first.prepared.page) == 2 and len(second.prepared.page) == 5
    assert batcher.cache.hits == 1


def test_a_failing_batch_fails_its_requests_not_the_worker(engine, monkeypatch) -> None:
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=0)

    def broken(queries):
        raise RuntimeError("model exploded")

    async def run():
        monkeypatch.setattr(engine, "encode_queries", broken)
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.retrieve(engine, plain("forest", 2))
        monkeypatch.undo()
        return await batcher.retrieve(engine, plain("forest", 2))

    try:
        assert len(asyncio.run(run()).prepared.page) == 2
    finally:
        batcher.close()


def test_a_refused_query_fails_only_its_own_request(engine) -> None:
    batcher = QueryBatcher(max_batch=8, max_wait_ms=20.0, cache_size=0)
    bad = Query.from_text("night city", filters=Filters(country=["Iceland"]))  # this index has no country column

    async def mixed():
        return await asyncio.gather(
            batcher.retrieve(engine, plain("white snow", 2)), batcher.retrieve(engine, bad), return_exceptions=True
        )

    try:
        good, refused = asyncio.run(mixed())
    finally:
        batcher.close()
    assert not isinstance(good, BaseException) and len(good.prepared.page) == 2
    assert isinstance(refused, QueryError) and "filters.country" in str(refused)
