"""GET parameters, JSON bodies and multipart forms -> one `clipsearch.query.Query` (thin adapters, one value).

- `GET /search?q=...&like=<photo_id>&not=<text>` (both repeatable): links that can be shared. `q` and `like` are
  positive terms (weight 1), each `not` a negative one (weight -1).
- `POST /search` with `application/json`: `SearchRequest` (the shorthand fields above, and/or `terms` with
  weights; images as base64).
- `POST /search` with `multipart/form-data`: the same shorthand as form fields, image files as `image` parts
  (repeatable; weight 1), and optionally a `query` part holding the JSON form, whose terms may name a file part
  instead of inlining it: `{"file": "<part name>", "weight": 2}`.

Every refusal is a `QueryError`-like `AdapterError` with a status and a reason (the route answers it as is).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from clipsearch.query import (
    MAX_TERMS,
    Filters,
    Query,
    QueryError,
    SearchMode,
    SortOrder,
    Term,
    check_limits,
    scalar_from_text,
)
from clipsearch.settings import Settings
from clipsearch.understand.conversation import MAX_TOKEN_CHARS
from services.search.schemas import RerankMode, SearchRequest

JSON_TYPES = ("application/json",)
MULTIPART = "multipart/form-data"
MAX_FORM_FIELDS = 64
BASE64_OVERHEAD = 4 / 3
# What counts as blank around a text, spelled out so that Python (strip), pydantic-core (Rust regex) and JSON
# Schema (ECMA regex, what clients and the contract fuzzer read) agree: Python's str.isspace() set plus U+FEFF.
BLANK_CHARS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# Form fields of a multipart POST besides image files: the shorthand, the scalars of the query, and `query` (the
# JSON form as text, where filters and weighted terms go).
TYPED_FORM_SCALARS = frozenset({"k", "candidates", "offset", "min_score", "dedupe"})
# A real 1x1 PNG, so the documented example is a request the service can answer (a placeholder would not decode).
PNG_1PX_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
FORM_SCALARS = (
    "q",
    "k",
    "candidates",
    "rerank",
    "mode",
    "offset",
    "cursor",
    "min_score",
    "sort",
    "dedupe",
    "understand",
    "conversation_id",
)
FORM_LISTS = ("like", "not", "image_url", "remove")


class AdapterError(Exception):
    """A request that cannot become a `Query`: `status` (4xx) and a reason naming the field."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def validation_detail(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's errors as one line: `terms.1.weight: ...; k: ...` (no 'Value error, ' noise); `prefix` names
    the object validated (`filters.`) when the model is a part of the request."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if where:
            parts.append(f"{prefix}{where}: {msg}")
        else:
            parts.append(f"{prefix.rstrip('.')}: {msg}" if prefix else msg)
    return "; ".join(parts) or "invalid query"


def check_paging(settings: Settings, k: int, candidates: int) -> None:
    """The bounds of k and candidates (documented in OpenAPI by `document_limits`). Fewer candidates than
    results asked for is not an error: the query then re-ranks from k (each bound alone is what a client can
    read in the document)."""
    limits = settings.service
    if not 1 <= k <= limits.max_k:
        raise AdapterError(422, f"k: must be between 1 and {limits.max_k}")
    if not 1 <= candidates <= limits.max_candidates:
        raise AdapterError(422, f"candidates: must be between 1 and {limits.max_candidates}")


def _shorthand_terms(
    q: str | None, like: Iterable[str], not_: Iterable[str], image_urls: Iterable[str] = ()
) -> list[dict[str, Any]]:
    terms: list[dict[str, Any]] = []
    if q is not None:
        if not q.strip(BLANK_CHARS):
            raise AdapterError(422, "q: the query is empty; type a few words describing the image")
        terms.append({"text": q.strip(BLANK_CHARS)})
    terms += [{"photo_id": p.strip()} for p in like]
    terms += [{"image_url": u.strip()} for u in image_urls]
    for text in not_:
        if not text.strip(BLANK_CHARS):
            raise AdapterError(422, "not: empty; name something to leave out, e.g. not=people")
        terms.append({"text": text.strip(BLANK_CHARS), "weight": -1.0})
    return terms


def max_offset(settings: Settings) -> int:
    """The deepest offset any k can page from (offset + k must fit in search.max_results); documented as the
    bound of `offset` in the OpenAPI document."""
    return max(0, settings.search.max_results - settings.service.max_k)


