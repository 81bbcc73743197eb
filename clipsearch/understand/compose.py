"""A model's composed query, read with suspicion: everything is checked against `clipsearch.query`.

Gemini answers with JSON shaped like the API's own `terms` and `filters`. None of it is trusted: each term and
each filter field is validated on its own by the same pydantic models (and limits) a hand-written query meets,
so one bad value costs only itself. Whatever is dropped is said in a note. A model cannot add what a user could
not: no image to fetch (`image_url` would make the server fetch a URL the model chose), no photo id the user was
not shown, no field the API does not know, no paging, re-rank or k.

The same module turns a query into the parts a person sees ("Iceland", "2021", "not: people"), removes the
parts a person takes away, and says what changed between two turns of a conversation.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import ValidationError

from clipsearch.query import MAX_TERMS, Filters, Query, QueryError, Term

TERM_KEYS = frozenset({"text", "weight", "photo_id"})  # what the model may say about a term
TOP_KEYS = frozenset({"terms", "filters"})
MAX_NOTES = 12
MAX_NOTE_VALUE_CHARS = 40
DATE_PART = "filters.submitted"  # submitted_from and submitted_to are one part: a date range


class CompositionError(ValueError):
    """The answer holds nothing usable (not an object, or every term and filter in it was invalid)."""


@dataclass(frozen=True)
class Composition:
    """What survived validation: terms (at least one positive), filters, and a note per thing dropped."""

    terms: tuple[Term, ...]
    filters: Filters
    notes: tuple[str, ...] = ()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_NOTE_VALUE_CHARS else text[: MAX_NOTE_VALUE_CHARS - 1] + "…"


def _error_text(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return str(first.get("msg", "invalid")).removeprefix("Value error, ")


def clean_text(value: str) -> str:
    """Control and format characters removed, whitespace collapsed (what a model writes is shown to users)."""
    printable = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in value)
    return " ".join(printable.split())


def _read_term(
    i: int, item: object, allowed_photo_ids: Collection[str], max_query_chars: int, notes: list[str]
) -> Term | None:
    if not isinstance(item, dict):
        notes.append(f"terms[{i}]: dropped, not an object ({_short(item)})")
        return None
    fields: dict[str, Any] = {}
    for key, value in item.items():
        if key not in TERM_KEYS:
            why = "the model may not add images to fetch" if key in ("image", "image_url") else "unknown field"
            notes.append(f"terms[{i}].{key}: ignored ({why})")
            continue
        if value is not None:
            fields[key] = value
    weight = fields.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        notes.append(f"terms[{i}]: dropped, weight {_short(weight)} is not a number")
        return None
    if isinstance(fields.get("text"), str):
        fields["text"] = clean_text(fields["text"])
        if len(fields["text"]) > max_query_chars:
            notes.append(f"terms[{i}]: dropped, text longer than {max_query_chars} characters")
            return None
    photo_id = fields.get("photo_id")
    if photo_id is not None and photo_id not in allowed_photo_ids:
        notes.append(f"terms[{i}]: dropped, photo {_short(photo_id)} is not one the user was shown")
        return None
    try:
        return Term.model_validate(fields)
    except ValidationError as exc:
        notes.append(f"terms[{i}]: dropped ({_error_text(exc)})")
        return None


def _term_identity(term: Term) -> tuple[str, str, bool]:
    value = term.text.casefold() if term.text is not None else term.photo_id or term.image_url or ""
    return term.kind, value, term.weight > 0


def _read_terms(raw: object, allowed_photo_ids: Collection[str], max_query_chars: int, notes: list[str]) -> list[Term]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        notes.append(f"terms: ignored, not a list ({_short(raw)})")
        return []
    if len(raw) > MAX_TERMS:
        notes.append(f"terms: only the first {MAX_TERMS} of {len(raw)} kept")
        raw = raw[:MAX_TERMS]
    terms: list[Term] = []
    seen: set[tuple[str, str, bool]] = set()
    for i, item in enumerate(raw):
        term = _read_term(i, item, allowed_photo_ids, max_query_chars, notes)
        if term is None:
            continue
        identity = _term_identity(term)
        if identity in seen:
            notes.append(f"terms[{i}]: dropped, a repeat of an earlier term")
            continue
        seen.add(identity)
        terms.append(term)
    return terms


def _clean_filter_value(value: object) -> object:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        cleaned = [clean_text(v) if isinstance(v, str) else v for v in value]
        return [v for v in cleaned if v != ""] or None
    return value


def _read_filters(raw: object, notes: list[str]) -> Filters:
    if raw is None:
        return Filters()
    if not isinstance(raw, dict):
        notes.append(f"filters: ignored, not an object ({_short(raw)})")
        return Filters()
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in Filters.model_fields:
            notes.append(f"filters.{_short(key)[1:-1] if isinstance(key, str) else key}: ignored (unknown field)")
            continue
        value = _clean_filter_value(value)
        if value is None:
            continue
        try:
            Filters.model_validate({key: value})
        except ValidationError as exc:
            notes.append(f"filters.{key}: dropped {_short(value)} ({_error_text(exc)})")
            continue
        kept[key] = value
    filters = Filters.model_validate(kept)  # each field was checked alone; Filters has no cross-field rule
    start, end = filters.submitted_from, filters.submitted_to
    if start is not None and end is not None and start > end:
        # a hand-written inverted window is a valid, empty query; from a model it is a misreading: drop it
        notes.append(f"filters: dropped the date range (submitted_from {start} is after submitted_to {end})")
        filters = filters.model_copy(update={"submitted_from": None, "submitted_to": None})
    return filters


def read_composition(
    data: object,
    *,
    request_text: str,
    allowed_photo_ids: Collection[str] = (),
    max_query_chars: int = 500,
    kept_terms: Sequence[Term] = (),
) -> Composition:
    """Validate a model's answer (already JSON-decoded) into terms and filters; never raises for a bad part.

    `allowed_photo_ids`: the photos the user was shown (and ones already in the query), the only ids a "more
    like" term may name. `kept_terms`: terms the model never saw (an image the user gave) that stay as they are.
    When no positive term survives, the request text itself is searched, as it would be without understanding.
    Raises `CompositionError` only when nothing at all in the answer is usable.
    """
    if not isinstance(data, dict):
        raise CompositionError(f"the answer is a JSON {type(data).__name__}, expected an object")
    notes: list[str] = []
    for key in data:
        if key not in TOP_KEYS:
            notes.append(f"{_short(key)[1:-1] if isinstance(key, str) else key}: ignored (unknown field)")
    terms = _read_terms(data.get("terms"), allowed_photo_ids, max_query_chars, notes)
    filters = _read_filters(data.get("filters"), notes)
    if not terms and filters.is_empty():
        raise CompositionError(
            "no valid term or filter in the answer" + (f" ({'; '.join(notes[:3])})" if notes else "")
        )
    terms = [*kept_terms, *terms][:MAX_TERMS]
    if not any(t.weight > 0 for t in terms):
        fallback = clean_text(request_text)[:max_query_chars] or "photo"
        notes.append("no positive term in the answer: the request text is searched as typed")
        terms = [Term(text=fallback), *terms][:MAX_TERMS]
    if len(notes) > MAX_NOTES:
        notes = [*notes[: MAX_NOTES - 1], f"... and {len(notes) - MAX_NOTES + 1} more notes"]
    return Composition(terms=tuple(terms), filters=filters, notes=tuple(notes))


# -- what a person sees: parts, a summary line, removal, changes --------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One removable piece of a query: `key` names it for removal (`terms.2`, `filters.country`)."""

    key: str
    label: str
    kind: Literal["term", "filter"]


