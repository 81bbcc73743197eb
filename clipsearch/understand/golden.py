"""The understanding golden set: requests with the composed query a careful human would write, and how close an
understander comes to it.

Scores, per request: `filters_exact` (1 when the filters equal the expected ones: lists compared as
case-insensitive sets, dates exactly), `term_precision` / `term_recall` / `term_f1` (a predicted term matches an
expected one with the same sign when both name the same photo, or when their content words overlap by at least
half, Jaccard, after case-folding and a crude singular), and `understood` (0 when it fell back to the text).
The set lives in training/understanding_golden.jsonl; `python -m training.evaluate_understanding` runs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from clipsearch.errors import DataFormatError
from clipsearch.query import Filters, Term
from clipsearch.understand.compose import Composition

if TYPE_CHECKING:
    from clipsearch.understand.understander import GeminiUnderstander

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "with",
        "and",
        "or",
        "photo",
        "photos",
        "picture",
        "pictures",
        "image",
        "images",
    ]
)
TERM_MATCH_JACCARD = 0.5


@dataclass(frozen=True)
class GoldenItem:
    id: str
    request: str
    terms: tuple[Term, ...]
    filters: Filters
    previous_terms: tuple[Term, ...] = ()
    previous_filters: Filters | None = None
    shown: tuple[str, ...] = ()

    @property
    def expected(self) -> dict[str, Any]:
        """The expected answer as the model would write it (what the stand-in is told to return)."""
        return {
            "terms": [t.model_dump(mode="json", exclude_none=True) for t in self.terms],
            "filters": self.filters.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
        }


def load_golden(path: Path) -> list[GoldenItem]:
    """Read the JSON-lines golden set; a bad line is a DataFormatError that names it."""
    items: list[GoldenItem] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            previous = row.get("previous") or {}
            items.append(
                GoldenItem(
                    id=str(row["id"]),
                    request=str(row["request"]),
                    terms=tuple(Term.model_validate(t) for t in row["expected"]["terms"]),
                    filters=Filters.model_validate(row["expected"].get("filters") or {}),
                    previous_terms=tuple(Term.model_validate(t) for t in previous.get("terms", [])),
                    previous_filters=Filters.model_validate(previous["filters"]) if "filters" in previous else None,
                    shown=tuple(row.get("shown", [])),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            raise DataFormatError(f"{path}:{n}: not a golden item ({type(exc).__name__}: {exc})") from exc
    if not items:
        raise DataFormatError(f"{path}: the golden set is empty")
    return items


def _tokens(text: str) -> set[str]:
    words = ("".join(ch if ch.isalnum() else " " for ch in text.casefold())).split()
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words} - STOPWORDS


def terms_match(expected: Term, predicted: Term) -> bool:
    if (expected.weight > 0) != (predicted.weight > 0):
        return False
    if expected.photo_id is not None or predicted.photo_id is not None:
        return expected.photo_id == predicted.photo_id
    a, b = _tokens(expected.text or ""), _tokens(predicted.text or "")
    return bool(a | b) and len(a & b) / len(a | b) >= TERM_MATCH_JACCARD


def term_scores(expected: Sequence[Term], predicted: Sequence[Term]) -> tuple[float, float, float]:
    """(precision, recall, F1) of predicted terms against expected ones, each matched at most once."""
    free = list(predicted)
    matched = 0
    for want in expected:
        for i, got in enumerate(free):
            if terms_match(want, got):
                matched += 1
                del free[i]
                break
    precision = matched / len(predicted) if predicted else 0.0
    recall = matched / len(expected) if expected else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _canonical_filters(filters: Filters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in filters.model_dump(mode="json", exclude_none=True, exclude_defaults=True).items():
        out[name] = sorted(str(v).casefold() for v in value) if isinstance(value, list) else value
    return out


def filters_equal(expected: Filters, predicted: Filters) -> bool:
    return _canonical_filters(expected) == _canonical_filters(predicted)


def score(item: GoldenItem, composition: Composition | None) -> dict[str, float]:
    """One request's scores; a fallback (no composition) is scored as the request text with no filters."""
    terms: Sequence[Term] = composition.terms if composition else (Term(text=item.request),)
    filters = composition.filters if composition else Filters()
    precision, recall, f1 = term_scores(item.terms, terms)
    return {
        "understood": 1.0 if composition else 0.0,
        "filters_exact": 1.0 if filters_equal(item.filters, filters) else 0.0,
        "term_precision": precision,
        "term_recall": recall,
        "term_f1": f1,
        "notes": float(len(composition.notes)) if composition else 0.0,
    }


def run_golden(understander: GeminiUnderstander, items: Sequence[GoldenItem]) -> list[dict[str, Any]]:
    """Ask the understander for every item (understand=on) and score each answer."""
    rows: list[dict[str, Any]] = []
    for item in items:
        got = understander.understand(
            item.request,
            mode="on",
            previous_terms=item.previous_terms,
            previous_filters=item.previous_filters,
            shown=item.shown,
        )
        composition = got.composition
        rows.append(
            {
                "id": item.id,
                "request": item.request,
                "reason": got.reason,
                "detail": got.detail,
                "model": got.model,
                "elapsed_s": got.elapsed_s,
                "usage": got.usage,
                "answer": None
                if composition is None
                else {
                    "terms": [t.model_dump(mode="json", exclude_none=True) for t in composition.terms],
                    "filters": composition.filters.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
                    "notes": list(composition.notes),
                },
                "expected": item.expected,
                **score(item, composition),
            }
        )
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means over the set, plus latency percentiles and cost (the metrics logged to MLflow)."""
    n = len(rows)
    if not n:
        return {"n_requests": 0.0}
    mean = {k: sum(float(r[k]) for r in rows) / n for k in ("understood", "filters_exact", "term_f1")}
    elapsed = sorted(float(r["elapsed_s"]) * 1000 for r in rows)

    def pct(p: float) -> float:
        return elapsed[min(n - 1, max(0, round(p * (n - 1))))]

    cost = sum(float(r["usage"].get("cost_usd", 0.0)) for r in rows)
    understood = sum(1 for r in rows if r["understood"])
    return {
        "n_requests": float(n),
        "understood_rate": mean["understood"],
        "filters_exact": mean["filters_exact"],
        "term_f1": mean["term_f1"],
        "term_precision": sum(float(r["term_precision"]) for r in rows) / n,
        "term_recall": sum(float(r["term_recall"]) for r in rows) / n,
        "latency_ms_p50": pct(0.5),
        "latency_ms_p95": pct(0.95),
        "cost_usd_total": cost,
        "cost_usd_per_understood": cost / understood if understood else 0.0,
        "prompt_tokens_mean": sum(float(r["usage"].get("prompt_tokens", 0.0)) for r in rows) / n,
        "output_tokens_mean": sum(float(r["usage"].get("output_tokens", 0.0)) for r in rows) / n,
    }