def _build(terms: list[Any], settings: Settings, **fields: Any) -> Query:
    if not terms:
        raise AdapterError(
            422, "q: give something to search for: q (words), like (a photo id), an image, an image_url or terms"
        )
    if len(terms) > MAX_TERMS:
        raise AdapterError(422, f"terms: {len(terms)} terms; at most {MAX_TERMS} may be combined")
    if fields.get("k") is not None and fields.get("candidates") is not None:
        check_paging(settings, fields["k"], fields["candidates"])
        fields["candidates"] = max(fields["candidates"], fields["k"])
    if fields.get("mode") is None:
        fields["mode"] = settings.search.mode
    fields["cursor"] = fields.get("cursor") or None  # `cursor=` (empty) in a link means no cursor
    deepest = max_offset(settings)
    if (fields.get("offset") or 0) > deepest:
        raise AdapterError(
            422,
            f"offset: must be at most {deepest} (search.max_results {settings.search.max_results} - max_k "
            f"{settings.service.max_k}); narrow the query with filters or min_score instead of paging that deep",
        )
    for i, term in enumerate(terms):
        text = term.get("text") if isinstance(term, dict) else getattr(term, "text", None)
        if isinstance(text, str) and len(text) > settings.service.max_query_chars:
            where = "q" if i == 0 and fields.get("_shorthand") else f"terms[{i}].text"
            raise AdapterError(
                422,
                f"{where}: the query is {len(text)} characters; the limit is {settings.service.max_query_chars}",
            )
    try:
        query = Query(terms=terms, **{k: v for k, v in _strip_private(fields).items() if v is not None})
    except ValidationError as exc:
        raise AdapterError(422, validation_detail(exc)) from None
    limits = settings.service
    try:
        check_limits(
            query, max_query_chars=limits.max_query_chars, max_k=limits.max_k, max_candidates=limits.max_candidates
        )
    except QueryError as exc:
        raise AdapterError(422, str(exc)) from None
    return query


def from_get(
    settings: Settings,
    *,
    q: str | None,
    like: Sequence[str],
    not_: Sequence[str],
    k: int,
    candidates: int,
    rerank: RerankMode,
    filters: Filters | None = None,
    mode: SearchMode | None = None,
    offset: int = 0,
    cursor: str | None = None,
    min_score: float | None = None,
    sort: SortOrder = "relevance",
    dedupe: bool = False,
) -> Query:
    """`GET /search`: q, repeatable like and not, the filters and the paging/ranking parameters."""
    if q is not None and len(q) > settings.service.max_query_chars:
        raise AdapterError(422, f"q: the query is {len(q)} characters; the limit is {settings.service.max_query_chars}")
    check_paging(settings, k, candidates)
    terms = _shorthand_terms(q, like, not_)
    return _build(
        terms,
        settings,
        k=k,
        candidates=candidates,
        rerank=rerank,
        filters=filters,
        mode=mode,
        offset=offset,
        cursor=cursor,
        min_score=min_score,
        sort=sort,
        dedupe=dedupe,
        _shorthand=True,
    )


def _strip_private(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if not k.startswith("_")}


@dataclass(frozen=True)
class Posted:
    """A POST body read into its Query, with what query understanding needs besides it.

    `explicit_terms`: the request's own terms other than `q` (like, not, image_url, images, terms): understanding
    reads `q` and keeps these. `conversation_only`: the body gave no term at all, only a `conversation_id` and/or
    `remove` (a follow-up that takes parts away, or the next page of the conversation's query); `query` then holds
    a stand-in term that understanding replaces with the conversation's query.
    """

    body: SearchRequest
    query: Query
    explicit_terms: tuple[Term, ...]
    conversation_only: bool = False


CONVERSATION_STAND_IN = {"text": "photo"}


def posted_from_body(settings: Settings, body: SearchRequest, files: Mapping[str, bytes] | None = None) -> Posted:
    """`from_body`, keeping the body and telling the request's own terms from its `q`."""
    has_terms = body.q is not None or body.like or body.not_ or body.image_url or body.images or body.terms
    if not has_terms and (body.conversation_id or body.remove):
        query = from_body(settings, body, files, stand_in=True)
        return Posted(body, query, (), conversation_only=True)
    query = from_body(settings, body, files)
    explicit = query.terms[1:] if body.q is not None else query.terms
    return Posted(body, query, tuple(explicit))


