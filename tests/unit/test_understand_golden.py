"""The understanding golden set: it loads, every expected query is valid, and the plumbing scores 1.0 when the
stand-in answers what a careful human would (so a real model's score measures the model, not our code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipsearch.errors import DataFormatError
from clipsearch.query import Filters, Query, Term
from clipsearch.settings import RerankSettings, UnderstandSettings
from clipsearch.understand.compose import Composition
from clipsearch.understand.golden import GoldenItem, load_golden, run_golden, score, summarise, term_scores
from clipsearch.understand.understander import GeminiUnderstander
from clipsearch_devtools.gemini_standin import GeminiStandin

GOLDEN = Path(__file__).resolve().parents[2] / "training" / "understanding_golden.jsonl"


def test_the_golden_set_is_valid_and_covers_first_requests_and_follow_ups() -> None:
    items = load_golden(GOLDEN)
    assert len(items) >= 12
    assert len({i.id for i in items}) == len(items)
    for item in items:
        Query(terms=list(item.terms), filters=item.filters)
    follow_ups = [i for i in items if i.previous_terms]
    assert len(follow_ups) >= 3
    assert any(i.shown for i in follow_ups)
    assert any(t.weight < 0 for i in items for t in i.terms)


def test_with_the_stand_in_answering_the_golden_queries_the_plumbing_scores_perfectly(
    gemini_standin: GeminiStandin,
) -> None:
    items = load_golden(GOLDEN)
    for item in items:
        gemini_standin.answer(item.request, item.expected)
    rerank = RerankSettings(base_url=gemini_standin.base_url, api_key="k")
    u = GeminiUnderstander(UnderstandSettings(budget_s=2.0), rerank, api_key="k")
    try:
        rows = run_golden(u, items)
    finally:
        u.close()
    assert [r["reason"] for r in rows] == [None] * len(items)
    metrics = summarise(rows)
    assert metrics["understood_rate"] == 1.0
    assert metrics["filters_exact"] == 1.0
    assert metrics["term_f1"] == 1.0
    assert metrics["cost_usd_per_understood"] == pytest.approx(1200 * 0.30e-6 + 80 * 2.50e-6)
    assert gemini_standin.request_count == len(items)


def test_scores_reward_overlap_and_punish_misses() -> None:
    item = GoldenItem(
        "x",
        "landscape photos of Iceland without people",
        (Term(text="landscape"), Term(text="people", weight=-1)),
        Filters(country=["Iceland"]),
    )
    perfect = Composition((Term(text="landscapes"), Term(text="people", weight=-1)), Filters(country=["iceland"]))
    assert score(item, perfect)["term_f1"] == 1.0
    assert score(item, perfect)["filters_exact"] == 1.0
    wrong_sign = Composition((Term(text="landscape"), Term(text="people")), Filters())
    s = score(item, wrong_sign)
    assert s["term_precision"] == 0.5
    assert s["term_recall"] == 0.5
    assert s["filters_exact"] == 0.0
    fallback = score(item, None)
    assert fallback["understood"] == 0.0
    assert fallback["term_recall"] == 0.0
    assert term_scores([Term(photo_id="Abc123xyz01")], [Term(photo_id="Abc123xyz01")]) == (1.0, 1.0, 1.0)


def test_a_bad_golden_line_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"id": "a", "request": "x", "expected": {"terms": [{"weight": 1}]}}\n')
    with pytest.raises(DataFormatError, match=r"g.jsonl:1"):
        load_golden(path)


def test_evaluate_understanding_without_a_key_says_so_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from clipsearch.settings import get_settings
    from training import evaluate_understanding

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("CLIPSEARCH_PARAMS", str(tmp_path / "none.yaml"))
    get_settings.cache_clear()
    try:
        assert evaluate_understanding.main([]) == 0
    finally:
        get_settings.cache_clear()
    assert "understanding evaluation skipped: no Gemini key" in capsys.readouterr().err


def test_evaluate_understanding_with_a_key_scores_and_logs_to_mlflow(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, gemini_standin: GeminiStandin
) -> None:
    import mlflow

    from clipsearch.settings import get_settings
    from training import evaluate_understanding

    for item in load_golden(GOLDEN):
        gemini_standin.answer(item.request, item.expected)
    monkeypatch.setenv("GEMINI_API_KEY", "standin-key")
    monkeypatch.setenv("CLIPSEARCH_PARAMS", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("CLIPSEARCH_RERANK__BASE_URL", gemini_standin.base_url)
    monkeypatch.setenv("CLIPSEARCH_UNDERSTAND__BUDGET_S", "3")
    monkeypatch.setenv("CLIPSEARCH_EVALUATE__OUTPUT_DIR", str(tmp_path / "reports"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("CLIPSEARCH_REGISTRY__TRACKING_URI", uri)
    get_settings.cache_clear()
    try:
        assert evaluate_understanding.main([]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "filters exact 1.000, term F1 1.000" in out
    assert "MLflow run" in out
    report = json.loads((tmp_path / "reports" / "understanding.json").read_text())
    assert report["metrics"]["filters_exact"] == 1.0
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["clipsearch"], output_format="list")
    assert run.data.metrics["understanding_filters_exact"] == 1.0
    assert run.data.tags["evaluation"] == "understanding"
