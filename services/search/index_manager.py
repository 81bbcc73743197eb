"""Which index the service serves: pull `models:/<name>@champion`, verify, load beside the old one, swap.

A request takes one reference to the current `ServingIndex` and uses it to the end, so a swap (a single
attribute assignment) can never make a request mix two versions, and a version is only published after
its checksums, manifest and model identity have been verified and the engine has answered a warm-up query.

When the registry is unreachable at start, the last verified version in the local cache is served and
flagged `stale`; with no cache the service stays not-ready and says why. When it becomes unreachable while
serving, the current version goes on serving, flagged `stale` with the reason, until the registry answers again.
A version that cannot be pulled (download cut, cache not writable, verification failed) is refused with the
reason; the current version keeps serving and the next poll tries again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipsearch.engine import SearchEngine
from clipsearch.errors import ArtifactError, ClipsearchError, RegistryError
from clipsearch.registry import RegisteredVersion, download_index, resolve_alias
from clipsearch.rerank.base import Reranker
from clipsearch.settings import Settings
from services.search.encoders import QueryEncoders

log = logging.getLogger("services.search.index")

CURRENT_POINTER = "current.json"  # names the last verified version in the cache directory
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class ServingIndex:
    """An engine ready to answer queries, and where it came from."""

    engine: SearchEngine
    registry_version: str | None
    path: Path
    loaded_at: float

    @property
    def index_version(self) -> str:
        return self.engine.index_version


class IndexManager:
    """Owns the currently served index and its encoder (see `encoders.py`); follows the registry alias."""

    def __init__(
        self,
        settings: Settings,
        encoder: QueryEncoders,
        reranker: Reranker,
        on_swap: list[Callable[[ServingIndex, bool], None]] | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.reranker = reranker
        self.cache_dir = settings.service.cache_dir / "indexes"
        self.current: ServingIndex | None = None
        self.stale = False
        self.not_ready_reason: str | None = "starting: the index has not been loaded yet"
        self.last_error: str | None = None
        self._swap_lock = threading.Lock()
        self._listeners = on_swap if on_swap is not None else []

    # -- loading ----------------------------------------------------------------------------------------
    def _load_verified(self, index_dir: Path, registry_version: str | None) -> ServingIndex:
        """Verify an artifact against its encoder and warm the engine; raises on any mismatch."""
        encoder, artifact = self.encoder.load(index_dir)
        engine = SearchEngine(encoder, artifact, self.reranker, self.settings.search)
        engine.search_text("warm-up", k=1, candidates=1, rerank=False)
        return ServingIndex(engine=engine, registry_version=registry_version, path=index_dir, loaded_at=time.time())

    def _publish(self, serving: ServingIndex, stale: bool) -> None:
        with self._swap_lock:
            previous = self.current
            self.current = serving
            self.stale = stale
            self.not_ready_reason = None
            if not stale:
                self.last_error = None
        if serving.registry_version is not None and not stale:
            self._write_pointer(serving)
        log.info(
            "serving index",
            extra={
                "index_version": serving.index_version,
                "registry_version": serving.registry_version,
                "stale": stale,
                "previous": previous.index_version if previous else None,
            },
        )
        for listener in self._listeners:
            listener(serving, stale)

    def _write_pointer(self, serving: ServingIndex) -> None:
        pointer = self.cache_dir / CURRENT_POINTER
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "registry_version": serving.registry_version,
                    "path": str(serving.path),
                    "index_version": serving.index_version,
                }
            )
        )
        tmp.replace(pointer)
        self._prune(keep=serving.path.parent)

    def _prune(self, keep: Path) -> None:
        versions = sorted(
            (p for p in self.cache_dir.glob("v*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for old in versions[KEEP_VERSIONS:]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def pull(self, version: RegisteredVersion) -> ServingIndex:
        """Download (if not cached), verify and warm a registered version. The old one keeps serving meanwhile."""
        self._check_cache_writable()
        try:
            index_dir = download_index(self.settings.registry, version.version, self.cache_dir)
        except OSError as exc:  # e.g. the volume filled up or turned read-only half-way
            raise ArtifactError(self._cache_problem(exc)) from exc
        try:
            return self._load_verified(index_dir, version.version)
        except ArtifactError:
            # A corrupt cached copy must not stick: drop it so a later attempt downloads afresh.
            shutil.rmtree(index_dir.parent, ignore_errors=True)
            raise

    def _cache_problem(self, exc: OSError) -> str:
        return (
            f"the index cache {self.cache_dir} is not writable ({exc.strerror or exc}); the version cannot be "
            "downloaded. The current version keeps serving; make the cache volume writable by the service user."
        )

    def _check_cache_writable(self) -> None:
        """Refuse before downloading anything when the cache cannot take a new version."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise ArtifactError(self._cache_problem(exc)) from exc

    def load_from_cache(self) -> ServingIndex | None:
        pointer = self.cache_dir / CURRENT_POINTER
        if not pointer.is_file():
            return None
        info = json.loads(pointer.read_text())
        return self._load_verified(Path(info["path"]), info.get("registry_version"))

    def load_initial(self) -> None:
        """Start-up: the champion from the registry; else the last verified cached version (stale); else not ready."""
        try:
            version = resolve_alias(self.settings.registry)
            self._publish(self.pull(version), stale=False)
            return
        except RegistryError as exc:
            registry_problem = str(exc)
        except ClipsearchError as exc:
            registry_problem = f"the champion version could not be served: {exc}"
        log.warning("registry unavailable at start", extra={"reason": registry_problem})
        try:
            cached = self.load_from_cache()
        except ClipsearchError as exc:
            cached = None
            registry_problem += f"; the cached index is unusable too: {exc}"
        if cached is not None:
            self._publish(cached, stale=True)
            self.last_error = registry_problem
            return
        self.not_ready_reason = f"no index to serve: {registry_problem} (and no verified version in {self.cache_dir})"

    def check_for_update(self, force: bool = False) -> str:
        """One poll of the alias; load and swap a new version. Returns what happened, for logs and /admin."""
        try:
            version = resolve_alias(self.settings.registry)
        except RegistryError as exc:
            self.last_error = str(exc)
            current = self.current
            if current is not None and not self.stale:  # keep serving; say so in /readyz and the stale gauge
                log.warning("registry unreachable; serving the current version", extra={"reason": str(exc)})
                self._publish(current, stale=True)
                self.last_error = str(exc)
            return f"registry unreachable: {exc}"
        current = self.current
        if current is not None and current.registry_version == version.version and not force:
            if self.stale:  # the registry is back and names what we already serve
                self._publish(current, stale=False)
                return f"registry reachable again; version {version.version} confirmed"
            return f"version {version.version} already served"
        try:
            serving = self.pull(version)
        except ClipsearchError as exc:
            self.last_error = f"version {version.version} refused: {exc}"
            log.error("index version refused", extra={"registry_version": version.version, "reason": str(exc)})
            raise
        self._publish(serving, stale=False)
        return f"now serving version {version.version} ({serving.index_version})"
