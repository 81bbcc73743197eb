"""clipsearch.understand.turn: one conversation turn, without HTTP and without a network (a scripted reader)."""

from __future__ import annotations

from typing import Any

import pytest

from clipsearch.query import Filters, Query, QueryError, Term
from clipsearch.settings import Settings
from clipsearch.understand.compose import Composition
from clipsearch.understand.turn import RequestBudget, Turns
from clipsearch.understand.understander import Understanding


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class ScriptedReader:
    """Stands in for GeminiUnderstander: answers from a queue and records what it was asked."""

    def __init__(self, *answers: Understanding) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def understand(self, text: str, **kw: Any) -> Understanding:
        self.calls.append({"text": text, **kw})
        return self.answers.pop(0)


def understood(terms: list[Term], filters: Filters | None = None, notes: tuple[str, ...] = ()) -> Understanding:
    return Understanding(Composition(tuple(terms), filters or Filters(), notes), usage={"cost_usd": 0.001})


ICELAND = understood(
    [Term(text="landscape"), Term(text="people", weight=-1)],
    Filters(country=["Iceland"], submitted_from="2021-01-01", submitted_to="2021-12-31"),
)


def turns(reader: Any, clock: Clock | None = None) -> Turns:
    settings = Settings(understand={"conversation_secret": "k"})
    return Turns(settings, reader, status="test", clock=clock or Clock())


def test_a_first_request_is_understood_and_a_follow_up_changes_it() -> None:
    reader = ScriptedReader(
        ICELAND,
        understood(
            [Term(text="landscape"), Term(text="people", weight=-1), Term(photo_id="Def456uvw02")],
            Filters(country=["Iceland"], submitted_from="2021-01-01", submitted_to="2021-12-31"),
        ),
    )
    t = turns(reader)
    text = "landscape photos of Iceland from 2021 without people"
    first = t.begin(text, base=Query.from_text(text, k=6))
    assert first.understood
    assert first.reason is None
    assert first.query.k == 6
    assert first.summary == "Iceland, 2021, landscape, not: people"
    assert first.changes == []
    assert reader.calls[0]["previous_terms"] == ()
    assert reader.calls[0]["shown"] == ()
    token, notes = t.end(first, ["Abc123xyz01", "Def456uvw02"])
    assert notes == []

    second = t.begin(
        "more like the second one", base=Query.from_text("more like the second one"), conversation_id=token
    )
    call = reader.calls[1]
    assert call["previous_terms"] == first.query.terms
    assert call["previous_filters"] == first.query.filters
    assert call["shown"] == ("Abc123xyz01", "Def456uvw02")
    assert call["said"] == (text,)
    assert second.changes == ["+ like photo Def456uvw02"]
    assert second.query.k == 4  # k is the request's, not the conversation's


def test_parts_removed_by_key_need_no_gemini_call() -> None:
    reader = ScriptedReader(ICELAND)
    t = turns(reader)
    first = t.begin("landscape photos of Iceland from 2021 without people", base=Query.from_text("x"))
    token, _ = t.end(first, [])
    undone = t.begin(None, base=Query.from_text("x"), conversation_id=token, remove=["filters.submitted", "terms.1"])
    assert undone.summary == "Iceland, landscape"
    assert undone.changes == ["- 2021", "- not: people"]
    assert undone.understanding is None
    assert undone.reason == "not_requested"
    assert len(reader.calls) == 1


def test_remove_and_empty_requests_without_a_conversation_are_query_errors() -> None:
    t = turns(ScriptedReader())
    with pytest.raises(QueryError, match="no previous query"):
        t.begin(None, base=Query.from_text("x"), remove=["terms.0"])
    with pytest.raises(QueryError, match="empty"):
        t.begin(None, base=Query.from_text("x"))


def test_filters_given_by_hand_win_over_understood_ones() -> None:
    reader = ScriptedReader(understood([Term(text="beach")], Filters(country=["Portugal"], orientation=["portrait"])))
    base = Query(terms=[Term(text="beaches in Portugal, vertical")], filters=Filters(country=["Spain"]))
    turn = turns(reader).begin("beaches in Portugal, vertical", base=base)
    assert turn.query.filters == Filters(country=["Spain"], orientation=["portrait"])
    assert any("kept the filters given with the request for country" in n for n in turn.notes)


def test_a_fallback_searches_the_request_as_typed_and_says_why() -> None:
    reader = ScriptedReader(Understanding(None, "timeout", "Gemini did not answer within 0.80s"))
    turn = turns(reader).begin("foggy forest without cars", base=Query.from_text("foggy forest without cars"))
    assert not turn.understood
    assert turn.reason == "timeout"
    assert turn.query == Query.from_text("foggy forest without cars")
    assert turn.summary == "foggy forest without cars"


def test_without_an_understander_or_with_off_nothing_is_asked() -> None:
    off = turns(ScriptedReader()).begin("a b c d e", base=Query.from_text("a b c d e"), mode="off")
    assert off.reason == "not_requested"
    none = turns(None).begin("a b c d e", base=Query.from_text("a b c d e"))
    assert none.reason == "disabled"
    assert none.understanding is not None
    assert none.understanding.detail == "test"


def test_the_request_budget_is_what_is_left_of_both_budgets() -> None:
    clock = Clock()
    reader = ScriptedReader(ICELAND)
    t = turns(reader, clock)
    budget = t.budget()
    assert budget.total_s == pytest.approx(0.8 + 1.5)
    clock.now += 2.0
    t.begin("long request about many things", base=Query.from_text("x"), budget=budget)
    assert reader.calls[0]["budget_s"] == pytest.approx(0.3)
    clock.now += 1.0
    assert budget.remaining() == 0.0
    assert RequestBudget(1.0, clock).remaining() == 1.0


def test_operator_limits_apply_to_understood_queries() -> None:
    reader = ScriptedReader(understood([Term(text="cat")]))
    with pytest.raises(QueryError, match="k: must be between"):
        turns(reader).begin("a long request about cats", base=Query.from_text("x", k=51))