def _year_or_day(day: date, *, start: bool) -> str:
    if (day.month, day.day) == ((1, 1) if start else (12, 31)):
        return str(day.year)
    return day.isoformat()


def date_label(start: date | None, end: date | None) -> str:
    """2021 (a whole year), 2021- (from), -2021 (until), or the days."""
    if start and end:
        if start.year == end.year and (start.month, start.day, end.month, end.day) == (1, 1, 12, 31):
            return str(start.year)
        return f"{_year_or_day(start, start=True)} – {_year_or_day(end, start=False)}"
    if start:
        return f"{_year_or_day(start, start=True)}-"
    return f"-{_year_or_day(end, start=False)}" if end else ""


def _or(values: Iterable[object]) -> str:
    return " or ".join(str(v) for v in values)


def term_label(term: Term) -> str:
    if term.text is not None:
        what = term.text
    elif term.photo_id is not None:
        what = f"like photo {term.photo_id}"
    elif term.image_url is not None:
        what = f"like image {term.image_url.split('//', 1)[-1].split('/', 1)[0]}"
    else:
        what = "like the uploaded image"
    size = abs(term.weight)
    weight = "" if size == 1 else f" ×{size:g}"
    return f"not: {what}{weight}" if term.weight < 0 else f"{what}{weight}"


