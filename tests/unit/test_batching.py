"""The service's micro-batcher: concurrent queries share one encode + one index search, answers stay per query."""

from __future__ import annotations

import asyncio

import pytest

from clipsearch.engine import load_engine
from services.search.batching import QueryBatcher
from tests.unit.test_engine import WORDS, _artifact


@pytest.fixture
def engine(tmp_path, tiny_encoder):
    return load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder)


def test_concurrent_queries_are_batched_and_answered_individually(engine) -> None:
    batcher = QueryBatcher(max_batch=16, max_wait_ms=20.0, cache_size=0)

    async def burst():
        return await asyncio.gather(*(batcher.retrieve(engine, word, 3) for word in WORDS * 2))

    try:
        answers = asyncio.run(burst())
    finally:
        batcher.close()
    assert max(a.batch_size for a in answers) > 1
    for word, answer in zip(WORDS * 2, answers, strict=True):
        expected = engine.search(word, k=3, candidates=3, rerank=False)
        assert [c.photo_id for c in answer.pool] == [r.candidate.photo_id for r in expected.results]
        assert answer.pool[0].score == pytest.approx(expected.results[0].candidate.score, abs=1e-5)
        assert set(answer.timings_ms) == {"queue", "encode", "search"}


def test_repeated_queries_hit_the_embedding_cache(engine) -> None:
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=8)

    async def twice():
        first = await batcher.retrieve(engine, "night city", 2)
        second = await batcher.retrieve(engine, "night city", 5)
        return first, second

    try:
        first, second = asyncio.run(twice())
    finally:
        batcher.close()
    assert not first.cached and second.cached
    assert second.timings_ms["encode"] == 0.0
    assert len(first.pool) == 2 and len(second.pool) == 5
    assert batcher.cache.hits == 1


def test_a_failing_batch_fails_its_requests_not_the_worker(engine, monkeypatch) -> None:
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=0)

    def broken(queries):
        raise RuntimeError("model exploded")

    async def run():
        monkeypatch.setattr(engine, "encode_queries", broken)
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.retrieve(engine, "forest", 2)
        monkeypatch.undo()
        return await batcher.retrieve(engine, "forest", 2)

    try:
        assert len(asyncio.run(run()).pool) == 2
    finally:
        batcher.close()


def test_composed_jobs_share_one_image_pass(engine, monkeypatch) -> None:
    """Images of concurrent queries are encoded in one call; photo ids need no encoder; answers stay per query."""
    import io

    from PIL import Image

    from clipsearch.compose import gather_images, term_key
    from clipsearch.image_input import ImageLimits
    from clipsearch.query import Query, Term

    def png(color):
        out = io.BytesIO()
        Image.new("RGB", (32, 24), color).save(out, format="PNG")
        return out.getvalue()

    calls: list[int] = []
    original = engine.encoder.encode_query_images

    def counting(images):
        calls.append(len(images))
        return original(images)

    monkeypatch.setattr(engine.encoder, "encode_query_images", counting)
    queries = [
        Query(terms=[Term(image=png((200, 0, 0))), Term(text="people", weight=-1)]),
        Query(terms=[Term(image=png((0, 0, 200))), Term(photo_id="photo1")]),
    ]
    batcher = QueryBatcher(max_batch=8, max_wait_ms=50.0, cache_size=16)

    async def both():
        return await asyncio.gather(
            *(batcher.retrieve_query(engine, q, gather_images(q, ImageLimits(), None), 3) for q in queries)
        )

    try:
        answers = asyncio.run(both())
    finally:
        batcher.close()
    assert calls == [2] and answers[0].batch_size == 2
    assert "photo1" not in [c.photo_id for c in answers[1].pool]
    for query, answer in zip(queries, answers, strict=True):
        alone = engine.query_vector(query)
        assert float(alone.vector @ answer.encoded.vector) > 0.9999
        assert {"image_encode", "encode", "search"} <= set(answer.timings_ms)
    assert term_key(queries[0].terms[0]) in batcher.cache  # uploaded images are cached by their bytes' sha256