def from_body(
    settings: Settings, body: SearchRequest, files: Mapping[str, bytes] | None = None, *, stand_in: bool = False
) -> Query:
    """The JSON form (and the `query` part of a multipart form, whose terms may name `files`). `stand_in`: a
    conversation-only body (see `Posted`) gets a placeholder term so the rest of its fields are validated."""
    if body.q is not None and len(body.q) > settings.service.max_query_chars:
        raise AdapterError(
            422, f"q: the query is {len(body.q)} characters; the limit is {settings.service.max_query_chars}"
        )
    terms: list[Any] = _shorthand_terms(body.q, body.like, body.not_, body.image_url)
    for i, raw in enumerate(body.terms or []):
        if isinstance(raw, dict) and "file" in raw:
            name = raw["file"]
            if files is None or name not in files:
                raise AdapterError(422, f"terms[{i}].file: no file part named {name!r} in the form")
            raw = {**{k: v for k, v in raw.items() if k != "file"}, "image": files[name]}
        terms.append(raw)
    for data in body.images:
        terms.append({"image": data})
    if stand_in and not terms:
        terms.append(dict(CONVERSATION_STAND_IN))
    k = settings.search.k if body.k is None else body.k
    candidates = settings.search.candidates if body.candidates is None else body.candidates
    check_paging(settings, k, candidates)
    fields = {
        "k": k,
        "candidates": candidates,
        "rerank": body.rerank,
        "mode": body.mode,
        "filters": body.filters,
        "offset": body.offset,
        "cursor": body.cursor,
        "min_score": body.min_score,
        "sort": body.sort,
        "dedupe": body.dedupe,
        "_shorthand": body.q is not None,
    }
    query = _build(terms, settings, **fields)
    return query


def upload_cap(settings: Settings) -> int:
    """The largest `POST /search` body worth reading (the surface middleware lets multipart uploads this large)."""
    return _body_cap(settings)


def _body_cap(settings: Settings) -> int:
    """The largest request body worth reading: every term an image at the byte cap, base64-inflated, plus slack."""
    return int(MAX_TERMS * settings.inputs.max_image_bytes * BASE64_OVERHEAD) + 64 * 1024


def _check_length(request: Request, settings: Settings) -> None:
    declared = request.headers.get("content-length")
    cap = _body_cap(settings)
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise AdapterError(413, f"request body: {declared} bytes; the limit is {cap} bytes")


