"""Micro-batching of the query path's CPU/GPU work, and a cache of query embeddings.

Concurrent requests used to each run CLIP in their own threadpool thread, every one asking torch for all
cores: under load they fought over two cores and latency grew without bound. Here one worker thread owns
the model. It takes whatever requests are waiting (up to `max_batch`, after at most `max_wait_ms` for
company), encodes their texts in one forward pass (the expensive part: CLIP's text tower), then runs each
request's own filtered / hybrid retrieval (`SearchEngine.prepare`: selection, candidate lists, fusion, cut-off,
de-dup, sort, page) on the same thread, so the CPU work never fights over cores. A burst of N queries costs
one batched encode instead of N, and a lone query waits at most `max_wait_ms`. A query the engine refuses
(`QueryError`) fails only its own request.

Composed queries (`clipsearch.query.Query`: texts, images, image URLs, photo ids with weights) go through the
same worker: the texts of every waiting query are encoded in one pass and their images in another (images are
decoded and URLs fetched by the route before a job is queued, so the worker only runs the model). Each job's
vector is then composed (`SearchEngine.query_vector`: the normalised weighted sum; photo ids use stored vectors)
and prepared. A query of photo ids only ("more like this") has nothing to encode: it skips the queue and runs
on one persistent direct thread (`retrieve_direct`).

Repeated query texts skip the encoder through an LRU of embeddings keyed by the text (the encoder is fixed for
the process, so text alone identifies the vector); uploaded images are cached beside them by the sha256 of their
bytes (`compose.term_key`). A repeat of the whole query (every field; image bytes by their sha256,
`clipsearch.query.query_key`) against the same engine skips the queue altogether: its prepared page is cached
and answered on the event loop.

Admission control (`admission.py`) bounds the queue: a query predicted to start later than the queue deadline,
or finding the queue full, is refused at once with `Overloaded` (the route answers 503 + Retry-After). A query
whose client disconnected while it waited is dropped before the worker spends anything on it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from clipsearch.compose import image_terms, term_key
from clipsearch.engine import Prepared, QueryVector, SearchEngine
from clipsearch.image_input import QueryImage
from clipsearch.query import Query, query_key
from clipsearch.rerank.lru import LruCache
from services.search.admission import AdmissionControl, Overloaded, Shed

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
    images: dict[str, QueryImage] = field(default_factory=dict)  # decoded image terms, by `compose.term_key`
    submitted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # set by the event loop when the client went away; read by the worker

    @property
    def keys(self) -> list[str]:
        """The cacheable terms' keys (texts and uploaded images; URLs are fetched afresh, photo ids are free)."""
        return [term_key(t) for t in self.query.terms if t.text is not None or t.image is not None]


class ClientDisconnected(Exception):  # noqa: N818
    """The client went away while its query waited; nothing was computed for it."""


