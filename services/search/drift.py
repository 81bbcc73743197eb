"""Embedding drift of live queries against the index's reference queries, with Evidently 0.7's `EmbeddingsDrift`.

Why this shape:
- The reference is the evaluation queries' embeddings shipped in the index artifact (`reference_queries.npy`);
  the current window is what users asked recently. Drift means users now ask for things the evaluation did
  not measure, so the offline metrics stop describing what is served.
- The request path only copies one vector into a preallocated ring buffer (`DriftMonitor.record`); every
  Evidently call runs later, in a worker thread (`run_periodically`) or in the batch job (`drift_job`).
- Default method: Evidently's domain classifier (`ModelDriftMethod`, the `model()` method) with a bootstrap
  threshold. Its score is a ROC AUC (0.5 = the two sets cannot be told apart, 1.0 = fully separable), which
  means the same on every CLIP model and dimension, unlike the `distance` and `mmd` scores whose fixed
  thresholds depend on the geometry of the embedding space. The bootstrap compares the AUC with the 99th
  percentile of AUCs of random predictions on the same split, so the threshold adapts to the sample sizes:
  at 50 queries against 500 references a fixed 0.55 threshold fires about 1 time in 5 on identical
  distributions; the bootstrap at q=0.99 fired 0 in 20 in our simulation while still catching a clear shift.
  q=0.99 (not Evidently's 0.95) because the service checks every few minutes and false alarms add up.
- Rows are capped by random sampling with a fixed seed (`max_rows` per side), so one check costs a bounded,
  repeatable amount of CPU and the same inputs always give the same score.
- `html=True` runs the full Evidently `Report` on the same sample. Its `EmbeddingsDrift` metric always adds a
  t-SNE projection for the plot, which costs seconds (it dominates the run); without HTML the same Evidently
  drift method object is called directly and the numbers are identical (the Report's value is cross-checked).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:
    import pandas as pd
    from evidently.metrics.embeddings import DriftMethod

log = logging.getLogger(__name__)

MethodName = Literal["model", "mmd", "distance"]
DEFAULT_METHOD: MethodName = "model"
DEFAULT_MAX_ROWS = 1000  # per side; equal to the default drift window, so the window is used whole by default
MIN_ROWS = 20  # per side: below this the classifier's held-out half may miss a class and t-SNE cannot run
SAMPLE_SEED = 0
EMBEDDINGS_NAME = "query"
MODEL_BOOTSTRAP_QUANTILE = 0.99

# Evidently's bootstrap methods call np.random.seed(i) on the global RNG; one check at a time keeps results
# deterministic, and the global RNG state is restored afterwards so nothing else in the process notices.
_EVIDENTLY_LOCK = threading.Lock()


class DriftInputError(ClipsearchError):
    """The reference or current embeddings cannot be compared (shape, dimension, too few rows, non-finite)."""


@dataclass(frozen=True)
class DriftResult:
    """One drift check. JSON-safe via `to_dict()`; the HTML report is kept apart (it is megabytes)."""

    drift_score: float
    drift_detected: bool
    method: str
    threshold: float | None  # None when the threshold is a bootstrap quantile computed from the data
    n_current: int  # rows compared (after the `max_rows` cap)
    n_reference: int
    computed_at: str  # ISO 8601, UTC
    duration_s: float
    window_size: int | None = None  # rows available before the cap (the monitor's window)
    top1_mean: float | None = None  # mean top-1 cosine similarity of the window's queries
    top1_p50: float | None = None
    index_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for logs and the batch job's stdout."""
        verdict = "DRIFT" if self.drift_detected else "no drift"
        threshold = f" threshold={self.threshold:g}" if self.threshold is not None else ""
        top1 = f" top1_mean={self.top1_mean:.3f}" if self.top1_mean is not None else ""
        return (
            f"{verdict}: score={self.drift_score:.4f}{threshold} method={self.method} "
            f"n_current={self.n_current} n_reference={self.n_reference}{top1} ({self.duration_s:.2f}s)"
        )


