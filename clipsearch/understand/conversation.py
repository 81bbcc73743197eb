"""Conversation state that the client carries, signed by the service: nothing is kept server-side.

Why signed client-side state rather than a server-side store per id: the service runs as 1-5 stateless replicas
behind a Kubernetes Service (DESIGN.md, Scale) with rolling deploys, so a follow-up often reaches another
replica than the turn before, or a new pod. Server-side state would need sticky sessions or a shared store (a
new moving part on the query path); a signed token works on any replica that shares the HMAC key
(`understand.conversation_secret`), survives deploys, costs no memory, and cannot mix two users' conversations:
each client holds its own state, and the server has no table in which two could meet.

The token is the `conversation_id` of the API: opaque, returned by every answer, sent back with the next
request (like a paging cursor). It holds the composed query of the last turn (text, photo-id and image-URL
terms with weights, filters; never uploaded image bytes), the ids of the photos shown (so "the second one" has a
meaning), the last few requests, a random conversation key for logs, the turn number and two times. It is
bounded: MAX_TOKEN_CHARS, conversation_max_turns, an idle TTL and a maximum age. An expired, over-long-lived or
unverifiable (another key: a restart without a shared secret) conversation starts afresh, and the answer says so;
a token that is not one at all is a 404. Signing makes it tamper-evident, not secret: it holds only what the user
typed and was shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from clipsearch.query import Filters, Query, QueryError, Term

PREFIX = "cv1"
MAX_TOKEN_CHARS = 8192
MAX_SHOWN = 24  # photo ids remembered from the last answer ("the 24th one" is as far as a chat scrolls)
MAX_SAID = 3  # earlier requests remembered, for context ("no, without snow" after "snowy mountains")
MAX_SAID_CHARS = 300


class ConversationError(QueryError):
    """A conversation_id that is not one this service could have issued, or a follow-up / removal for which the
    conversation holds no query (the API answers 404: no such conversation)."""


@dataclass(frozen=True)
class Conversation:
    key: str  # random, for logs and metrics; not a secret
    turn: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    terms: tuple[Term, ...] = ()  # the last turn's composed query (empty on a new conversation)
    filters: Filters = field(default_factory=Filters)
    shown: tuple[str, ...] = ()
    said: tuple[str, ...] = ()

    @property
    def is_new(self) -> bool:
        return not self.terms

    def query(self, **fields: object) -> Query | None:
        """The last composed query with this request's other fields (k, rerank, ...), or None when new."""
        if not self.terms:
            return None
        return Query(terms=list(self.terms), filters=self.filters, **fields)

    def photo_ids(self) -> set[str]:
        """Ids a follow-up may name: the photos shown, and the ones already in the query."""
        return set(self.shown) | {t.photo_id for t in self.terms if t.photo_id is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _term_state(term: Term) -> dict[str, Any] | None:
    if term.image is not None:
        return None  # uploaded bytes are not carried between turns (size); the user can add the image again
    return term.model_dump(mode="json", exclude_none=True, exclude={"image"})


class ConversationCodec:
    """Issues and verifies conversation tokens. Thread-safe (immutable after construction)."""

    def __init__(
        self,
        secret: str | bytes | None,
        *,
        ttl_s: float,
        max_age_s: float,
        max_turns: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shared_secret = secret is not None
        if secret is None:
            secret = secrets.token_bytes(32)
        self._key = secret.encode() if isinstance(secret, str) else secret
        self.ttl_s = ttl_s
        self.max_age_s = max_age_s
        self.max_turns = max_turns
        self._clock = clock

    def new(self) -> Conversation:
        now = self._clock()
        return Conversation(key=secrets.token_hex(8), started_at=now, updated_at=now)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{PREFIX}.{payload}".encode(), hashlib.sha256).digest())

    def seal(
        self, conv: Conversation, *, query: Query, shown: Sequence[str], said: str | None
    ) -> tuple[str, list[str]]:
        """The next turn's token: `conv` advanced by one turn to `query`, with what was shown and said.

        Returns (token, notes); a note says what could not be carried (an uploaded image).
        """
        notes = []
        terms = [s for s in (_term_state(t) for t in query.terms) if s is not None]
        if len(terms) < len(query.terms):
            notes.append("an uploaded image is not remembered between turns; add it again to keep it")
        history = [*conv.said, *([said[:MAX_SAID_CHARS]] if said else [])][-MAX_SAID:]
        state: dict[str, Any] = {
            "k": conv.key,
            "n": conv.turn + 1,
            "s": round(conv.started_at, 3),
            "u": round(self._clock(), 3),
            "t": terms,
            "f": query.filters.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
            "sh": list(shown[:MAX_SHOWN]),
            "sa": history,
        }
        for trim in ("sa", "sh"):  # over the bound: forget context before the query itself
            token = self._encode(state)
            if len(token) <= MAX_TOKEN_CHARS:
                return token, notes
            state[trim] = []
        token = self._encode(state)
        if len(token) > MAX_TOKEN_CHARS:  # unreachable with MAX_TERMS x max_query_chars, but never issue one
            raise QueryError("the conversation state is too large to carry; start a new conversation")
        return token, notes

    def _encode(self, state: dict[str, Any]) -> str:
        raw = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
        payload = _b64(zlib.compress(raw, 9))
        return f"{PREFIX}.{payload}.{self._sign(payload)}"

    def open(self, token: str | None) -> tuple[Conversation, str | None]:
        """The conversation a token carries, or a new one and the reason (expired, unverifiable).

        Raises ConversationError (404) for something that is not a conversation token at all.
        """
        if not token:
            return self.new(), None
        if len(token) > MAX_TOKEN_CHARS:
            raise ConversationError(
                f"conversation_id: longer than {MAX_TOKEN_CHARS} characters; it is not one we issued"
            )
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise ConversationError(
                "conversation_id: not a conversation id; send back the one from the previous answer, or omit it"
            )
        _, payload, signature = parts
        if not hmac.compare_digest(signature, self._sign(payload)):
            why = "its signature does not verify (altered, or issued before a restart without a shared key)"
            return self.new(), f"the conversation could not be continued: {why}; this request starts a new one"
        try:
            state = json.loads(zlib.decompress(_unb64(payload), bufsize=MAX_TOKEN_CHARS * 4))
            conv = Conversation(
                key=str(state["k"]),
                turn=int(state["n"]),
                started_at=float(state["s"]),
                updated_at=float(state["u"]),
                terms=tuple(Term.model_validate(t) for t in state["t"]),
                filters=Filters.model_validate(state["f"]),
                shown=tuple(str(s) for s in state["sh"]),
                said=tuple(str(s) for s in state["sa"]),
            )
        except (binascii.Error, ValueError, zlib.error, KeyError, TypeError, ValidationError) as exc:
            # signed by us yet unreadable: a format from another version of the service
            return (
                self.new(),
                f"the conversation could not be read ({type(exc).__name__}); this request starts a new one",
            )
        now = self._clock()
        if now - conv.updated_at > self.ttl_s:
            return (
                self.new(),
                f"the conversation was idle for more than {self.ttl_s / 60:g} minutes; this starts a new one",
            )
        if now - conv.started_at > self.max_age_s:
            return self.new(), f"the conversation is older than {self.max_age_s / 3600:g} hours; this starts a new one"
        if conv.turn >= self.max_turns:
            return self.new(), f"the conversation reached {self.max_turns} turns; this starts a new one"
        return conv, None

    def forget_query(self, conv: Conversation) -> Conversation:
        return replace(conv, terms=(), filters=Filters())