class QueryBatcher:
    """One worker thread that encodes and searches waiting queries together, behind admission control."""

    def __init__(
        self,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        cache_size: int = 4096,
        queue_deadline_ms: float = 50.0,
        max_queue: int = 256,
        on_shed: Callable[[str], None] | None = None,
        on_abandoned: Callable[[], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.cache: LruCache[str, QueryVector] = LruCache(cache_size)
        # (engine id, the whole query) -> (engine, prepared page): a repeat skips the queue entirely
        self.results: LruCache[tuple[int, str], tuple[SearchEngine, Prepared]] = LruCache(cache_size)
        self.admission = AdmissionControl(queue_deadline_ms / 1000.0, max_queue, cold_queue=max_batch)
        self._on_shed = on_shed or (lambda reason: None)  # noqa: ARG005
        self._on_abandoned = on_abandoned or (lambda: None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()
        # Queries with nothing to encode run here: one persistent thread, so FAISS/BLAS keep their thread team
        # (a fresh pool thread per request paid to build one) and no request waits for the batch's company.
        self._direct = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-direct")

    @property
    def depth(self) -> int:
        """Queries waiting for the worker (not counting the batch in progress)."""
        return self._queue.qsize()

    def predicted_wait_s(self) -> float:
        return self.admission.predicted_wait_s(self.depth)

    def cached(self, engine: SearchEngine, query: Query) -> Retrieved | None:
        """The answer for a repeated query on this engine, without queueing; None when not cached."""
        hit = self.results.get((id(engine), query_key(query)))
        if hit is None or hit[0] is not engine:
            return None
        # `finish` writes the page's order and cursor into its info: each answer gets its own copy
        # every stage the first answer reported, at 0 ms: nothing was queued, encoded or searched this time
        stages = {"queue": 0.0, "encode": 0.0, **dict.fromkeys(hit[1].timings_ms, 0.0)}
        prepared = replace(hit[1], info=copy.deepcopy(hit[1].info), timings_ms=stages)
        return Retrieved(
            encoded=prepared.encoded, prepared=prepared, timings_ms=prepared.timings_ms, cached=True, batch_size=0
        )

    def submit(self, engine: SearchEngine, query: Query, images: dict[str, QueryImage] | None = None) -> _Job:
        """Queue a query (its image terms already decoded: `compose.gather_images`), or raise `Overloaded` at once
        when it could not start within the queue deadline."""
        shed = self.admission.check(self.depth)
        if shed is not None:
            self._on_shed(shed.reason)
            raise Overloaded(shed)
        loop = asyncio.get_running_loop()
        job = _Job(engine=engine, query=query, loop=loop, future=loop.create_future(), images=dict(images or {}))
        self._queue.put(job)
        return job

    async def retrieve(
        self,
        engine: SearchEngine,
        query: Query,
        disconnected: Callable[[], Awaitable[object]] | None = None,
        images: dict[str, QueryImage] | None = None,
    ) -> Retrieved:
        """Encode + prepare `query` in the next batch. `disconnected`, when given, resolves once the client has
        gone: the query is then dropped (never started) and `ClientDisconnected` raised. `images`: its decoded
        image terms (by `compose.term_key`)."""
        hit = self.cached(engine, query)
        if hit is not None:
            return hit
        job = self.submit(engine, query, images)
        if disconnected is None:
            try:
                return await job.future
            except asyncio.CancelledError:
                job.abandoned = True
                raise
        watcher: asyncio.Future[object] = asyncio.ensure_future(disconnected())
        mine: asyncio.Future[object] = job.future  # type: ignore[assignment]
        try:
            done, _ = await asyncio.wait({mine, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            if watcher.exception() is not None:  # the disconnect watch itself failed: just wait for the answer
                log.warning("disconnect watch failed", extra={"reason": repr(watcher.exception())})
                return await job.future
            job.abandoned = True
            raise ClientDisconnected("the client disconnected before its query started")
        except asyncio.CancelledError:
            job.abandoned = True
            raise
        finally:
            watcher.cancel()

    async def retrieve_direct(self, engine: SearchEngine, query: Query) -> Retrieved:
        """A query with nothing to encode (photo ids only), on the direct thread (see `direct_prepare`); the result
        cache serves its repeats as it does the batched ones."""
        hit = self.cached(engine, query)
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(self._direct, direct_prepare, engine, query)
        self._remember(engine, query, got.prepared)
        return got

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._direct.shutdown(wait=False)

    def _remember(self, engine: SearchEngine, query: Query, prepared: Prepared) -> None:
        if self.results.max_size <= 0:  # caching off: no key to build, no page to copy
            return
        self.results.put((id(engine), query_key(query)), (engine, replace(prepared, info=copy.deepcopy(prepared.info))))

    # -- worker ---------------------------------------------------------------------------------------
    def _live(self, job: _Job, now: float) -> bool:
        """False for a job not worth starting: its client left, or it waited far past the deadline."""
        if job.abandoned or job.future.cancelled():
            self._on_abandoned()
            return False
        if self.admission.expired(job.submitted, now):
            waited_ms = (now - job.submitted) * 1000.0
            shed = Shed(
                "expired",
                f"overloaded: this query waited {waited_ms:.0f} ms without starting (queue deadline "
                f"{self.admission.deadline_s * 1000.0:.0f} ms); retry shortly",
                1,
                round(waited_ms, 3),
            )
            self._on_shed(shed.reason)
            job.loop.call_soon_threadsafe(_set_exception, job.future, Overloaded(shed))
            return False
        return True

    def _collect(self, first: _Job) -> list[_Job]:
        now = time.perf_counter()
        jobs = [first] if self._live(first, now) else []
        deadline = now + self.max_wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            if self._live(job, time.perf_counter()):
                jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._collect(first)
            if not jobs:
                continue
            self.admission.batch_started(len(jobs))
            started = time.perf_counter()
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
            self.admission.batch_done(len(jobs), time.perf_counter() - started)

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
        # every waiting query's new texts in one pass, then their new images in one pass
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
        encode_images = getattr(engine.encoder, "encode_query_images", None)
        if images and encode_images is not None:  # without a vision tower, query_vector refuses the job below
            t0 = time.perf_counter()
            keys = list(images)
            try:
                vectors = encode_images([images[k].image for k in keys])
            except Exception as exc:  # the vision tower failed: these image queries only
                log.exception("query image encode failed")
                vectors = None
                failed: BaseException | None = exc
            else:
                failed = None
                for key, vector in zip(keys, vectors, strict=True):
                    known[key] = QueryVector(vector=vector, truncated=False)
                    if key.startswith("\x00image:"):
                        self.cache.put(key, known[key])
            image_ms = (time.perf_counter() - t0) * 1000.0
        else:
            failed = None
        for job in jobs:
            keys = job.keys
            uses_text = any(t.text is not None for t in job.query.terms)
            uses_image = bool(image_terms(job.query))
            all_cached = bool(keys) and all(k in cached for k in keys)
            timings = {"queue": (started - job.submitted) * 1000.0}
            timings["encode"] = text_ms if uses_text and not all_cached else 0.0
            if uses_image:
                timings["image_encode"] = image_ms if not all_cached else 0.0
            try:
                if uses_image and failed is not None:
                    raise failed
                vector = engine.query_vector(job.query, known, job.images)
                prepared = engine.prepare(job.query, vector, timings_ms={**timings, **_image_input(vector)})
            except Exception as exc:  # a refused query (QueryError) or a bug: this request only
                job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            self._remember(engine, job.query, prepared)
            result = Retrieved(
                encoded=vector,
                prepared=prepared,
                timings_ms=prepared.timings_ms,
                cached=all_cached,
                batch_size=len(jobs),
            )
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _image_input(vector: QueryVector) -> dict[str, float]:
    """Decode time of images the route did not decode (none in the service; kept for direct callers)."""
    return {k: v for k, v in vector.timings_ms.items() if k == "image_input"}


def direct_prepare(engine: SearchEngine, query: Query) -> Retrieved:
    """A query with nothing to encode (photo ids only): its vector and page, in the caller's thread."""
    vector = engine.query_vector(query)  # stored vectors: no encoder runs
    prepared = engine.prepare(query, vector, timings_ms={"queue": 0.0, "encode": 0.0})
    return Retrieved(encoded=vector, prepared=prepared, timings_ms=prepared.timings_ms, cached=False, batch_size=1)


def _set_result(future: asyncio.Future[Retrieved], value: Retrieved) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Retrieved], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
