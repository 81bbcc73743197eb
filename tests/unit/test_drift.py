"""Embedding drift: Evidently's verdict on structured synthetic embeddings, and the DriftMonitor window."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.drift import (
    MIN_ROWS,
    DriftInputError,
    DriftResult,
    compute_drift,
    drift_method,
)
from services.search.drift import DriftMonitor
from services.search.schemas import DriftResponse

DIM = 512
RANK = 16


def embeddings(n: int, seed: int, shift: float = 0.0, dim: int = DIM) -> np.ndarray:
    """CLIP-like vectors: a shared low-rank structure plus noise, offset from the origin, L2-normalised.

    The basis is the same for every call (seed 7), so two calls with shift 0 sample one distribution; `shift`
    moves the mean along the first latent direction (users asking about something else).
    """
    basis = np.random.default_rng(7).normal(size=(RANK, dim)) / 4
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, RANK))
    latent[:, 0] += shift
    x = latent @ basis + 0.3 * rng.normal(size=(n, dim)) + 3 * basis.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------- compute_drift


def test_same_distribution_is_not_drift() -> None:
    result, html = compute_drift(embeddings(500, seed=1), embeddings(300, seed=2))
    assert html is None
    assert not result.drift_detected
    assert 0.35 < result.drift_score < 0.62  # ROC AUC of a classifier that cannot tell the sets apart
    assert result.method.startswith("evidently EmbeddingsDrift(model")
    assert result.threshold is None  # bootstrap: the threshold comes from the data
    assert (result.n_reference, result.n_current) == (500, 300)


def test_shifted_distribution_is_drift() -> None:
    result, _ = compute_drift(embeddings(500, seed=1), embeddings(300, seed=3, shift=1.5))
    assert result.drift_detected
    assert result.drift_score > 0.7


@pytest.mark.parametrize("method", ["mmd", "distance"])
def test_other_methods_agree(method: str) -> None:
    ref = embeddings(400, seed=1)
    same, _ = compute_drift(ref, embeddings(400, seed=2), method=method)
    shifted, _ = compute_drift(ref, embeddings(400, seed=3, shift=1.5), method=method)
    assert not same.drift_detected
    assert shifted.drift_detected
    assert shifted.drift_score > same.drift_score
    assert method in shifted.method


def test_tiny_model_dimension_works() -> None:
    result, _ = compute_drift(embeddings(200, seed=1, dim=32), embeddings(100, seed=3, shift=2.0, dim=32))
    assert result.drift_detected


def test_same_input_same_score_and_global_rng_untouched() -> None:
    ref, cur = embeddings(1500, seed=1), embeddings(1200, seed=4, shift=0.5)
    np.random.seed(123)
    expected_next = np.random.RandomState(123).random_sample()
    first, _ = compute_drift(ref, cur, max_rows=600)
    assert np.random.random_sample() == expected_next  # Evidently's bootstrap reseeds; we restore the state
    second, _ = compute_drift(ref, cur, max_rows=600)
    assert first.drift_score == second.drift_score
    assert (first.n_reference, first.n_current, first.window_size) == (600, 600, 1200)


def test_html_report_has_same_score(caplog: pytest.LogCaptureFixture) -> None:
    ref, cur = embeddings(150, seed=1), embeddings(120, seed=3, shift=1.5)
    plain, _ = compute_drift(ref, cur)
    with caplog.at_level("WARNING", logger="services.search.drift"):
        result, html = compute_drift(ref, cur, html=True)
    assert html is not None and "<html" in html[:5000].lower() and len(html) > 10_000
    assert result.drift_score == plain.drift_score and result.drift_detected == plain.drift_detected
    assert "differs" not in caplog.text  # the Report's EmbeddingsDrift value matched the direct computation


def test_direct_call_sees_the_layout_the_report_gives_the_method() -> None:
    """SGD's last bits depend on memory layout; at 1000 x 1000 a layout mismatch moved the AUC by 2e-6."""
    from evidently import DataDefinition, Dataset

    from clipsearch.drift import _columns, _frame

    x = embeddings(30, seed=1, dim=8)
    columns = _columns(8)
    seen_by_report = Dataset.from_pandas(_frame(x), data_definition=DataDefinition(unknown_columns=columns))
    via_report = seen_by_report.as_dataframe()[columns].to_numpy()
    direct = _frame(x).to_numpy()
    assert np.array_equal(direct, via_report)
    assert direct.flags.f_contiguous == via_report.flags.f_contiguous


def test_fixed_threshold_method_reports_threshold() -> None:
    result, _ = compute_drift(embeddings(100, seed=1), embeddings(100, seed=2), method="mmd")
    assert result.threshold is not None and result.threshold == pytest.approx(0.015)
    assert result.drift_detected == (result.drift_score > result.threshold)


