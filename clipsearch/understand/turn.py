"""One turn of a search conversation, independent of HTTP: what every entry point (API, chat page, CLI) calls.

`Turns.begin` opens the conversation (if any), applies the parts the user removed, lets Gemini read the request
(a first request, or a follow-up that changes the previous query), and returns the `Query` to search with what
to tell the user: the query as understood (parts with keys), what changed, notes, and why understanding was
skipped or fell back. `Turns.end` seals the next conversation token with the photos that were shown.

Budget: one request's Gemini time is bounded by `understand.budget_s + rerank.budget_s`. Understanding takes at
most its own budget (less when the request budget says so); re-ranking keeps its own `rerank.budget_s`, so a
hanging Gemini holds a reply at most the two together, plus CLIP's own few milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from clipsearch.query import MAX_TERMS, Filters, Query, QueryError, Term, check_limits
from clipsearch.settings import Settings
from clipsearch.understand.compose import Part, changes, describe, remove_parts, summary, with_parts
from clipsearch.understand.conversation import Conversation, ConversationCodec, ConversationError

if TYPE_CHECKING:
    from clipsearch.understand.understander import GeminiUnderstander, Understanding, UnderstandMode


class RequestBudget:
    """The Gemini time one request may spend: understanding's budget plus re-ranking's, from the request's start."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s = total_s
        self._clock = clock
        self.started = clock()

    def remaining(self) -> float:
        return max(0.0, self.total_s - (self._clock() - self.started))


@dataclass
class Turn:
    """What `begin` decided: the query to search and everything the response says about how it was read."""

    query: Query
    conversation: Conversation
    understanding: Understanding | None  # None when nothing was asked (only parts removed)
    previous: Query | None
    notes: list[str] = field(default_factory=list)
    conversation_note: str | None = None
    request_text: str | None = None

    @property
    def understood(self) -> bool:
        return self.understanding is not None and self.understanding.understood

    @property
    def reason(self) -> str | None:
        if self.understanding is None:
            return "not_requested"
        return self.understanding.reason

    @property
    def parts(self) -> list[Part]:
        return describe(self.query)

    @property
    def summary(self) -> str:
        return summary(self.query)

    @property
    def changes(self) -> list[str]:
        return changes(self.previous, self.query) if self.previous is not None else []

    @property
    def usage(self) -> dict[str, float]:
        return dict(self.understanding.usage) if self.understanding is not None else {}

    def as_dict(self) -> dict[str, Any]:
        """JSON for the CLI (the API has its own schema with the same fields)."""
        u = self.understanding
        return {
            "understood": self.understood,
            "reason": self.reason,
            "detail": u.detail if u else None,
            "summary": self.summary,
            "parts": [{"key": p.key, "label": p.label, "kind": p.kind} for p in self.parts],
            "changes": self.changes,
            "notes": self.notes,
            "model": u.model if u else None,
            "cached": bool(u and u.cached),
            "usage": self.usage,
        }


