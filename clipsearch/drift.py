"""Embedding drift of live queries against reference queries, with Evidently 0.7's `EmbeddingsDrift`: the
stateless check (`compute_drift`). The service's ring-buffer monitor (`services.search.drift.DriftMonitor`) and the
batch job (`services.search.drift_job`) both call it.

Why this shape:
- The reference is the evaluation queries' embeddings shipped in the index artifact (`reference_queries.npy`);
  the current window is what users asked recently. Drift means users now ask for things the evaluation did
  not measure, so the offline metrics stop describing what is served.
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

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    ref = as_matrix(reference, "reference")
    cur = as_matrix(current, "current")
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
    with _EVIDENTLY_LOCK, thread_limit(threads), preserved_global_rng():
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


# --------------------------------------------------------------------------------------------- helpers


def as_matrix(values: npt.ArrayLike, name: str) -> np.ndarray:
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


@contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Bound OpenMP threads in the calling thread for the block (threadpoolctl; a no-op when it is unavailable)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn (an Evidently dependency) ships it
        yield
        return
    limiter = threadpool_limits(limits=threads, user_api="openmp")
    try:
        yield
    finally:
        limiter.restore_original_limits()


@contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore numpy's global RNG state after the block (Evidently's bootstrap reseeds it)."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)
