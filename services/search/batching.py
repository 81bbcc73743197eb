"""Micro-batching of the query path's CPU/GPU work, and a cache of query embeddings.

Concurrent requests used to each run CLIP in their own threadpool thread, every one asking torch for all
cores: under load they fought over two cores and latency grew without bound. Here one worker thread owns
the model. It takes whatever requests are waiting (up to `max_batch`, after at most `max_wait_ms` for
company), encodes their texts in one forward pass and searches the index with one matrix product, then
hands each request its own slice. A burst of N queries costs about one batched pass instead of N single
passes, and a lone query waits at most `max_wait_ms`.

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

import numpy as np

from clipsearch.engine import QueryVector, SearchEngine
from clipsearch.rerank.lru import LruCache
from clipsearch.types import Candidate

log = logging.getLogger("services.search.batching")


@dataclass
class Retrieved:
    """What the batch worker hands back to one request."""

    encoded: QueryVector
    pool: list[Candidate]
    timings_ms: dict[str, float]
    cached: bool
    batch_size: int


@dataclass
class _Job:
    engine: SearchEngine
    text: str
    candidates: int
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

    async def retrieve(self, engine: SearchEngine, text: str, candidates: int) -> Retrieved:
        loop = asyncio.get_running_loop()
        job = _Job(engine=engine, text=text, candidates=candidates, loop=loop, future=loop.create_future())
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
            if job.text in encoded or job.text in missing:
                continue
            hit = self.cache.get(job.text)
            if hit is not None:
                encoded[job.text] = hit
                cached.add(job.text)
            else:
                missing.append(job.text)
        if missing:
            for text, vector in zip(missing, engine.encode_queries(missing), strict=True):
                encoded[text] = vector
                self.cache.put(text, vector)
        encoded_at = time.perf_counter()
        depth = max(job.candidates for job in jobs)
        pools = engine.retrieve(np.stack([encoded[job.text].vector for job in jobs]), depth)
        searched_at = time.perf_counter()
        encode_ms = (encoded_at - started) * 1000.0
        search_ms = (searched_at - encoded_at) * 1000.0
        for job, pool in zip(jobs, pools, strict=True):
            result = Retrieved(
                encoded=encoded[job.text],
                pool=pool[: job.candidates],
                timings_ms={
                    "queue": (started - job.submitted) * 1000.0,
                    "encode": 0.0 if job.text in cached else encode_ms,
                    "search": search_ms,
                },
                cached=job.text in cached,
                batch_size=len(jobs),
            )
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future[Retrieved], value: Retrieved) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Retrieved], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
