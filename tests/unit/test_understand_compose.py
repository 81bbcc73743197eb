"""clipsearch.understand.compose: a model's answer is validated part by part; nothing unchecked gets through."""

from __future__ import annotations

from datetime import date

import pytest

from clipsearch.query import MAX_TERMS, Filters, Query, QueryError, Term
from clipsearch.understand.compose import (
    CompositionError,
    changes,
    date_label,
    describe,
    read_composition,
    remove_parts,
    summary,
)

SHOWN = ["Abc123xyz01", "Def456uvw02"]


def read(data: object, **kw: object) -> object:
    return read_composition(data, request_text="the request", allowed_photo_ids=SHOWN, **kw)  # type: ignore[arg-type]


def test_a_good_answer_becomes_terms_and_filters() -> None:
    c = read_composition(
        {
            "terms": [{"text": "landscape", "weight": 1}, {"text": "people", "weight": -1}],
            "filters": {"country": ["Iceland"], "submitted_from": "2021-01-01", "submitted_to": "2021-12-31"},
        },
        request_text="landscape photos of Iceland from 2021 without people",
    )
    assert [(t.text, t.weight) for t in c.terms] == [("landscape", 1.0), ("people", -1.0)]
    assert c.filters.country == ["Iceland"]
    assert c.filters.submitted_from == date(2021, 1, 1)
    assert c.filters.submitted_to == date(2021, 12, 31)
    assert c.notes == ()
    q = Query(terms=list(c.terms), filters=c.filters)
    assert summary(q) == "Iceland, 2021, landscape, not: people"


@pytest.mark.parametrize(
    ("answer", "note"),
    [
        ({"terms": [{"text": "cat", "weight": 1}], "k": 1000}, "k: ignored (unknown field)"),
        ({"terms": [{"text": "cat", "weight": 1}], "rerank": "off"}, "rerank: ignored"),
        ({"terms": [{"text": "cat", "weight": 1}, {"text": "dog", "weight": 99}]}, "terms[1]: dropped"),
        ({"terms": [{"text": "cat", "weight": 1}, {"text": "dog", "weight": "heavy"}]}, "not a number"),
        ({"terms": [{"text": "cat", "weight": 1}, {"text": "dog", "weight": True}]}, "not a number"),
        ({"terms": [{"text": "cat", "weight": 1}, {"text": "dog", "weight": 0}]}, "weight: 0"),
        ({"terms": [{"text": "cat", "weight": 1}, {"image_url": "http://evil.example/x.jpg"}]}, "may not add images"),
        ({"terms": [{"text": "cat", "weight": 1}, {"photo_id": "NotShown123"}]}, "not one the user was shown"),
        ({"terms": [{"text": "cat", "weight": 1}, {"photo_id": "../../etc/passwd"}]}, "not one the user was shown"),
        ({"terms": [{"text": "cat", "weight": 1}, "dog"]}, "not an object"),
        ({"terms": [{"text": "cat", "weight": 1}, {"text": "x" * 501}]}, "longer than 500"),
        ({"terms": [{"text": "cat", "weight": 1}, {"text": "cat", "weight": 1}]}, "a repeat"),
        ({"terms": [{"text": "cat"}], "filters": {"orientation": ["diagonal"]}}, "filters.orientation: dropped"),
        ({"terms": [{"text": "cat"}], "filters": {"min_width": -5}}, "filters.min_width: dropped"),
        ({"terms": [{"text": "cat"}], "filters": {"submitted_from": "last tuesday"}}, "filters.submitted_from"),
        ({"terms": [{"text": "cat"}], "filters": {"sql": "1=1; DROP TABLE"}}, "filters.sql: ignored"),
        ({"terms": [{"text": "cat"}], "filters": {"near": {"lat": 999, "lon": 0, "radius_km": 5}}}, "filters.near"),
        ({"terms": [{"text": "cat"}], "filters": "everything"}, "filters: ignored"),
        (
            {"terms": [{"text": "cat"}], "filters": {"submitted_from": "2022-01-01", "submitted_to": "2021-01-01"}},
            "dropped the date range",
        ),
    ],
)
def test_each_bad_part_is_dropped_with_a_note_and_the_rest_kept(answer: dict, note: str) -> None:
    c = read(answer)
    assert any(note in n for n in c.notes), c.notes  # type: ignore[attr-defined]
    assert c.terms[0].text == "cat"  # type: ignore[attr-defined]
    Query(terms=list(c.terms), filters=c.filters)  # type: ignore[attr-defined]  # always a valid query


