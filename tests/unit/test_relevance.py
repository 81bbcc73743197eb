"""Judged queries from synthetic Unsplash Lite tables with the real column names and dtypes."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pytest

from clipsearch.errors import DataFormatError
from clipsearch.relevance import MAX_GRADE, build_judgments, normalise_query, temporal_holdout
from clipsearch.settings import EvaluateSettings


def conversions(rows: Sequence[tuple[str, str, str, str | None]]) -> pd.DataFrame:
    """rows: (converted_at, keyword, photo_id, anonymous_user_id) -> a typed conversions table."""
    return pd.DataFrame(
        {
            "converted_at": pd.to_datetime([r[0] for r in rows], utc=True),
            "conversion_type": pd.array(["download"] * len(rows), dtype="string"),
            "keyword": pd.array([r[1] for r in rows], dtype="string"),
            "photo_id": pd.array([r[2] for r in rows], dtype="string"),
            "anonymous_user_id": pd.array([r[3] for r in rows], dtype="string"),
            "conversion_country": pd.array(["NL"] * len(rows), dtype="string"),
        }
    )


def keywords(rows: Sequence[tuple[str, str, bool | None]]) -> pd.DataFrame:
    """rows: (photo_id, keyword, suggested_by_user)."""
    return pd.DataFrame(
        {
            "photo_id": pd.array([r[0] for r in rows], dtype="string"),
            "keyword": pd.array([r[1] for r in rows], dtype="string"),
            "ai_service_1_confidence": pd.array([50.0] * len(rows), dtype="Float64"),
            "ai_service_2_confidence": pd.array([None] * len(rows), dtype="Float64"),
            "suggested_by_user": pd.array([r[2] for r in rows], dtype="boolean"),
        }
    )


# Two days of conversions. With holdout_fraction 0.6 the newest 6 of 10 (2021-01-02 onwards) are the test set.
CONV = conversions(
    [
        ("2021-01-01T10:00", "old query", "p1", "u1"),
        ("2021-01-01T11:00", "old query", "p2", "u2"),
        ("2021-01-01T12:00", "Red Bicycle", "p9", "u3"),
        ("2021-01-01T13:00", "dog", "p1", "u4"),
        ("2021-01-02T10:00", "red  bicycle ", "p1", "u1"),
        ("2021-01-02T11:00", "Red Bicycle", "p1", "u2"),
        ("2021-01-02T12:00", "red bicycle", "p1", "u2"),  # same user again: still 2 distinct users
        ("2021-01-02T13:00", "red bicycle", "p2", None),  # no user id: counts as one user
        ("2021-01-02T14:00", "forest", "p3", "u5"),
        ("2021-01-02T15:00", "forest", "gone", "u6"),  # not in the index: dropped
    ]
)
KW = keywords(
    [
        ("p4", "Forest", True),  # confirmed -> grade 1 for "forest"
        ("p5", "forest", False),  # only suggested by AI -> ignored
        ("p6", "forest", None),  # unknown -> ignored
        ("p3", "forest", True),  # already a conversion positive: keeps its conversion grade
        ("p7", "beach", True),  # not a test query: keywords add judgments, never queries
    ]
)
INDEXED = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p9"]


def settings(**overrides: object) -> EvaluateSettings:
    return EvaluateSettings.model_validate({"holdout_fraction": 0.6, **overrides})


def test_normalise_query() -> None:
    assert normalise_query("  Red \t Bicycle\n") == "red bicycle"


def test_holdout_graded_by_distinct_users_plus_keywords() -> None:
    out = build_judgments(CONV, KW, INDEXED, settings())
    assert out.cutoff == pd.Timestamp("2021-01-02T10:00", tz="UTC")
    assert out.n_conversions == 10
    assert out.n_test_conversions == 6
    by_query = {q.query: q.relevant for q in out.queries}
    assert by_query == {"red bicycle": {"p1": 2, "p2": 1}, "forest": {"p3": 1, "p4": 1}}
    assert out.n_keyword_judgments == 1
    # Most positives first, then alphabetical: both have 2 -> "forest" before "red bicycle".
    assert [q.query for q in out.queries] == ["forest", "red bicycle"]
    summary = out.describe()
    assert summary["n_queries"] == 2
    assert summary["cutoff"].startswith("2021-01-02T10:00")
    assert summary["settings.holdout_fraction"] == 0.6


def test_without_keywords_and_min_users() -> None:
    out = build_judgments(CONV, KW, INDEXED, settings(use_keywords=False, min_users=2))
    assert [(q.query, q.relevant) for q in out.queries] == [("red bicycle", {"p1": 2})]
    assert out.n_keyword_judgments == 0


def test_min_positives_and_max_queries() -> None:
    assert [q.query for q in build_judgments(CONV, KW, INDEXED, settings(min_positives=3)).queries] == []
    capped = build_judgments(CONV, KW, INDEXED, settings(max_queries=1))
    assert [q.query for q in capped.queries] == ["forest"]
    assert capped.n_candidate_queries == 2


def test_only_indexed_photos_count() -> None:
    out = build_judgments(CONV, KW, ["p1"], settings())
    assert [(q.query, q.relevant) for q in out.queries] == [("red bicycle", {"p1": 2})]


def test_grade_is_capped() -> None:
    rows = [(f"2021-01-01T00:0{i}", "cat", "p1", f"u{i}") for i in range(MAX_GRADE + 3)]
    out = build_judgments(conversions(rows), KW, ["p1"], settings(holdout_fraction=1.0, use_keywords=False))
    assert out.queries[0].relevant == {"p1": MAX_GRADE}


def test_ties_at_the_cutoff_are_not_split() -> None:
    rows = [("2021-01-01", "a", "p1", "u1"), ("2021-01-02", "b", "p1", "u1"), ("2021-01-02", "c", "p1", "u2")]
    test, cutoff = temporal_holdout(conversions(rows), 0.34)  # ceil(0.34 * 3) = 2 -> cut-off 2021-01-02
    assert cutoff == pd.Timestamp("2021-01-02", tz="UTC")
    assert sorted(test["keyword"].tolist()) == ["b", "c"]
    test, _ = temporal_holdout(conversions(rows), 0.1)  # ceil(0.3) = 1 row, but its tie comes along
    assert len(test) == 2


def test_empty_inputs_and_missing_columns() -> None:
    empty = build_judgments(CONV.iloc[0:0], KW.iloc[0:0], INDEXED, settings())
    assert empty.queries == []
    assert empty.cutoff is None
    with pytest.raises(DataFormatError, match=r"conversions table lacks columns \['anonymous_user_id'\]"):
        build_judgments(CONV.drop(columns="anonymous_user_id"), KW, INDEXED, settings())
    with pytest.raises(DataFormatError, match="keywords table lacks"):
        build_judgments(CONV, KW.drop(columns="suggested_by_user"), INDEXED, settings())
