"""The composed query's own rules: one source per term, weights, filters, limits."""

from __future__ import annotations

import base64
from datetime import date

import pytest
from pydantic import ValidationError

from clipsearch.query import Filters, Query, QueryError, Term, check_limits, filters_from_pairs


def test_plain_text_is_one_term() -> None:
    query = Query.from_text("a red bicycle")
    assert [t.kind for t in query.terms] == ["text"]
    assert query.text == "a red bicycle"
    assert query.avoid == []
    assert query.filters.is_empty()


def test_weighted_and_negative_terms() -> None:
    query = Query(terms=[Term(text="cat"), Term(text="glasses", weight=-1), Term(photo_id="abcDEF_123-x", weight=2)])
    assert query.text == "cat"
    assert query.avoid == ["glasses"]


def test_base64_image_is_decoded_and_bad_base64_is_named() -> None:
    term = Term(image=base64.b64encode(b"\x89PNG...").decode())
    assert term.image == b"\x89PNG..."
    assert term.kind == "image"
    with pytest.raises(ValidationError, match="not valid base64"):
        Term(image="not base64!!")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"terms": []}, "at least 1 item"),
        ({"terms": [{"text": "a", "weight": -1}]}, "positive weight"),
        ({"terms": [{"text": "a", "photo_id": "abc"}]}, "exactly one of"),
        ({"terms": [{"text": "a", "weight": 0}]}, "weight: 0"),
        ({"terms": [{"image_url": "file:///etc/passwd"}]}, "http"),
        ({"terms": [{"photo_id": "../etc"}]}, "photo_id"),
        ({"terms": [{"text": "a"}], "filters": {"colour": ["blue"]}}, "colour"),
        ({"terms": [{"text": "a"}], "filters": {"orientation": ["diagonal"]}}, "orientation"),
        ({"terms": [{"text": "a"}], "filters": {"submitted_from": 1600000000}}, "YYYY-MM-DD"),
        ({"terms": [{"photo_id": "abc"}], "mode": "keyword"}, "keyword needs a text"),
    ],
)
def test_bad_queries_name_the_problem(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Query(**fields)


def test_operator_limits() -> None:
    limits = {"max_query_chars": 10, "max_k": 5, "max_candidates": 20}
    check_limits(Query.from_text("short"), **limits)
    with pytest.raises(QueryError, match=r"terms\[0\].text"):
        check_limits(Query.from_text("much too long a text"), **limits)
    with pytest.raises(QueryError, match="k: must be"):
        check_limits(Query.from_text("a", k=6, candidates=10), **limits)
    with pytest.raises(QueryError, match="at least k"):
        check_limits(Query.from_text("a", k=5, candidates=4), **limits)


def test_filters_empty_and_not() -> None:
    assert Filters().is_empty()
    assert not Filters(featured=True).is_empty()


@pytest.mark.parametrize("value", [True, "3000", b"3000"])
def test_numeric_fields_take_json_numbers_only(value: object) -> None:
    with pytest.raises(ValidationError, match="must be a number"):
        Filters.model_validate({"min_width": value})


def test_an_integral_float_is_an_integer_as_json_schema_says() -> None:
    assert Filters.model_validate({"min_width": 3000.0}).min_width == 3000


def test_command_line_filters_become_typed_values_and_dates_stay_dates() -> None:
    f = filters_from_pairs(["min_width=3000", "featured=true", "submitted_from=2021-01-01", "near=64.1,-21.9,50"])
    assert f.min_width == 3000
    assert f.featured is True
    assert f.submitted_from == date(2021, 1, 1)
    assert f.near is not None
    assert f.near.radius_km == 50