def test_top1_summary_ignores_missing_scores() -> None:
    top1 = np.array([0.2, 0.3, np.nan, 0.4] * 10)
    result, _ = compute_drift(embeddings(100, seed=1), embeddings(40, seed=2), top1=top1, index_version="v7")
    assert result.top1_mean == pytest.approx(0.3)
    assert result.top1_p50 == pytest.approx(0.3)
    assert result.index_version == "v7"
    assert "html" not in result.to_dict()


@pytest.mark.parametrize(
    ("ref", "cur", "message"),
    [
        (np.zeros((100, 32)), np.zeros((100, 16)), "dimension 32 but current has 16"),
        (np.zeros((100, 32)), np.zeros((MIN_ROWS - 1, 32)), "current has 19 rows"),
        (np.zeros(32), np.zeros((100, 32)), "shape (n, dim)"),
        (np.full((100, 32), np.nan), np.zeros((100, 32)), "NaN"),
    ],
)
def test_bad_inputs_say_what_is_wrong(ref: np.ndarray, cur: np.ndarray, message: str) -> None:
    with pytest.raises(DriftInputError, match=re.escape(message)):
        compute_drift(ref, cur)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(DriftInputError, match="unknown drift method"):
        drift_method("tsne")


def test_timing_1000x512(capsys: pytest.CaptureFixture[str]) -> None:
    """Logged, not asserted tightly: the machine is shared. The Evidently report (t-SNE) is timed separately."""
    ref, cur = embeddings(1000, seed=1), embeddings(1000, seed=2, shift=0.5)
    started = time.perf_counter()
    result, _ = compute_drift(ref, cur)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\ncompute_drift 1000x512 vs 1000x512 ({result.method}): {elapsed:.3f}s, score {result.drift_score:.3f}")
    assert elapsed < 20


# --------------------------------------------------------------------------------------------- DriftMonitor


def test_window_is_bounded_and_oldest_first() -> None:
    monitor = DriftMonitor(window=10, min_queries=5, html=False)
    assert monitor.snapshot().shape == (0, 0)
    for i in range(25):
        monitor.record(np.full(4, i, dtype=np.float32), top1=i / 100)
    window = monitor.snapshot()
    assert window.shape == (10, 4) and window.dtype == np.float32
    assert window[:, 0].tolist() == list(range(15, 25))
    assert len(monitor) == 10
    window[:] = -1  # a copy: the monitor's buffer is untouched
    assert monitor.snapshot()[0, 0] == 15
    blob = monitor.window_npy()
    assert np.load(io.BytesIO(blob), allow_pickle=False).shape == (10, 4)


def test_record_skips_non_finite_and_resets_on_new_dimension() -> None:
    monitor = DriftMonitor(window=10, min_queries=5, html=False)
    monitor.record(np.ones(4), 0.5)
    monitor.record(np.array([1.0, np.nan, 0, 0]), 0.5)
    assert len(monitor) == 1 and monitor.dropped == 1
    monitor.record(np.ones((1, 8)), None)  # another encoder: the old window is not comparable
    assert monitor.snapshot().shape == (1, 8)


def test_concurrent_records_lose_nothing() -> None:
    monitor = DriftMonitor(window=10_000, min_queries=5, html=False)
    threads, per_thread = 8, 500

    def writer(t: int) -> None:
        for i in range(per_thread):
            monitor.record(np.full(16, t * per_thread + i, dtype=np.float32), 0.3)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    window = monitor.snapshot()
    assert window.shape == (threads * per_thread, 16)
    assert sorted(window[:, 0].astype(int).tolist()) == list(range(threads * per_thread))
    assert (window == window[:, :1]).all()  # no row mixes two writers' values


def test_compute_gating_and_result() -> None:
    monitor = DriftMonitor(window=200, min_queries=30, html=False)
    assert monitor.compute() is None
    assert "no reference" in (monitor.reason or "")
    DriftResponse.model_validate(monitor.to_response())

    monitor.set_reference(embeddings(300, seed=1), index_version="abc")
    for row in embeddings(29, seed=2, shift=2.0):
        monitor.record(row, 0.25)
    assert monitor.compute() is None
    assert "29 queries" in (monitor.reason or "") and "at least 30" in (monitor.reason or "")
    assert monitor.to_response()["available"] is False

    for row in embeddings(100, seed=3, shift=2.0):
        monitor.record(row, 0.35)
    result = monitor.compute()
    assert isinstance(result, DriftResult) and result.drift_detected
    assert result.n_current == 129 and result.n_reference == 300 and result.index_version == "abc"
    assert result.top1_mean == pytest.approx((29 * 0.25 + 100 * 0.35) / 129, abs=1e-6)
    assert monitor.latest is result and monitor.latest_html is None and monitor.reason is None
    response = DriftResponse.model_validate(monitor.to_response())
    assert response.available and response.drift_detected and response.index_version == "abc"


