"""The route's side of query understanding: read a request into a turn, and describe it in the response.

Kept out of search_routes.py so the route only calls `read_turn` before searching and `describe_turn` after.
Gemini's call runs off the event loop; its outcome is never an error (see clipsearch.understand). A conversation_id
that is not one this service issued, or a follow-up / `remove` without a query to work on, is a 404 (no such
conversation); an unknown part to remove is a 422; `understand=on` without a configured understander is a 409,
like `rerank=on`. The understood Query is the one the engine answers, whole (terms, negative and photo-id terms,
filters), so nothing is reported as not applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from fastapi import HTTPException

from clipsearch.query import Query, QueryError, Term
from clipsearch.settings import Settings
from clipsearch.understand.conversation import ConversationError
from clipsearch.understand.turn import RequestBudget, Turn, Turns
from services.search.query_adapters import BLANK_CHARS
from services.search.schemas import QueryPart, SearchRequest, UnderstandingInfo

log = logging.getLogger("services.search")


def build_turns(settings: Settings) -> Turns:
    """The process's `Turns`: with a Gemini understander when a key is set and understanding is enabled."""
    from clipsearch.rerank.gemini import API_KEY_ENV
    from clipsearch.understand.understander import GeminiUnderstander

    understander = None
    if not settings.understand.enabled:
        status = "understanding is disabled (understand.enabled=false)"
    else:
        try:
            understander = GeminiUnderstander.from_settings(
                settings.understand, settings.rerank, max_query_chars=settings.service.max_query_chars
            )
            status = understander.description if understander else f"{API_KEY_ENV} is not set (nor rerank.api_key)"
        except Exception as exc:  # a bad base_url or model must not keep the service from starting
            status = f"the Gemini client could not be created ({type(exc).__name__})"
            log.warning("query understanding unavailable: %s", exc)
    turns = Turns(settings, understander, status=status)
    if not turns.codec.shared_secret:
        log.info("conversation state is signed with a per-process key (set understand.conversation_secret to share it)")
    return turns


async def read_turn(
    turns: Turns,
    body: SearchRequest,
    base: Query,
    budget: RequestBudget,
    *,
    explicit_terms: Sequence[Term] = (),
) -> Turn:
    """`Turns.begin` off the event loop (Gemini reads `q`); `base` is the request's own Query (built by
    `query_adapters` like any POST), `explicit_terms` the terms the request spells out besides `q` (`like`, `not`,
    images, `terms`), which win over understood ones. A conversation_id that is not ours, or that names no query
    to refine or remove from -> 404; other bad input -> 422; understand=on without Gemini -> 409."""
    if body.understand == "on" and not turns.available:
        raise HTTPException(
            409,
            detail=f"understand=on was requested but understanding is unavailable ({turns.status}); "
            "use understand=auto or off",
        )
    text = body.q.strip(BLANK_CHARS) if body.q is not None else None

    def begin() -> Turn:
        return turns.begin(
            text or None,
            base=base,
            mode=body.understand,
            conversation_id=body.conversation_id,
            remove=body.remove,
            budget=budget,
            explicit_terms=explicit_terms,
        )

    try:
        if text and body.understand != "off" and turns.available:
            return await asyncio.to_thread(begin)  # Gemini: off the event loop
        return begin()
    except ConversationError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except QueryError as exc:
        raise HTTPException(422, detail=str(exc)) from None


def describe_turn(
    requested: str, turn: Turn, *, not_applied: list[str] | None = None, notes: list[str] | None = None
) -> UnderstandingInfo:
    u = turn.understanding
    return UnderstandingInfo(
        requested=requested,
        understood=turn.understood,
        reason=turn.reason,
        detail=u.detail if u is not None else None,
        summary=turn.summary,
        parts=[QueryPart(key=p.key, label=p.label, kind=p.kind) for p in turn.parts],
        changes=turn.changes,
        notes=[*turn.notes, *(notes or [])],
        not_applied=not_applied or [],
        model=u.model if u is not None else None,
        cached=bool(u and u.cached),
        conversation=turn.conversation_note,
    )


def outcome_label(turn: Turn) -> str:
    """The metrics label: understood, cached, or the reason it was searched as typed."""
    if turn.understood:
        return "cached" if turn.understanding is not None and turn.understanding.cached else "understood"
    return turn.reason or "not_requested"
