"""Conversation state carried by the client, signed by the service: bounded, tamper-evident, never shared."""

from __future__ import annotations

import pytest

from clipsearch.query import Filters, Query, Term
from clipsearch.understand.conversation import (
    MAX_SAID,
    MAX_SHOWN,
    MAX_TOKEN_CHARS,
    ConversationCodec,
    ConversationError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def codec(clock: Clock, secret: str | None = "s3cret", **kw: float) -> ConversationCodec:
    fields = {"ttl_s": 600.0, "max_age_s": 3600.0, "max_turns": 5, **kw}
    return ConversationCodec(secret, clock=clock, **fields)  # type: ignore[arg-type]


QUERY = Query(
    terms=[Term(text="lighthouse"), Term(text="people", weight=-1), Term(photo_id="Abc123xyz01")],
    filters=Filters(country=["Norway"]),
)


def test_a_sealed_conversation_opens_with_its_query_shown_ids_and_history() -> None:
    clock = Clock()
    c = codec(clock)
    conv, note = c.open(None)
    assert conv.is_new
    assert note is None
    assert conv.query() is None
    token, notes = c.seal(conv, query=QUERY, shown=["Abc123xyz01", "Def456uvw02"], said="lighthouses in Norway")
    assert notes == []
    assert token.startswith("cv1.")
    clock.now += 10
    again, note = c.open(token)
    assert note is None
    assert again.key == conv.key
    assert again.turn == 1
    assert again.query(k=7) == Query(terms=QUERY.terms, filters=QUERY.filters, k=7)
    assert again.shown == ("Abc123xyz01", "Def456uvw02")
    assert again.said == ("lighthouses in Norway",)
    assert again.photo_ids() == {"Abc123xyz01", "Def456uvw02"}


def test_state_is_bounded_in_history_shown_ids_and_size() -> None:
    clock = Clock()
    c = codec(clock, max_turns=100)
    conv, _ = c.open(None)
    big = Query(terms=[Term(text=("word " * 100).strip() + str(i)) for i in range(8)])
    for i in range(6):
        token, _ = c.seal(conv, query=big, shown=[f"id{j:08d}xx" for j in range(60)], said=f"turn {i} " + "z" * 400)
        conv, _ = c.open(token)
    assert len(conv.said) == MAX_SAID
    assert all(len(s) <= 300 for s in conv.said)
    assert len(conv.shown) == MAX_SHOWN
    assert len(token) <= MAX_TOKEN_CHARS


def test_uploaded_image_bytes_are_not_carried() -> None:
    clock = Clock()
    c = codec(clock)
    conv, _ = c.open(None)
    q = Query(terms=[Term(text="cat"), Term(image=b"\xff\xd8jpeg-bytes")])
    token, notes = c.seal(conv, query=q, shown=[], said="cat")
    assert notes
    assert "uploaded image" in notes[0]
    opened, _ = c.open(token)
    assert opened.terms == (Term(text="cat"),)


@pytest.mark.parametrize(
    ("advance", "kw", "why"),
    [(601, {}, "idle"), (0, {"max_turns": 1}, "turns")],
)
def test_idle_or_long_conversations_start_afresh_and_say_so(advance: float, kw: dict, why: str) -> None:
    clock = Clock()
    c = codec(clock, **kw)
    conv, _ = c.open(None)
    token, _ = c.seal(conv, query=QUERY, shown=[], said="x")
    clock.now += advance
    fresh, note = c.open(token)
    assert fresh.is_new
    assert fresh.key != conv.key
    assert note is not None
    assert why in note


def test_max_age_counts_from_the_start_even_when_busy() -> None:
    clock = Clock()
    c = codec(clock, max_age_s=100, ttl_s=60, max_turns=100)
    conv, _ = c.open(None)
    for _ in range(3):
        token, _ = c.seal(conv, query=QUERY, shown=[], said="x")
        clock.now += 50
        conv, note = c.open(token)
    assert conv.is_new
    assert note is not None
    assert "older than" in note


def test_altered_or_foreign_tokens_never_continue() -> None:
    clock = Clock()
    mine, theirs = codec(clock, "key-a"), codec(clock, "key-b")
    conv, _ = mine.open(None)
    token, _ = mine.seal(conv, query=QUERY, shown=[], said="x")
    prefix, payload, sig = token.split(".")
    tampered = f"{prefix}.{payload[:-2]}AA.{sig}"
    for bad in (tampered, token):
        fresh, note = theirs.open(bad) if bad is token else mine.open(bad)
        assert fresh.is_new
        assert note is not None
        assert "signature" in note


@pytest.mark.parametrize("token", ["hello", "cv1.only-two", "x" * (MAX_TOKEN_CHARS + 1), "cv2.a.b"])
def test_something_that_is_no_token_is_a_422(token: str) -> None:
    with pytest.raises(ConversationError, match="conversation_id"):
        codec(Clock()).open(token)


def test_two_conversations_never_share_state() -> None:
    clock = Clock()
    c = codec(clock)
    a, _ = c.open(None)
    b, _ = c.open(None)
    ta, _ = c.seal(a, query=Query(terms=[Term(text="cats")]), shown=["Abc123xyz01"], said="cats")
    tb, _ = c.seal(b, query=Query(terms=[Term(text="dogs")]), shown=["Def456uvw02"], said="dogs")
    oa, _ = c.open(ta)
    ob, _ = c.open(tb)
    assert oa.key != ob.key
    assert oa.terms == (Term(text="cats"),)
    assert ob.terms == (Term(text="dogs"),)
    assert oa.shown == ("Abc123xyz01",)
    assert ob.shown == ("Def456uvw02",)


def test_without_a_shared_secret_each_process_has_its_own_key() -> None:
    clock = Clock()
    one, two = codec(clock, None), codec(clock, None)
    assert not one.shared_secret
    conv, _ = one.open(None)
    token, _ = one.seal(conv, query=QUERY, shown=[], said="x")
    assert not one.open(token)[0].is_new
    assert two.open(token)[0].is_new  # another replica, or after a restart
