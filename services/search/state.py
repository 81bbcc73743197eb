"""The service's state (encoder, index manager, re-ranker, drift, batcher) and the dependencies that
hand it to routes. Created in the lifespan; a request reads `ServingIndex` once (see `serving_index`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from clipsearch.drift import DriftResult
from clipsearch.errors import ClipsearchError
from clipsearch.image_input import ImageLimits
from clipsearch.rerank.base import NoopReranker
from clipsearch.rerank.gemini import GeminiReranker, build_reranker
from clipsearch.safe_fetch import FetchPolicy, SafeFetcher
from clipsearch.settings import Settings
from services.search.batching import QueryBatcher
from services.search.drift import DriftMonitor
from services.search.encoders import QueryEncoders
from services.search.index_manager import IndexManager, ServingIndex
from services.search.ratelimit import RequestLimiter
from services.search.telemetry import Metrics
from services.search.understanding import build_turns

log = logging.getLogger("services.search")


class ServiceState:
    """Everything the routes need, created in the lifespan and reached through `Depends(state)`."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoders = QueryEncoders(settings)
        images_dir = settings.service.images_dir
        reranker, self._reranker_status = build_reranker(settings.rerank, images_dir)
        self.reranker = reranker
        self.rerank_available = not isinstance(reranker, NoopReranker)
        if isinstance(reranker, GeminiReranker):
            metrics.watch_reranker_models(reranker.model_availability, settings.rerank.model)
            metrics.watch_spend(reranker.spend.snapshot)
        self.drift = DriftMonitor(
            window=settings.service.drift_window, min_queries=settings.service.drift_min_queries, html=False
        )
        self.index = IndexManager(settings, self.encoders, reranker, on_swap=[self._on_swap])
        self.encoder_ready = False
        self.batcher = QueryBatcher(
            max_batch=settings.service.batch_max_size,
            max_wait_ms=settings.service.batch_max_wait_ms,
            cache_size=settings.service.embedding_cache_size,
            queue_deadline_ms=settings.service.queue_deadline_ms,
            max_queue=settings.service.max_queue,
            on_shed=lambda reason: metrics.shed.labels(reason=reason).inc(),
            on_abandoned=metrics.abandoned.inc,
        )
        metrics.queue_depth.set_function(lambda: self.batcher.depth)
        metrics.queue_predicted_wait.set_function(self.batcher.predicted_wait_s)
        self.limiter = RequestLimiter(settings.service, metrics)
        self.draining = False  # set on SIGTERM (services.search.drain): /readyz answers 503 from then on
        self.image_limits = ImageLimits.from_settings(settings.inputs)  # query images (uploads and URLs)
        self.fetcher = SafeFetcher(FetchPolicy.from_settings(settings.inputs))
        self.tasks: list[asyncio.Task[None]] = []
        self._drift_reference_of: str | None = None
        self.turns = build_turns(settings)  # query understanding + conversations (clipsearch.understand)

    @property
    def reranker_status(self) -> str:
        """The re-ranker's state now: which model answers, or `unavailable: <model> was not found`."""
        if isinstance(self.reranker, GeminiReranker):
            return self.reranker.status()
        return self._reranker_status

    def _on_swap(self, serving: ServingIndex, stale: bool) -> None:
        self.metrics.set_index(serving.index_version, serving.registry_version, len(serving.engine.artifact), stale)
        if serving.index_version == self._drift_reference_of:
            return  # the same index re-published (e.g. no longer stale): keep the drift window and result
        self._drift_reference_of = serving.index_version
        self.metrics.index_swaps.inc()
        artifact = serving.engine.artifact
        self.drift.set_reference(
            artifact.reference_queries,
            index_version=serving.index_version,
            model_key=artifact.manifest.model.describe(),
        )

    async def start(self) -> None:
        if isinstance(self.reranker, GeminiReranker):
            self.tasks.append(asyncio.create_task(self._check_reranker_models(self.reranker)))
        await asyncio.to_thread(self._load)
        self.tasks.append(asyncio.create_task(self._follow(self.settings.service.poll_interval_s)))
        self.tasks.append(
            asyncio.create_task(self.drift.run_periodically(self.settings.service.drift_interval_s, self._on_drift))
        )

    def _load(self) -> None:
        """Start-up, and its retries: the encoder first (once it works), then the champion or the cache."""
        if not self.encoder_ready:
            try:
                self.encoders.warm_start()  # the torch model when it will serve; nothing in artifact-first mode
                self.encoder_ready = True
            except Exception as exc:
                self.index.not_ready_reason = f"the CLIP encoder could not be loaded: {exc}"
                log.error("encoder load failed", extra={"reason": str(exc)})
                return
        self.index.load_initial()

    async def _follow(self, interval_s: float) -> None:
        """Poll the registry alias forever; retry start-up while not ready. Never dies on an error."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.index.current is None:
                    await asyncio.to_thread(self._load)
                else:
                    await asyncio.to_thread(self.index.check_for_update)
            except ClipsearchError:
                self.metrics.index_refusals.inc()
            except Exception:
                log.exception("index follow loop error")

    async def _check_reranker_models(self, reranker: GeminiReranker) -> None:
        """Once at start-up (a key is set): does each configured model exist? Logged, and shown in /readyz."""
        try:
            found = await asyncio.to_thread(reranker.check_models)
        except Exception:
            log.exception("re-rank model check failed")
            return
        ok = found.get(self.settings.rerank.model) == "found"
        (log.info if ok else log.warning)("re-rank model check", extra={"models": found, "reranker": reranker.status()})

    def _on_drift(self, result: DriftResult) -> None:
        self.metrics.drift_score.set(result.drift_score)
        self.metrics.drift_detected.set(1 if result.drift_detected else 0)

    async def stop(self) -> None:
        self.batcher.close()
        self.fetcher.close()
        if self.turns.understander is not None:
            self.turns.understander.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain `def` dependency in its threadpool, a needless hop per request
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(state)]


async def serving_index(svc: StateDep) -> ServingIndex:
    """The index this request will use from start to end (a single reference: swaps cannot split it)."""
    current = svc.index.current
    if current is None or not svc.encoder_ready:
        raise HTTPException(503, detail=f"not ready: {svc.index.not_ready_reason or 'warming up'}")
    return current


ServingDep = Annotated[ServingIndex, Depends(serving_index)]