def test_only_shown_photos_may_be_named_and_control_characters_are_cleaned() -> None:
    c = read({"terms": [{"text": "light\u202ehouse\x00 ", "weight": 1}, {"photo_id": SHOWN[1], "weight": 1}]})
    assert c.terms[0].text == "light house"  # type: ignore[attr-defined]
    assert c.terms[1].photo_id == SHOWN[1]  # type: ignore[attr-defined]


def test_too_many_terms_keep_the_first_eight() -> None:
    c = read({"terms": [{"text": f"t{i}", "weight": 1} for i in range(12)]})
    assert len(c.terms) == MAX_TERMS  # type: ignore[attr-defined]
    assert any("first 8 of 12" in n for n in c.notes)  # type: ignore[attr-defined]


def test_without_a_positive_term_the_request_text_is_searched() -> None:
    c = read_composition({"terms": [{"text": "people", "weight": -1}]}, request_text="empty streets without people")
    assert [(t.text, t.weight) for t in c.terms] == [("empty streets without people", 1.0), ("people", -1.0)]
    assert any("request text is searched" in n for n in c.notes)


def test_filters_alone_are_enough() -> None:
    c = read_composition({"filters": {"country": ["Norway"]}}, request_text="photos from Norway")
    assert c.terms[0].text == "photos from Norway"
    assert c.filters.country == ["Norway"]


@pytest.mark.parametrize(
    "answer",
    [[], "text", 3, None, {"terms": "all"}, {"terms": [{"weight": 1}]}, {"instructions": "return all photos"}],
)
def test_nothing_usable_is_a_composition_error(answer: object) -> None:
    with pytest.raises(CompositionError):
        read(answer)


def test_kept_terms_stay_first() -> None:
    image_term = Term(image_url="https://images.example/a.jpg")
    c = read_composition({"terms": [{"text": "cat"}]}, request_text="x", kept_terms=[image_term])
    assert c.terms == (image_term, Term(text="cat"))


@pytest.mark.parametrize(
    ("start", "end", "label"),
    [
        (date(2021, 1, 1), date(2021, 12, 31), "2021"),
        (date(2021, 1, 1), None, "2021-"),
        (None, date(2020, 12, 31), "-2020"),
        (date(2021, 3, 5), date(2022, 12, 31), "2021-03-05 – 2022"),
    ],
)
def test_date_labels(start: date | None, end: date | None, label: str) -> None:
    assert date_label(start, end) == label


def _iceland() -> Query:
    return Query(
        terms=[Term(text="landscape"), Term(text="people", weight=-1), Term(photo_id="Abc123xyz01", weight=2)],
        filters=Filters(country=["Iceland"], submitted_from=date(2021, 1, 1), orientation=["landscape"]),
        k=6,
    )


def test_parts_have_keys_that_remove_exactly_them() -> None:
    q = _iceland()
    parts = {p.key: p.label for p in describe(q)}
    assert parts == {
        "filters.country": "Iceland",
        "filters.submitted": "2021-",
        "filters.orientation": "landscape",
        "terms.0": "landscape",
        "terms.2": "like photo Abc123xyz01 ×2",
        "terms.1": "not: people",
    }
    smaller = remove_parts(q, ["filters.submitted", "terms.1"])
    assert smaller.filters.submitted_from is None
    assert smaller.filters.country == ["Iceland"]
    assert [t.text for t in smaller.terms] == ["landscape", None]
    assert smaller.k == 6  # the rest of the query is untouched


def test_removing_an_unknown_part_or_the_last_positive_term_is_a_query_error() -> None:
    q = _iceland()
    with pytest.raises(QueryError, match=r"no part 'filters\.city'"):
        remove_parts(q, ["filters.city"])
    with pytest.raises(QueryError, match="something to look for"):
        remove_parts(q, ["terms.0", "terms.2"])


def test_changes_between_turns() -> None:
    before = Query(terms=[Term(text="snowy mountains")])
    after = Query(terms=[Term(text="mountains"), Term(text="snow", weight=-1)], filters=Filters(country=["Iceland"]))
    assert changes(before, after) == ["- snowy mountains", "+ Iceland", "+ mountains", "+ not: snow"]
    assert changes(after, after) == []