async def _read_limited(request: Request, cap: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise AdapterError(413, f"request body: more than {cap} bytes; the limit is {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _plain_text(name: str, value: str) -> None:
    """A form's text field holding a JSON object or array is a client sending structure where text goes: say so
    (structured terms belong in the `query` part) rather than search for the literal braces."""
    text = value.strip()
    if text[:1] in ("{", "["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return
        if isinstance(parsed, dict | list):
            raise AdapterError(
                422, f"{name}: plain text expected, got JSON; send structured terms in the form's `query` part"
            )


async def from_request(request: Request, settings: Settings) -> Query:
    """`POST /search`, JSON or multipart by Content-Type, as its Query (the request's own fields only)."""
    return (await read_request(request, settings)).query


async def read_request(request: Request, settings: Settings) -> Posted:
    """`POST /search`, JSON or multipart by Content-Type: the body and its Query (see `Posted`)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    _check_length(request, settings)
    if content_type == MULTIPART:
        return await _from_multipart(request, settings)
    if content_type and content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise AdapterError(415, f"content-type: {content_type} is not accepted; send application/json or {MULTIPART}")
    raw = await _read_limited(request, _body_cap(settings))
    try:
        payload = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(422, f"body: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise AdapterError(422, "body: expected a JSON object (see SearchRequest in /docs)")
    try:
        body = SearchRequest.model_validate(payload)
    except ValidationError as exc:
        raise AdapterError(422, validation_detail(exc)) from None
    return posted_from_body(settings, body)


async def _from_multipart(request: Request, settings: Settings) -> Posted:
    cap = settings.inputs.max_image_bytes
    try:
        form = await request.form(max_files=MAX_TERMS, max_fields=MAX_FORM_FIELDS, max_part_size=1024 * 1024)
    except AssertionError as exc:  # python-multipart missing: an operator problem, said plainly
        raise AdapterError(415, f"multipart forms are not available on this server ({exc})") from None
    except Exception as exc:  # starlette's MultiPartException and parser errors: the client's form is bad
        raise AdapterError(422, f"form: could not be read ({exc})") from None
    try:
        files: dict[str, bytes] = {}
        images: list[bytes] = []
        fields: dict[str, list[str]] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read(cap + 1)
                if len(data) > cap:
                    raise AdapterError(413, f"{name}: more than {cap} bytes; the limit is {cap} bytes")
                if name == "image":
                    images.append(data)
                files[name if name not in files else f"{name}#{len(files)}"] = data
            else:
                fields.setdefault(name, []).append(str(value))
    finally:
        await form.close()
    unknown = set(fields) - {*FORM_SCALARS, *FORM_LISTS, "query"}
    if unknown:
        raise AdapterError(422, f"form: unknown field(s) {', '.join(sorted(unknown))}")
    payload: dict[str, Any] = {}
    if "query" in fields:
        try:
            payload = json.loads(fields["query"][0])
        except ValueError as exc:
            raise AdapterError(422, f"query: not valid JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise AdapterError(422, "query: expected a JSON object")
    for name in FORM_SCALARS:
        if name in fields:  # form values are text: numbers and booleans are read as the JSON they spell
            value = fields[name][0]
            payload[name] = scalar_from_text(value) if name in TYPED_FORM_SCALARS else value
    for name in FORM_LISTS:
        if name in fields:
            for value in fields[name]:
                _plain_text(name, value)
            payload[name] = [*payload.get(name, []), *fields[name]]
    try:
        body = SearchRequest.model_validate(payload)
    except ValidationError as exc:
        raise AdapterError(422, validation_detail(exc)) from None
    body = body.model_copy(update={"images": [*body.images, *images]})
    return posted_from_body(settings, body, files)


def document_search_body(app: FastAPI) -> None:
    """OpenAPI: `POST /search` reads its body by hand (JSON or multipart), so describe both here."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        json_schema = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(json_schema.pop("$defs", {}))
        components["SearchRequest"] = json_schema
        operation = schema.get("paths", {}).get("/search", {}).get("post")
        if operation is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/SearchRequest"},
                        "examples": SEARCH_EXAMPLES,
                    },
                    MULTIPART: {
                        "schema": MULTIPART_SCHEMA,
                        "encoding": {"image": {"contentType": "image/jpeg, image/png, image/webp, image/gif"}},
                    },
                },
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


SEARCH_EXAMPLES: dict[str, Any] = {
    "text": {"summary": "Words", "value": {"q": "a foggy forest at dawn", "k": 4}},
    "more_like_this": {"summary": "More like this photo", "value": {"like": ["Xy3kP0aZ9bQ"]}},
    "negative": {"summary": "A negative term", "value": {"q": "a beach", "not": ["people"]}},
    "weighted": {
        "summary": "Weighted terms (rclip style: photo - 2:sports car + 2:snow)",
        "value": {
            "terms": [
                {"photo_id": "Xy3kP0aZ9bQ", "weight": 1},
                {"text": "sports car", "weight": -2},
                {"text": "snow", "weight": 2},
            ]
        },
    },
    "image": {"summary": "An example image (base64)", "value": {"terms": [{"image": PNG_1PX_BASE64}]}},
    "image_url": {
        "summary": "An image by URL",
        "value": {"terms": [{"image_url": "https://images.unsplash.com/photo-1?w=400", "weight": 1}]},
    },
}

MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Example image file(s): JPEG, PNG, WebP or GIF (first frame); weight 1 each.",
        },
        "q": {"type": "string", "description": "Words to look for (weight 1).", "examples": ["snow"]},
        "k": {"type": "integer", "examples": [4]},
        "candidates": {"type": "integer", "examples": [10]},
        "rerank": {"type": "string", "enum": ["auto", "on", "off"]},
        "understand": {"type": "string", "enum": ["auto", "on", "off"]},
        "conversation_id": {"type": "string", "maxLength": MAX_TOKEN_CHARS},
        "query": {
            "type": "string",
            "description": "The JSON form (SearchRequest) as text; a term may name a file part instead of "
            'inlining it: {"file": "photo", "weight": 2}. Repeatable text fields `like`, `not`, `image_url` and '
            "`remove` (parts of the conversation's query to drop, at most 16) are also read from the form (each repetition one value); they are described here rather than as "
            "array properties because a form cannot tell one value from a one-item list.",
            # no file reference in the example: a client sending the example alone has no part named "photo"
            "examples": ['{"terms": [{"text": "snow", "weight": 2}, {"text": "people", "weight": -1}]}'],
        },
    },
}
