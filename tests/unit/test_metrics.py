"""Ranking metrics against hand-computed values (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest

from clipsearch.metrics import (
    evaluate_rankings,
    latency_summary,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)

RANKED = ["a", "b", "c", "d", "e"]
REL = {"b": 2, "d": 1, "z": 3}  # z is relevant but never retrieved


def test_precision_at_k() -> None:
    # top-4 = a b c d -> relevant b, d -> 2/4
    assert precision_at_k(RANKED, REL, 4) == pytest.approx(0.5)
    # top-1 = a -> 0/1
    assert precision_at_k(RANKED, REL, 1) == 0.0
    # k=10 but only 5 ranked: hits b, d -> 2/10 (divide by k, not by list length)
    assert precision_at_k(RANKED, REL, 10) == pytest.approx(0.2)


def test_recall_at_k() -> None:
    # 3 relevant (b, d, z); top-2 holds b -> 1/3; top-10 holds b, d -> 2/3
    assert recall_at_k(RANKED, REL, 2) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, REL, 10) == pytest.approx(2 / 3)


def test_ndcg_at_k_graded() -> None:
    # DCG@4: b at position 2 -> (2^2-1)/log2(3) = 3/1.58496 = 1.89279; d at 4 -> (2^1-1)/log2(5) = 1/2.32193 = 0.43068
    dcg = 3 / math.log2(3) + 1 / math.log2(5)  # 2.32347
    # ideal order of grades 3, 2, 1: 7/log2(2) + 3/log2(3) + 1/log2(4) = 7 + 1.89279 + 0.5 = 9.39279
    ideal = 7 / 1 + 3 / math.log2(3) + 1 / 2
    assert ndcg_at_k(RANKED, REL, 4) == pytest.approx(dcg / ideal)  # 0.24737
    assert ndcg_at_k(RANKED, REL, 4) == pytest.approx(0.24737, abs=1e-5)


def test_ndcg_perfect_and_ideal_cut_at_k() -> None:
    rel = {"x": 3, "y": 1, "w": 2}
    assert ndcg_at_k(["x", "w", "y"], rel, 3) == pytest.approx(1.0)
    # k=1: DCG = (2^1-1)/1 = 1 for y; ideal@1 = (2^3-1)/1 = 7 -> 1/7
    assert ndcg_at_k(["y", "x"], rel, 1) == pytest.approx(1 / 7)


def test_reciprocal_rank() -> None:
    assert reciprocal_rank(RANKED, REL) == pytest.approx(1 / 2)  # first relevant, b, at position 2
    assert reciprocal_rank(RANKED, REL, k=1) == 0.0  # cut before b
    assert reciprocal_rank(["q"], REL) == 0.0


def test_edge_cases_no_relevant_empty_ranking_duplicates() -> None:
    assert recall_at_k(RANKED, {}, 4) == 0.0
    assert ndcg_at_k(RANKED, {}, 4) == 0.0
    assert precision_at_k([], REL, 4) == 0.0
    assert ndcg_at_k([], REL, 4) == 0.0
    assert reciprocal_rank([], REL) == 0.0
    # a repeated relevant photo counts once: b, b -> 1 hit in top-2 -> P@2 = 1/2
    assert precision_at_k(["b", "b"], REL, 2) == pytest.approx(0.5)
    # grade 0 entries are not relevant
    assert recall_at_k(["a"], {"a": 0, "b": 1}, 1) == 0.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        precision_at_k(RANKED, REL, 0)


def test_evaluate_rankings_means_and_keys() -> None:
    second = (["z", "a"], {"z": 1})  # P@4 = 1/4, R@10 = 1, nDCG@4 = 1, RR = 1
    out = evaluate_rankings([(RANKED, REL), second])
    assert set(out) == {"precision_at_4", "recall_at_10", "ndcg_at_4", "mrr"}
    assert out["precision_at_4"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["recall_at_10"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["ndcg_at_4"] == pytest.approx((0.24737 + 1) / 2, abs=1e-5)
    assert out["mrr"] == pytest.approx((0.5 + 1) / 2)
    custom = evaluate_rankings([second], precision_k=1, recall_k=1, ndcg_k=2)
    assert custom == {"precision_at_1": 1.0, "recall_at_1": 1.0, "ndcg_at_2": 1.0, "mrr": 1.0}
    with pytest.raises(ValueError, match="empty"):
        evaluate_rankings([])


def test_latency_summary() -> None:
    # 1..100 ms: p50 = 50.5, p95 = 95.05, p99 = 99.01 (linear interpolation), mean = 50.5
    out = latency_summary(range(1, 101))
    assert out == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01, "mean": 50.5})
    assert latency_summary([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "mean": 7.0}
    with pytest.raises(ValueError, match="no latencies"):
        latency_summary([])