def drift_method(name: str = DEFAULT_METHOD) -> DriftMethod:
    """The Evidently drift method behind a short name (see the module docstring for why `model` is default).

    `ratio` (share of drifted components) is left out on purpose: with per-component Wasserstein tests it
    flagged drift on two samples of the same distribution at 1000 rows. Pass any `DriftMethod` to use it anyway.
    """
    from evidently.metrics.embeddings import DistanceDriftMethod, MMDDriftMethod, ModelDriftMethod

    if name == "model":
        return ModelDriftMethod(bootstrap=True, quantile_probability=MODEL_BOOTSTRAP_QUANTILE)
    if name == "distance":
        return DistanceDriftMethod(dist="euclidean", bootstrap=True)
    if name == "mmd":
        # Evidently's MMD bootstrap compares against the 5th percentile of the null; the fixed threshold is sane.
        return MMDDriftMethod()
    raise DriftInputError(
        f"unknown drift method {name!r}; use model, mmd or distance, or pass an Evidently DriftMethod instance"
    )


def describe_method(method: DriftMethod) -> tuple[str, float | None]:
    """A readable label (`evidently EmbeddingsDrift(model, bootstrap q=0.99)`) and the fixed threshold, if any."""
    kind = type(method).__name__.removesuffix("DriftMethod").lower()
    bootstrap = bool(getattr(method, "bootstrap", False))
    threshold = None if bootstrap else float(method.threshold)
    detail = f"bootstrap q={method.quantile_probability:g}" if bootstrap else f"threshold={threshold:g}"
    return f"evidently EmbeddingsDrift({kind}, {detail})", threshold


def compute_drift(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    method: str | DriftMethod = DEFAULT_METHOD,
    html: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
    top1: npt.ArrayLike | None = None,
    index_version: str | None = None,
    threads: int = 1,
) -> tuple[DriftResult, str | None]:
    """Compare `current` query embeddings (n, dim) with `reference` (m, dim) using Evidently's embeddings drift.

    Both sides are capped at `max_rows` rows by sampling with a fixed seed. Returns the result and, with
    `html=True`, the Evidently report as a standalone HTML page (else None). `top1` (the window's top-1 cosine
    scores, NaN for none) only feeds the summary fields. `threads` bounds the OpenMP threads Evidently's
    t-SNE may use in this thread, so a check never takes every core from the request path (an unbounded
    OpenMP pool on a CPU-limited pod runs several times slower, not faster). Raises `DriftInputError`.
    """
    ref = _as_matrix(reference, "reference")
    cur = _as_matrix(current, "current")
    if ref.shape[1] != cur.shape[1]:
        raise DriftInputError(
            f"reference has dimension {ref.shape[1]} but current has {cur.shape[1]}: they come from different "
            "encoders; compare queries with the reference of the index that served them"
        )
    for name, rows in (("reference", ref), ("current", cur)):
        if rows.shape[0] < MIN_ROWS:
            raise DriftInputError(
                f"{name} has {rows.shape[0]} rows; a drift check needs at least {MIN_ROWS} on each side. "
                "Collect more queries (or ship more reference queries) and run it again"
            )
    if max_rows < MIN_ROWS:
        raise DriftInputError(f"max_rows={max_rows} is below the minimum of {MIN_ROWS} rows per side")
    window_size = cur.shape[0]
    ref_s = _sample(ref, max_rows)
    cur_s = _sample(cur, max_rows)
    chosen = drift_method(method) if isinstance(method, str) else method
    label, threshold = describe_method(chosen)

    started = time.perf_counter()
    with _EVIDENTLY_LOCK, _thread_limit(threads), _preserved_global_rng():
        score, detected, _ = chosen(_frame(cur_s), _frame(ref_s))
        page = _report_html(ref_s, cur_s, chosen, threshold, float(score)) if html else None
    duration = time.perf_counter() - started

    top1_mean, top1_p50 = _top1_summary(top1)
    result = DriftResult(
        drift_score=float(score),
        drift_detected=bool(detected),
        method=label,
        threshold=threshold,
        n_current=int(cur_s.shape[0]),
        n_reference=int(ref_s.shape[0]),
        computed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=round(duration, 4),
        window_size=int(window_size),
        top1_mean=top1_mean,
        top1_p50=top1_p50,
        index_version=index_version,
    )
    return result, page


