"""Micro-batching of the query path's CPU/GPU work, and a cache of query embeddings.

Concurrent requests used to each run CLIP in their own threadpool thread, every one asking torch for all
cores: under load they fought over two cores and latency grew without bound. Here one worker thread owns
the model. It takes whatever requests are waiting (up to `max_batch`, after at most `max_wait_ms` for
company), encodes their texts in one forward pass and searches the index with one matrix product, then
hands each request its own slice. A burst of N queries costs about one batched pass instead of N single
passes, and a lone query waits at most `max_wait_ms`.

Repeated queries skip the encoder through an LRU of embeddings keyed by the query text (the encoder is
fixed for the process, so text alone identifies the vector).

Composed queries (`clipsearch.query.Query`: texts, images, image URLs, photo ids with weights) go through the
same worker: the texts of every waiting query are encoded in one pass and their images in another (images are
decoded and URLs fetched by the route before a job is queued, so the worker only runs the model). Uploaded
images are cached by the sha256 of their bytes beside the texts (`compose.term_key`); photo ids need no
encoder. Each job's vector is then composed (`SearchEngine.query_vector`), and all jobs search in one product.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from clipsearch.compose import image_terms, term_key, without_excluded
from clipsearch.engine import QueryVector, SearchEngine
from clipsearch.image_input import QueryImage
from clipsearch.query import Query, Term
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
    query: Query
    images: dict[str, QueryImage]
    candidates: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Retrieved]
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def keys(self) -> list[str]:
        """The cacheable terms' keys (texts and uploaded images; URLs are fetched afresh, photo ids are free)."""
        return [term_key(t) for t in self.query.terms if t.text is not None or t.image is not None]


class QueryBatcher:
    """One worker thread that encodes and searches waiting queries together."""

    def __init__(self, max_batch: int = 32, max_wait_ms: float = 2.0, cache_size: int = 4096) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.cache: LruCache[str, QueryVector] = LruCache(cache_size)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()
        # Queries with nothing to encode run here: one persistent thread, so FAISS/BLAS keep their thread team
        # (a fresh pool thread per request paid to build one) and no request waits for the batch's company.
        self._direct = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-direct")

    async def retrieve(self, engine: SearchEngine, text: str, candidates: int) -> Retrieved:
        """One text query (the plain path)."""
        return await self.retrieve_query(engine, Query(terms=[Term(text=text)]), {}, candidates)

    async def retrieve_query(
        self, engine: SearchEngine, query: Query, images: dict[str, QueryImage], candidates: int
    ) -> Retrieved:
        """A composed query whose image terms are already decoded (`compose.gather_images`): its vector and
        its `candidates` nearest photos (photo-id terms excluded)."""
        loop = asyncio.get_running_loop()
        job = _Job(
            engine=engine,
            query=query,
            images=images,
            candidates=candidates,
            loop=loop,
            future=loop.create_future(),
        )
        self._queue.put(job)
        return await job.future

    async def retrieve_direct(self, engine: SearchEngine, query: Query, candidates: int) -> Retrieved:
        """A query with nothing to encode (photo ids only), on the direct thread (see `direct_retrieve`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._direct, direct_retrieve, engine, query, candidates)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._direct.shutdown(wait=False)

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
        known: dict[str, QueryVector] = {}
        cached: set[str] = set()
        for job in jobs:
            for key in job.keys:
                if key in known:
                    continue
                hit = self.cache.get(key)
                if hit is not None:
                    known[key] = hit
                    cached.add(key)
        texts = list(
            dict.fromkeys(t.text for job in jobs for t in job.query.terms if t.text is not None and t.text not in known)
        )
        text_ms = image_ms = 0.0
        if texts:
            for text, vector in zip(texts, engine.encode_queries(texts), strict=True):
                known[text] = vector
                self.cache.put(text, vector)
            text_ms = (time.perf_counter() - started) * 1000.0
        images: dict[str, QueryImage] = {}
        for job in jobs:
            for _, term in image_terms(job.query):
                key = term_key(term)
                if key not in known and key in job.images:
                    images.setdefault(key, job.images[key])
        if images:
            t0 = time.perf_counter()
            keys = list(images)
            vectors = engine.encoder.encode_query_images([images[k].image for k in keys])
            for key, vector in zip(keys, vectors, strict=True):
                known[key] = QueryVector(vector=vector, truncated=False)
                if key.startswith("\x00image:"):
                    self.cache.put(key, known[key])
            image_ms = (time.perf_counter() - t0) * 1000.0
        composed: list[QueryVector | BaseException] = []
        for job in jobs:
            try:
                composed.append(engine.query_vector(job.query, known, job.images))
            except Exception as exc:  # one job's bad term (a photo id not in the index) fails only that job
                composed.append(exc)
        encoded_at = time.perf_counter()
        good = [(job, qv) for job, qv in zip(jobs, composed, strict=True) if isinstance(qv, QueryVector)]
        for job, qv in zip(jobs, composed, strict=True):
            if not isinstance(qv, QueryVector):
                job.loop.call_soon_threadsafe(_set_exception, job.future, qv)
        if not good:
            return
        depth = max(job.candidates + len(qv.exclude) for job, qv in good)
        pools = engine.retrieve(np.stack([qv.vector for _, qv in good]), depth)
        searched_at = time.perf_counter()
        search_ms = (searched_at - encoded_at) * 1000.0
        for (job, qv), pool in zip(good, pools, strict=True):
            keys = job.keys
            uses_text = any(t.text is not None for t in job.query.terms)
            uses_image = bool(image_terms(job.query))
            all_cached = bool(keys) and all(k in cached for k in keys)
            timings = {"queue": (started - job.submitted) * 1000.0}
            timings["encode"] = text_ms if uses_text and not all_cached else 0.0
            if uses_image:
                timings["image_encode"] = image_ms if not all_cached else 0.0
            timings["search"] = search_ms
            result = Retrieved(
                encoded=qv,
                pool=without_excluded(pool, qv.exclude, job.candidates),
                timings_ms=timings,
                cached=all_cached,
                batch_size=len(jobs),
            )
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def direct_retrieve(engine: SearchEngine, query: Query, candidates: int) -> Retrieved:
    """A query with nothing to encode (photo ids only): its vector and pool, in the caller's thread."""
    started = time.perf_counter()
    encoded = engine.query_vector(query)  # stored vectors: no encoder runs
    pool = engine.retrieve(encoded.vector[None, :], candidates + len(encoded.exclude))[0]
    done = time.perf_counter()
    return Retrieved(
        encoded=encoded,
        pool=without_excluded(pool, encoded.exclude, candidates),
        timings_ms={"encode": 0.0, "search": (done - started) * 1000.0},
        cached=False,
        batch_size=1,
    )


def _set_result(future: asyncio.Future[Retrieved], value: Retrieved) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Retrieved], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
