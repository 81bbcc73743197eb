"""Micro-batching of the query path's CPU/GPU work, and a cache of query embeddings.

Concurrent requests used to each run CLIP in their own threadpool thread, every one asking torch for all
cores: under load they fought over two cores and latency grew without bound. Here one worker thread owns
the model. It takes whatever requests are waiting (up to `max_batch`, after at most `max_wait_ms` for
company), encodes their texts in one forward pass (the expensive part: CLIP's text tower), then runs each
request's own filtered / hybrid retrieval (`SearchEngine.prepare`: selection, candidate lists, fusion, cut-off,
de-dup, sort, page) on the same thread, so the CPU work never fights over cores. A burst of N queries costs
one batched encode instead of N, and a lone query waits at most `max_wait_ms`. A query the engine refuses
(`QueryError`) fails only its own request.

Repeated query texts skip the encoder through an LRU of embeddings keyed by the text (the encoder is fixed for
the process, so text alone identifies the vector). A repeat of the whole query (every field) against the same
engine skips the queue altogether: its prepared page is cached and answered on the event loop.

Admission control (`admission.py`) bounds the queue: a query predicted to start later than the queue deadline,
or finding the queue full, is refused at once with `Overloaded` (the route answers 503 + Retry-After). A query
whose client disconnected while it waited is dropped before the worker spends anything on it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from clipsearch.engine import Prepared, QueryVector, SearchEngine
from clipsearch.query import Query
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
    submitted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # set by the event loop when the client went away; read by the worker


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

    @property
    def depth(self) -> int:
        """Queries waiting for the worker (not counting the batch in progress)."""
        return self._queue.qsize()

    def predicted_wait_s(self) -> float:
        return self.admission.predicted_wait_s(self.depth)

    def cached(self, engine: SearchEngine, query: Query) -> Retrieved | None:
        """The answer for a repeated query on this engine, without queueing; None when not cached."""
        hit = self.results.get((id(engine), _query_key(query)))
        if hit is None or hit[0] is not engine:
            return None
        # `finish` writes the page's order and cursor into its info: each answer gets its own copy
        prepared = replace(hit[1], info=copy.deepcopy(hit[1].info), timings_ms={"queue": 0.0, "encode": 0.0})
        return Retrieved(
            encoded=prepared.encoded, prepared=prepared, timings_ms=prepared.timings_ms, cached=True, batch_size=0
        )

    def submit(self, engine: SearchEngine, query: Query) -> _Job:
        """Queue a query, or raise `Overloaded` at once when it could not start within the queue deadline."""
        shed = self.admission.check(self.depth)
        if shed is not None:
            self._on_shed(shed.reason)
            raise Overloaded(shed)
        loop = asyncio.get_running_loop()
        job = _Job(engine=engine, query=query, loop=loop, future=loop.create_future())
        self._queue.put(job)
        return job

    async def retrieve(
        self,
        engine: SearchEngine,
        query: Query,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> Retrieved:
        """Encode + prepare `query` in the next batch. `disconnected`, when given, resolves once the client has
        gone: the query is then dropped (never started) and `ClientDisconnected` raised."""
        hit = self.cached(engine, query)
        if hit is not None:
            return hit
        job = self.submit(engine, query)
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

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

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
            self.results.put(
                (id(engine), _query_key(job.query)),
                (engine, replace(prepared, info=copy.deepcopy(prepared.info))),
            )
            result = Retrieved(
                encoded=vector,
                prepared=prepared,
                timings_ms=prepared.timings_ms,
                cached=from_cache,
                batch_size=len(jobs),
            )
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _query_key(query: Query) -> str:
    """Every field of the query, canonically: two queries share an answer only when nothing differs."""
    return json.dumps(query.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _set_result(future: asyncio.Future[Retrieved], value: Retrieved) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Retrieved], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