class Turns:
    """Conversation turns for one process. Thread-safe: it holds no per-conversation state (see conversation.py)."""

    def __init__(
        self,
        settings: Settings,
        understander: GeminiUnderstander | None,
        *,
        status: str,
        codec: ConversationCodec | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.understander = understander
        self.status = status  # why there is no understander, or which model reads
        u = settings.understand
        self.codec = codec or ConversationCodec(
            u.conversation_secret,
            ttl_s=u.conversation_ttl_s,
            max_age_s=u.conversation_max_age_s,
            max_turns=u.conversation_max_turns,
        )
        self._clock = clock

    @property
    def available(self) -> bool:
        return self.understander is not None

    def budget(self) -> RequestBudget:
        return RequestBudget(self.settings.understand.budget_s + self.settings.rerank.budget_s, clock=self._clock)

    def begin(
        self,
        text: str | None,
        *,
        base: Query,
        mode: UnderstandMode = "auto",
        conversation_id: str | None = None,
        remove: Sequence[str] = (),
        budget: RequestBudget | None = None,
        explicit_terms: Sequence[Term] | None = None,
    ) -> Turn:
        """Read one request into the Query to search. QueryError (422) for bad input, ConversationError (404)
        for a conversation that is not there to refine; never an error for Gemini trouble.

        `base` is the query the request spells out by hand (its text as one term, k, rerank, filters, mode,
        paging, ...). Precedence: what the request gives explicitly wins over what was understood. Understanding
        replaces `base`'s text term with the terms it read, keeps `explicit_terms` (the request's own terms
        besides the text: `like`, `not`, images, weighted `terms`; default: the non-text terms of `base`) ahead of
        them, adds the filters the request did not set, and keeps every other field of the request.
        """
        conv, conv_note = self.codec.open(conversation_id)
        fields = _request_fields(base)
        try:
            before = conv.query(**fields)
        except ValidationError as exc:  # e.g. mode=keyword with a conversation of image terms only
            raise QueryError(
                f"the conversation's query cannot be used with this request: {exc.errors()[0]['msg']}"
            ) from exc
        previous = before
        notes: list[str] = []
        explicit = list(explicit_terms) if explicit_terms is not None else [t for t in base.terms if t.kind != "text"]
        if remove:
            if previous is None:
                raise ConversationError(
                    "remove: there is no previous query in this conversation to remove parts from; send the "
                    "conversation_id of the answer that showed them"
                )
            previous = remove_parts(previous, remove)
        if not text:
            if previous is None:
                if explicit:  # images, photos or "not" terms of its own and no words to read: as given
                    return self._checked(Turn(base, conv, None, None, notes, conv_note, None))
                if conversation_id:
                    raise ConversationError(
                        "conversation_id: this conversation has no query to refine (it expired or could not be "
                        "continued); send q to start again"
                    )
                raise QueryError("q: the query is empty; type a few words describing the image")
            query = previous
            if explicit or not base.filters.is_empty():
                query = with_parts(
                    previous,
                    _combine(explicit, previous.terms),
                    _merge_filters(base.filters, previous.filters, notes),
                )
            return self._checked(Turn(query, conv, None, before, notes, conv_note, None))
        understanding = self._understand(text, mode, previous, conv, budget)
        if understanding.understood and understanding.composition is not None:
            c = understanding.composition
            query = with_parts(base, _combine(explicit, c.terms), _merge_filters(base.filters, c.filters, notes))
            notes.extend(c.notes)
        else:
            query = base
        return self._checked(Turn(query, conv, understanding, before, notes, conv_note, text))

    def _understand(
        self,
        text: str,
        mode: UnderstandMode,
        previous: Query | None,
        conv: Conversation,
        budget: RequestBudget | None,
    ) -> Understanding:
        from clipsearch.understand.understander import DISABLED, NOT_REQUESTED, Understanding

        if mode == "off":
            return Understanding(None, NOT_REQUESTED, "understand=off: searched as typed")
        if self.understander is None:
            return Understanding(None, DISABLED, self.status)
        return self.understander.understand(
            text,
            mode=mode,
            previous_terms=previous.terms if previous is not None else (),
            previous_filters=previous.filters if previous is not None else None,
            shown=conv.shown if previous is not None else (),
            said=conv.said if previous is not None else (),
            budget_s=budget.remaining() if budget is not None else None,
        )

    def _checked(self, turn: Turn) -> Turn:
        s = self.settings.service
        check_limits(turn.query, max_query_chars=s.max_query_chars, max_k=s.max_k, max_candidates=s.max_candidates)
        return turn

    def end(self, turn: Turn, shown: Sequence[str]) -> tuple[str, list[str]]:
        """The next `conversation_id`, and notes on what it could not carry."""
        return self.codec.seal(turn.conversation, query=turn.query, shown=shown, said=turn.request_text)


def _combine(explicit: Sequence[Term], understood: Sequence[Term]) -> list[Term]:
    """The request's own terms first, then the understood ones it does not already hold (at most MAX_TERMS)."""
    return [*explicit, *[t for t in understood if t not in explicit]][:MAX_TERMS]


def _request_fields(base: Query) -> dict[str, Any]:
    """The parts of a query that belong to this request, not to the conversation (k, paging, rerank, ...)."""
    return {k: v for k, v in dict(base).items() if k not in ("terms", "filters")}


def _merge_filters(explicit: Filters, understood: Filters, notes: list[str]) -> Filters:
    """Filters the request sets by hand win; understood ones fill the other fields."""
    mine = explicit.model_dump(exclude_none=True, exclude_unset=True)
    theirs = understood.model_dump(exclude_none=True, exclude_unset=True)
    overridden = sorted(k for k in theirs if k in mine and mine[k] != theirs[k])
    if overridden:
        notes.append(f"kept the filters given with the request for {', '.join(overridden)}")
    merged = Filters.model_validate({**theirs, **mine})
    start, end = merged.submitted_from, merged.submitted_to
    if start is not None and end is not None and start > end:  # an understood bound crosses one given by hand
        notes.append("dropped the understood date range: it contradicts the one given with the request")
        theirs.pop("submitted_from", None)
        theirs.pop("submitted_to", None)
        merged = Filters.model_validate({**theirs, **mine})
    return merged
