"""The service's micro-batcher: concurrent queries share one encode + one index search, answers stay per query."""

from __future__ import annotations

import asyncio
import threading

import pytest

from clipsearch.engine import load_engine
from clipsearch.query import Filters, Query, QueryError
from services.search.admission import Overloaded
from services.search.batching import ClientDisconnected, QueryBatcher
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
    assert not first.cached
    assert second.cached
    assert second.timings_ms["encode"] == 0.0
    assert len(first.prepared.page) == 2
    assert len(second.prepared.page) == 5
    assert batcher.cache.hits == 1


def test_a_failing_batch_fails_its_requests_not_the_worker(engine, monkeypatch) -> None:
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=0)

    def broken(*_):
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
    assert not isinstance(good, BaseException)
    assert len(good.prepared.page) == 2
    assert isinstance(refused, QueryError)
    assert "filters.country" in str(refused)


class _Gate:
    """Holds the worker inside a batch until released, so a test can arrange the queue behind it."""

    def __init__(self, engine, monkeypatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.encoded: list[str] = []
        real = engine.encode_queries

        def encode(queries):
            self.encoded.extend(queries)
            self.entered.set()
            assert self.release.wait(30), "test never released the worker"
            return real(queries)

        monkeypatch.setattr(engine, "encode_queries", encode)


def test_a_query_whose_client_left_is_dropped_before_it_starts(engine, monkeypatch) -> None:
    gate = _Gate(engine, monkeypatch)
    abandoned: list[int] = []
    batcher = QueryBatcher(max_batch=1, max_wait_ms=0.0, cache_size=0, on_abandoned=lambda: abandoned.append(1))
    batcher.admission.batch_done(size=1, seconds=0.0)  # measured as free: only the queue limit applies

    async def run():
        first = asyncio.ensure_future(batcher.retrieve(engine, plain("forest", 2)))
        await asyncio.to_thread(gate.entered.wait, 30)
        gone = asyncio.Event()
        second = asyncio.ensure_future(batcher.retrieve(engine, plain("beach", 2), disconnected=gone.wait))
        await asyncio.sleep(0)  # let it queue
        gone.set()
        with pytest.raises(ClientDisconnected):
            await second
        gate.release.set()
        await first
        return await batcher.retrieve(engine, plain("mountain", 2))  # the worker moved past the dropped job

    try:
        assert len(asyncio.run(run()).prepared.page) == 2
    finally:
        gate.release.set()
        batcher.close()
    assert "beach" not in gate.encoded
    assert gate.encoded[0] == "forest"
    assert abandoned == [1]


def test_a_full_queue_sheds_at_once_with_a_reason(engine, monkeypatch) -> None:
    gate = _Gate(engine, monkeypatch)
    shed: list[str] = []
    batcher = QueryBatcher(max_batch=1, max_wait_ms=0.0, cache_size=0, max_queue=2, on_shed=shed.append)
    batcher.admission.batch_done(size=1, seconds=0.0)  # measured as free: only the queue limit applies

    async def run():
        first = asyncio.ensure_future(batcher.retrieve(engine, plain("forest", 2)))
        await asyncio.to_thread(gate.entered.wait, 30)
        waiting = [asyncio.ensure_future(batcher.retrieve(engine, plain(w, 2))) for w in ("beach", "city")]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(Overloaded) as info:
            await batcher.retrieve(engine, plain("river", 2))
        gate.release.set()
        await asyncio.gather(first, *waiting)
        return info.value.shed

    try:
        refused = asyncio.run(run())
    finally:
        gate.release.set()
        batcher.close()
    assert refused.reason == "queue_full"
    assert refused.retry_after_s >= 1
    assert shed == ["queue_full"]
    assert "river" not in gate.encoded


def test_a_predicted_late_start_sheds(engine) -> None:
    shed: list[str] = []
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=0, queue_deadline_ms=50.0, on_shed=shed.append)
    batcher.admission.batch_done(size=1, seconds=10.0)  # as if each query cost 10 s
    batcher.admission.batch_started(size=1)

    async def run():
        with pytest.raises(Overloaded) as info:
            await batcher.retrieve(engine, plain("forest", 2))
        return info.value.shed

    try:
        refused = asyncio.run(run())
    finally:
        batcher.close()
    assert refused.reason == "deadline"
    assert refused.retry_after_s >= 10
    assert shed == ["deadline"]


def test_a_repeated_query_skips_the_queue_even_when_shedding(engine) -> None:
    batcher = QueryBatcher(max_batch=4, max_wait_ms=0.0, cache_size=8)

    async def run():
        first = await batcher.retrieve(engine, plain("night city", 3))
        batcher.admission.batch_done(size=1, seconds=10.0)
        batcher.admission.batch_started(size=1)  # the queue now sheds every new query...
        again = await batcher.retrieve(engine, plain("night city", 3))  # ...but not a repeat
        with pytest.raises(Overloaded):
            await batcher.retrieve(engine, plain("night city", 4))  # another k is a new search
        return first, again

    try:
        first, again = asyncio.run(run())
    finally:
        batcher.close()
    assert again.cached
    assert again.batch_size == 0
    assert again.timings_ms["queue"] == 0.0
    assert [c.photo_id for c in again.prepared.page] == [c.photo_id for c in first.prepared.page]


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
            *(
                batcher.retrieve(
                    engine, q.model_copy(update={"k": 3, "candidates": 3}), images=gather_images(q, ImageLimits(), None)
                )
                for q in queries
            )
        )

    try:
        answers = asyncio.run(both())
    finally:
        batcher.close()
    assert calls == [2]
    assert answers[0].batch_size == 2
    assert "photo1" not in [c.photo_id for c in answers[1].prepared.page]
    for query, answer in zip(queries, answers, strict=True):
        alone = engine.query_vector(query)
        assert float(alone.vector @ answer.encoded.vector) > 0.9999
        assert {"image_encode", "encode", "search"} <= set(answer.timings_ms)
    assert term_key(queries[0].terms[0]) in batcher.cache  # uploaded images are cached by their bytes' sha256