def _report_html(ref: np.ndarray, cur: np.ndarray, method: DriftMethod, threshold: float | None, score: float) -> str:
    """Run the Evidently Report (new API) on the same sample and render it; cross-check its drift score."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.tests import lte

    columns = _columns(ref.shape[1])
    # Every column kind is given, so Evidently neither infers types nor computes per-column statistics
    # (512 numerical columns would cost more than the drift check itself); the vectors are one embedding.
    definition = DataDefinition(
        embeddings={EMBEDDINGS_NAME: columns},
        numerical_columns=[],
        categorical_columns=[],
        text_columns=[],
        datetime_columns=[],
        list_columns=[],
        unknown_columns=columns,
    )
    tests = [lte(threshold)] if threshold is not None else None
    report = Report(
        [EmbeddingsDrift(embeddings_name=EMBEDDINGS_NAME, drift_method=method, tests=tests)],
        tags=["clipsearch", "embedding-drift"],
    )
    snapshot = report.run(
        Dataset.from_pandas(_frame(cur), data_definition=definition),
        Dataset.from_pandas(_frame(ref), data_definition=definition),
    )
    values = [m.get("value") for m in snapshot.dict().get("metrics", [])]
    if not values or not isinstance(values[0], int | float) or not math.isclose(values[0], score, abs_tol=1e-9):
        log.warning("Evidently report drift score %s differs from the direct computation %s", values, score)
    return str(snapshot.get_html_str(as_iframe=False))


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
        ref = None if reference is None else _as_matrix(reference, "reference")
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


# --------------------------------------------------------------------------------------------- helpers


def _as_matrix(values: npt.ArrayLike, name: str) -> np.ndarray:
    try:
        matrix = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DriftInputError(f"{name} embeddings are not numeric ({exc})") from exc
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise DriftInputError(f"{name} embeddings must have shape (n, dim); got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise DriftInputError(f"{name} embeddings contain NaN or infinite values; re-encode them")
    return matrix


def _sample(rows: np.ndarray, max_rows: int) -> np.ndarray:
    """At most `max_rows` rows, chosen with a fixed seed (same input -> same sample -> same score)."""
    if rows.shape[0] <= max_rows:
        return rows
    keep = np.random.default_rng(SAMPLE_SEED).choice(rows.shape[0], size=max_rows, replace=False)
    return rows[np.sort(keep)]


def _columns(dim: int) -> list[str]:
    return [f"e{i}" for i in range(dim)]


def _frame(rows: np.ndarray) -> pd.DataFrame:
    """A fresh DataFrame per call, laid out as Evidently's Report hands it to the drift method.

    Fresh, because the model method adds a `target` column to what it is given. Laid out the same (Evidently's
    Dataset copies the frame, which re-lays the block out column-major, then selects the embedding columns),
    because SGD's last bits depend on memory layout and one flipped pair moves the AUC by 1/(n1*n2). With the
    same layout the direct call and the Report agree exactly.
    """
    import pandas as pd

    columns = _columns(rows.shape[1])
    return pd.DataFrame(rows, columns=columns).copy()[columns]


def _top1_summary(top1: npt.ArrayLike | None) -> tuple[float | None, float | None]:
    if top1 is None:
        return None, None
    values = np.asarray(top1, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return round(float(values.mean()), 6), round(float(np.median(values)), 6)


class _thread_limit:
    """Bound OpenMP threads in the calling thread (threadpoolctl; a no-op when it is unavailable)."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._limiter: Any = None

    def __enter__(self) -> None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - scikit-learn (an Evidently dependency) ships it
            return
        self._limiter = threadpool_limits(limits=self._threads, user_api="openmp")

    def __exit__(self, *exc: object) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()


class _preserved_global_rng:
    """Restore numpy's global RNG state after Evidently's bootstrap reseeds it."""

    def __enter__(self) -> None:
        self._state = np.random.get_state()

    def __exit__(self, *exc: object) -> None:
        np.random.set_state(self._state)