def filter_parts(filters: Filters) -> list[Part]:
    f = filters
    parts: list[Part] = []

    def add(name: str, label: str) -> None:
        parts.append(Part(f"filters.{name}", label, "filter"))

    for name in ("country", "city"):
        if getattr(f, name):
            add(name, _or(getattr(f, name)))
    if f.near is not None:
        add("near", f"within {f.near.radius_km:g} km of {f.near.lat:.3f}, {f.near.lon:.3f}")
    if f.submitted_from or f.submitted_to:
        parts.append(Part(DATE_PART, date_label(f.submitted_from, f.submitted_to), "filter"))
    if f.orientation:
        add("orientation", _or(f.orientation))
    if f.colors:
        add("colors", _or(f.colors))
    if f.photographer:
        add("photographer", "by " + _or(f"@{p}" for p in f.photographer))
    if f.camera_make:
        add("camera_make", _or(f.camera_make))
    if f.camera_model:
        add("camera_model", _or(f.camera_model))
    if f.featured is not None:
        add("featured", "featured" if f.featured else "not featured")
    if f.min_width:
        add("min_width", f"≥ {f.min_width} px wide")
    if f.min_height:
        add("min_height", f"≥ {f.min_height} px high")
    known = {"orientation", "colors", "photographer", "country", "city", "near", "submitted_from", "submitted_to"}
    known |= {"camera_make", "camera_model", "featured", "min_width", "min_height", "min_color_coverage"}
    for name, value in f.model_dump(exclude_none=True).items():  # fields added to Filters after this was written
        if name not in known:
            add(name, f"{name}: {value}")
    return parts


def describe(query: Query) -> list[Part]:
    """The query's parts in reading order: filters, then what to look for, then what to avoid.

    ("Iceland, 2021, landscape, not: people"). Keys are stable for one query, so a part can be removed by key.
    """
    positive = [Part(f"terms.{i}", term_label(t), "term") for i, t in enumerate(query.terms) if t.weight > 0]
    negative = [Part(f"terms.{i}", term_label(t), "term") for i, t in enumerate(query.terms) if t.weight < 0]
    return [*filter_parts(query.filters), *positive, *negative]


def summary(query: Query) -> str:
    return ", ".join(p.label for p in describe(query))


def remove_parts(query: Query, keys: Collection[str]) -> Query:
    """`query` without the named parts; a QueryError (422) names an unknown key or an empty result."""
    known = {p.key for p in describe(query)}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise QueryError(f"remove: no part {', '.join(map(repr, unknown))} in the query; its parts are {sorted(known)}")
    drop_terms = {int(k.split(".", 1)[1]) for k in keys if k.startswith("terms.")}
    terms = [t for i, t in enumerate(query.terms) if i not in drop_terms]
    if not any(t.weight > 0 for t in terms):
        raise QueryError("remove: the query needs something to look for; keep at least one term that is not 'not:'")
    drop_filters: set[str] = set()
    for key in keys:
        if key == DATE_PART:
            drop_filters |= {"submitted_from", "submitted_to"}
        elif key.startswith("filters."):
            drop_filters.add(key.split(".", 1)[1])
    filters = Filters.model_validate(query.filters.model_dump(exclude=drop_filters))
    return with_parts(query, terms, filters)


def with_parts(query: Query, terms: Sequence[Term], filters: Filters) -> Query:
    """`query` with other terms and filters, validated again as a whole (a QueryError says what broke)."""
    try:
        return Query.model_validate({**dict(query), "terms": list(terms), "filters": filters})
    except ValidationError as exc:
        raise QueryError(f"the changed query is invalid: {_error_text(exc)}") from exc


def changes(before: Query | None, after: Query) -> list[str]:
    """What a turn changed, for people: '+ night', '- snow', '+ not: snow' (empty when nothing did)."""
    old = [p.label for p in describe(before)] if before is not None else []
    new = [p.label for p in describe(after)]
    return [f"- {label}" for label in old if label not in new] + [f"+ {label}" for label in new if label not in old]
