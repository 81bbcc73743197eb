"""The promotion quality gate: higher is better, a tolerance per metric, missing metrics fail."""

from clipsearch.registry import flatten_params, gate

METRICS = ["ndcg_at_4", "precision_at_4"]


def test_first_challenger_passes_without_champion():
    passed, reasons = gate({"ndcg_at_4": 0.1}, None, METRICS, 0.01)
    assert passed
    assert "no current champion" in reasons[0]


def test_equal_or_better_passes():
    passed, reasons = gate(
        {"ndcg_at_4": 0.5, "precision_at_4": 0.41}, {"ndcg_at_4": 0.5, "precision_at_4": 0.4}, METRICS, 0.0
    )
    assert passed
    assert all(line.endswith("ok") for line in reasons)


def test_within_tolerance_passes_and_beyond_fails():
    champion = {"ndcg_at_4": 0.50, "precision_at_4": 0.40}
    assert gate({"ndcg_at_4": 0.495, "precision_at_4": 0.40}, champion, METRICS, 0.01)[0]
    passed, reasons = gate({"ndcg_at_4": 0.45, "precision_at_4": 0.40}, champion, METRICS, 0.01)
    assert not passed
    assert "ndcg_at_4: challenger 0.4500 vs champion 0.5000: worse by 0.0500" in reasons[0]


def test_missing_metric_fails():
    passed, reasons = gate({"ndcg_at_4": 0.9}, {"ndcg_at_4": 0.5, "precision_at_4": 0.4}, METRICS, 0.01)
    assert not passed
    assert "precision_at_4: missing" in reasons[1]


def test_flatten_params_nests_with_dots():
    assert flatten_params({"index": {"kind": "exact", "hnsw": {"m": 32}}, "k": 4}) == {
        "index.kind": "exact",
        "index.hnsw.m": "32",
        "k": "4",
    }
