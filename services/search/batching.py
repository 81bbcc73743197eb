"""Micro-batching of the query path's CPU/GPU work, and a cache of query embeddings.

Concurrent requests used to each run CLIP in their own threadpool thread, every one asking torch for all
cores: under load they fought over two cores and latency grew without bound. Here one worker thread owns
the model. It takes whatever requests are waiting (up to `max_batch`, after at most `max_wait_ms` for
company), encodes their texts in one forward pass (the expensive part: CLIP's text tower), then runs each
request's own filtered / hybrid retrieval (`SearchEngine.prepare`: selection, candidate lists, fusion, cut-off,
de-dup, sort, page) on the same thread, so the CPU work never fights over cores. A burst of N queries costs
one batched encode instead of N, and a lone query waits at most `max_wait_ms`. A query the engine refuses
(`QueryError`) fails only its own request.

Repeated queries skip the encoder through an LRU of embeddings keyed by the query text (the encoder is
fixed for the process, so text alone identifies the vector).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from clipsearch.engine import Prepared, QueryVector, SearchEngine
from clipsearch.query import Query
from clipsearch.rerank.lru import LruCache

log = logging.getLogger("services.search.batching")


@dataclass
class Retrieved:
    """What the batch worker hands back to one request."""

    encoded: QueryVector
    prepared: Prepared  # the page, ready for `SearchEngine.finish` (re-rank or not)
    timings_ms: dict[str, float]
    cached: bool
    batch_size: int


@dataclass
class _Job:
    engine: SearchEngine
    query: Query
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Retrieved]
    submitted: float = field(default_factory=time.perf_counter)


class QueryBatcher:
    """One worker thread that encodes and searches waiting queries together."""

    def __init__(self, max_batch: int = 32, max_wait_ms: float = 2.0, cache_size: int = 4096) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.cache: LruCache[str, QueryVector] = LruCache(cache_size)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()

    async def retrieve(self, engine: SearchEngine, query: Query) -> Retrieved:
        loop = asyncio.get_running_loop()
        job = _Job(engine=engine, query=query, loop=loop, future=loop.create_future())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # -- worker ---------------------------------------------------------------------------------------
    def _collect(self, first: _Job) -> list[_Job]:
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._collect(first)
            by_engine: dict[int, list[_Job]] = {}
            for job in jobs:  # a swap may land between two jobs: each batch uses one engine
                by_engine.setdefault(id(job.engine), []).append(job)
            for group in by_engine.values():
                try:
                    self._process(group)
                except Exception as exc:
                    log.exception("query batch failed")
                    for job in group:
                        job.loop.call_soon_threadsafe(_set_exception, job.future, exc)

    def _process(self, jobs: list[_Job]) -> None:
        engine = jobs[0].engine
        started = time.perf_counter()
        encoded: dict[str, QueryVector] = {}
        cached: set[str] = set()
        missing: list[str] = []
        for job in jobs:
            for term in job.query.terms:
                text = term.text
                if text is None or text in encoded or text in missing:
                    continue
                hit = self.cache.get(text)
                if hit is not None:
                    encoded[text] = hit
                    cached.add(text)
                else:
                    missing.append(text)
        if missing:
            for text, vector in zip(missing, engine.encode_queries(missing), strict=True):
                encoded[text] = vector
                self.cache.put(text, vector)
        encode_ms = (time.perf_counter() - started) * 1000.0
        for job in jobs:
            texts = [t.text for t in job.query.terms if t.text is not None]
            from_cache = bool(texts) and all(text in cached for text in texts)
            timings = {"queue": (started - job.submitted) * 1000.0, "encode": 0.0 if from_cache else encode_ms}
            try:
                vector = engine.query_vector(job.query, encoded)
                prepared = engine.prepare(job.query, vector, timings_ms=timings)
            except Exception as exc:  # a refused query (QueryError) or a bug: this request only
                job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            result = Retrieved(
                encoded=vector,
                prepared=prepared,
                timings_ms=prepared.timings_ms,
                cached=from_cache,
                batch_size=len(jobs),
            )
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future[Retrieved], value: Retrieved) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Retrieved], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
