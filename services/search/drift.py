"""The service's drift monitor: recent query embeddings in a ring buffer, checked against the served index's
reference queries by `clipsearch.drift.compute_drift` (the stateless Evidently check, documented there).

The request path only copies one vector into a preallocated ring buffer (`DriftMonitor.record`); every
Evidently call runs later, in a worker thread (`run_periodically`) or in the batch job (`drift_job`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.drift import (
    DEFAULT_MAX_ROWS,
    DEFAULT_METHOD,
    MIN_ROWS,
    DriftInputError,
    DriftResult,
    as_matrix,
    compute_drift,
)

if TYPE_CHECKING:
    from evidently.metrics.embeddings import DriftMethod

log = logging.getLogger(__name__)


class DriftMonitor:
    """Recent query embeddings and top-1 scores in a bounded ring buffer, checked against a reference.

    `record` is the only call on the request path: O(dim), one short lock, no allocation after the first
    call. `compute` copies the window under the lock and runs Evidently outside it, so recording never waits
    for a check. One `compute` runs at a time.

    On an index swap (`set_reference`) the window is kept when the encoder stays the same: those queries are
    still comparable with the new index's reference, and discarding them would blind the check for the next
    `min_queries` requests. It is cleared when the dimension or the `model_key` changes (another encoder's
    vectors live in another space). The previous result is dropped, since it describes the old reference.
    """

    def __init__(
        self,
        window: int = 1000,
        min_queries: int = 50,
        *,
        method: str | DriftMethod = DEFAULT_METHOD,
        max_rows: int = DEFAULT_MAX_ROWS,
        html: bool = True,
        threads: int = 1,
    ) -> None:
        if window < 1 or min_queries < 1:
            raise ValueError("window and min_queries must be positive")
        self.window = window
        self.min_queries = min_queries
        self.method = method
        self.max_rows = max_rows
        self.html = html
        self.threads = threads
        self._lock = threading.Lock()  # guards the buffer, the reference and the latest result
        self._compute_lock = threading.Lock()
        self._buf: np.ndarray | None = None  # (window, dim) float32, allocated on first record
        self._top1 = np.full(window, np.nan, dtype=np.float32)
        self._next = 0
        self._count = 0
        self._dropped = 0
        self._reference: np.ndarray | None = None
        self._index_version: str | None = None
        self._model_key: str | None = None
        self._latest: DriftResult | None = None
        self._latest_html: str | None = None
        self._reason: str | None = "no drift check has run yet"

    # ----------------------------------------------------------------------------- request path

    def record(self, embedding: npt.ArrayLike, top1: float | None) -> None:
        """Add one query embedding (dim,) or (1, dim) and its top-1 cosine score (None: no result)."""
        row = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if row.size == 0 or not np.isfinite(row).all():
            with self._lock:
                self._dropped += 1
            return
        score = np.nan if top1 is None else float(top1)
        with self._lock:
            if self._buf is None or self._buf.shape[1] != row.size:
                if self._buf is not None:
                    log.warning(
                        "query dimension changed from %d to %d: drift window cleared", self._buf.shape[1], row.size
                    )
                self._reset_window(row.size)
            assert self._buf is not None
            self._buf[self._next] = row
            self._top1[self._next] = score
            self._next = (self._next + 1) % self.window
            self._count = min(self._count + 1, self.window)

    # ----------------------------------------------------------------------------- reads

    def __len__(self) -> int:
        return self._count

    @property
    def dropped(self) -> int:
        """Embeddings refused by `record` because they were empty or not finite."""
        return self._dropped

    def snapshot(self) -> np.ndarray:
        """A copy of the window, oldest first: float32 (n, dim); (0, dim) or (0, 0) when empty."""
        return self._window()[0]

    def window_npy(self) -> bytes:
        """The window as an .npy body (the `/admin/drift-window` contract read by `drift_job`)."""
        buf = io.BytesIO()
        np.save(buf, self.snapshot(), allow_pickle=False)
        return buf.getvalue()

    @property
    def latest(self) -> DriftResult | None:
        return self._latest

    @property
    def latest_html(self) -> str | None:
        return self._latest_html

    @property
    def reason(self) -> str | None:
        """Why there is no current result (None when `latest` is fresh)."""
        return self._reason

    @property
    def reference_size(self) -> int:
        ref = self._reference
        return 0 if ref is None else int(ref.shape[0])

    def to_response(self) -> dict[str, Any]:
        """The fields of `schemas.DriftResponse` for the latest check (or why there is none)."""
        latest = self._latest
        if latest is None:
            return {"available": False, "reason": self._reason, "index_version": self._index_version}
        return {
            "available": True,
            "reason": None,
            "drift_score": latest.drift_score,
            "drift_detected": latest.drift_detected,
            "method": latest.method,
            "threshold": latest.threshold,
            "n_current": latest.n_current,
            "n_reference": latest.n_reference,
            "computed_at": latest.computed_at,
            "index_version": latest.index_version,
        }

    # ----------------------------------------------------------------------------- reference and checks

    def set_reference(
        self, reference: npt.ArrayLike | None, *, index_version: str | None = None, model_key: str | None = None
    ) -> None:
        """Use `reference` (m, dim) from now on; None disables checks. See the class docstring for the window.

        `model_key` identifies the encoder (e.g. `ModelIdentity.describe()`); when given and different from the
        previous one, the window is cleared. Raises `DriftInputError` for a malformed reference.
        """
        ref = None if reference is None else as_matrix(reference, "reference")
        with self._lock:
            encoder_changed = model_key is not None and self._model_key is not None and model_key != self._model_key
            dim_changed = ref is not None and self._buf is not None and self._buf.shape[1] != ref.shape[1]
            if encoder_changed or dim_changed:
                log.info("drift window cleared: the new index uses another encoder")
                self._reset_window(ref.shape[1] if ref is not None else None)
            self._reference = ref
            self._index_version = index_version
            if model_key is not None:
                self._model_key = model_key
            self._latest = None
            self._latest_html = None
            self._reason = (
                "the served index has no reference_queries.npy; rebuild it with reference queries to enable drift checks"
                if ref is None
                else "no drift check has run since the index changed"
            )

    def compute(self) -> DriftResult | None:
        """Check the window against the reference now (blocking; call it in a worker thread).

        Returns None, with `reason` saying why, when there is no reference, too few queries, or the two
        cannot be compared. Other failures raise.
        """
        with self._compute_lock:
            current, top1 = self._window()
            with self._lock:
                reference, version = self._reference, self._index_version
            needed = max(self.min_queries, MIN_ROWS)
            if reference is None:
                self._set_reason(
                    "no reference: the served index has no reference_queries.npy; rebuild it with reference queries"
                )
                return None
            if current.shape[0] < needed:
                self._set_reason(
                    f"{current.shape[0]} queries recorded since start or the last encoder change; "
                    f"a drift check needs at least {needed}"
                )
                return None
            checked = self._check(reference, current, top1, version, html=self.html)
            if checked is None:
                return None
            result, page = checked
            with self._lock:
                if self._reference is not reference:  # swapped while computing: this result is for the old one
                    return None
                self._latest, self._latest_html, self._reason = result, page, None
            log.info("drift check: %s", result.summary())
            return result

    def _check(
        self, reference: np.ndarray, current: np.ndarray, top1: np.ndarray, version: str | None, *, html: bool
    ) -> tuple[DriftResult, str | None] | None:
        """Run Evidently on one window; None (with `reason` set) when the inputs cannot be compared."""
        try:
            return compute_drift(
                reference,
                current,
                method=self.method,
                html=html,
                max_rows=self.max_rows,
                top1=top1,
                index_version=version,
                threads=self.threads,
            )
        except DriftInputError as exc:
            self._set_reason(str(exc))
            return None

    def render_html(self) -> str | None:
        """Evidently's HTML report for the latest check, built on demand (its t-SNE costs seconds of CPU, so a
        serving replica checks without HTML and renders a report only when someone asks for one)."""
        with self._lock:
            if self._latest_html is not None or self._latest is None:
                return self._latest_html
            reference, version = self._reference, self._index_version
        if reference is None:
            return None
        current, top1 = self._window()
        checked = self._check(reference, current, top1, version, html=True)
        if checked is None:
            return None
        page = checked[1]
        with self._lock:
            if self._reference is reference:
                self._latest_html = page
        return page

    async def run_periodically(self, interval_s: float, on_result: Callable[[DriftResult], None] | None = None) -> None:
        """Every `interval_s`, run `compute` in a worker thread and hand results to `on_result`.

        Runs until cancelled; an exception in a check or in `on_result` is logged and the loop goes on.
        """
        while True:
            await asyncio.sleep(interval_s)
            try:
                result = await asyncio.to_thread(self.compute)
            except Exception:
                log.exception("drift check failed; retrying in %.0fs", interval_s)
                continue
            if result is None:
                log.info("drift check skipped: %s", self._reason)
                continue
            if on_result is not None:
                try:
                    on_result(result)
                except Exception:
                    log.exception("drift result callback failed")

    # ----------------------------------------------------------------------------- internals

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._buf is None:
                return np.zeros((0, 0 if self._reference is None else self._reference.shape[1]), np.float32), np.zeros(
                    0, np.float32
                )
            if self._count < self.window:
                return self._buf[: self._count].copy(), self._top1[: self._count].copy()
            order = np.r_[self._next : self.window, 0 : self._next]
            return self._buf[order], self._top1[order]

    def _reset_window(self, dim: int | None) -> None:
        """Drop every recorded query (caller holds `_lock`)."""
        self._buf = None if dim is None else np.zeros((self.window, dim), dtype=np.float32)
        self._top1.fill(np.nan)
        self._next = 0
        self._count = 0

    def _set_reason(self, reason: str) -> None:
        with self._lock:
            self._reason = reason