def test_min_rows_floor_applies_below_min_queries() -> None:
    monitor = DriftMonitor(window=100, min_queries=2, html=False)
    monitor.set_reference(embeddings(100, seed=1))
    for row in embeddings(MIN_ROWS - 1, seed=2):
        monitor.record(row, 0.3)
    assert monitor.compute() is None
    assert f"at least {MIN_ROWS}" in (monitor.reason or "")


def test_set_reference_keeps_window_for_same_encoder_and_clears_for_another() -> None:
    monitor = DriftMonitor(window=100, min_queries=20, html=False)
    monitor.set_reference(embeddings(100, seed=1), index_version="v1", model_key="ViT-B-32/openai")
    for row in embeddings(40, seed=2):
        monitor.record(row, 0.3)
    assert monitor.compute() is not None

    monitor.set_reference(embeddings(100, seed=5), index_version="v2", model_key="ViT-B-32/openai")
    assert len(monitor) == 40  # same encoder: the recorded queries still count
    assert monitor.latest is None and "index changed" in (monitor.reason or "")

    monitor.set_reference(embeddings(100, seed=5), index_version="v3", model_key="ViT-L-14/openai")
    assert len(monitor) == 0
    monitor.set_reference(embeddings(100, seed=5, dim=32), index_version="v4")
    for row in embeddings(3, seed=2):
        monitor.record(row, 0.3)
    monitor.set_reference(embeddings(100, seed=5, dim=32), index_version="v5")
    assert len(monitor) == 0  # 512-d queries against a 32-d reference: cleared

    monitor.set_reference(None)
    assert monitor.compute() is None and "reference_queries.npy" in (monitor.reason or "")


def test_run_periodically_survives_errors_and_reports_results() -> None:
    monitor = DriftMonitor(window=100, min_queries=20, html=False)
    monitor.set_reference(embeddings(100, seed=1))
    for row in embeddings(50, seed=2, shift=2.0):
        monitor.record(row, 0.3)
    results: list[DriftResult] = []
    calls = {"n": 0}
    real_compute = monitor.compute

    def flaky_compute() -> DriftResult | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_compute()

    def on_result(result: DriftResult) -> None:
        results.append(result)
        raise ValueError("a broken callback must not stop the loop")

    monitor.compute = flaky_compute  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(monitor.run_periodically(0.01, on_result))
        deadline = time.monotonic() + 30
        while len(results) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert calls["n"] >= 3 and len(results) >= 2
    assert all(r.drift_detected for r in results)


# --------------------------------------------------------------------------------------------- drift_job inputs


def test_job_refuses_missing_and_malformed_files(tmp_path: Path) -> None:
    from clipsearch.errors import ClipsearchError
    from services.search import drift_job

    np.save(tmp_path / "ref.npy", embeddings(50, seed=1, dim=32))
    np.save(tmp_path / "flat.npy", np.zeros(32, dtype=np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((50, 32), dtype=np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 32), dtype=np.float32))
    np.save(tmp_path / "narrow.npy", embeddings(50, seed=2, dim=16))
    ref = ["--reference", str(tmp_path / "ref.npy"), "--no-mlflow", "--no-html"]
    cases = {
        "missing.npy": "does not exist",
        "flat.npy": "expected (n, dim)",
        "ints.npy": "expected float embeddings",
        "empty.npy": "no queries were recorded yet",
        "narrow.npy": "dimension 32 but current has 16",
    }
    for name, message in cases.items():
        with pytest.raises(ClipsearchError, match=re.escape(message)):
            drift_job.main([*ref, "--current", str(tmp_path / name)])
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(ClipsearchError, match=re.escape("not a readable .npy")):
        drift_job.main([*ref, "--current", str(tmp_path / "text.npy")])
    with pytest.raises(SystemExit):
        drift_job.main([*ref, "--alias", "champion", "--current", str(tmp_path / "ref.npy")])


def test_job_exit_code_follows_fail_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from services.search import drift_job

    np.save(tmp_path / "ref.npy", embeddings(100, seed=1, dim=32))
    np.save(tmp_path / "cur.npy", embeddings(100, seed=2, shift=2.0, dim=32))
    args = [
        "--reference",
        str(tmp_path / "ref.npy"),
        "--current",
        str(tmp_path / "cur.npy"),
        "--no-mlflow",
        "--no-html",
    ]
    assert drift_job.main(args) == 0
    assert drift_job.main([*args, "--fail-on-drift"]) == drift_job.EXIT_DRIFT
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("drift_job: DRIFT: ") for line in lines)
