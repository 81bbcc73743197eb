"""Judged queries from Unsplash Lite: what people searched for, and the photos they then downloaded.

Sources and grades
- `conversions`: a row says an (anonymous) user searched `keyword` and then downloaded `photo_id`. The grade
  of (query, photo) is the number of *distinct* users who did so, capped at `MAX_GRADE` (so one viral photo
  does not outweigh everything else in nDCG's 2^g - 1 gain). Pairs with fewer than `min_users` users are
  dropped. A conversion with no user id counts as one user of its own.
- `keywords` with `suggested_by_user` true (a person confirmed the tag): grade 1 for (keyword, photo), added
  to the queries the conversions produced (the grade is the maximum of the two sources). Keywords do not create
  queries of their own: the query set is what people actually typed in the held-out period.

Temporal hold-out: conversions are sorted by `converted_at`; the newest `holdout_fraction` of them form the test
set, and everything at or after the cut-off timestamp is in it (a tie at the boundary never splits). Nothing
in the pipeline trains on the older part today; the split keeps it honest for anything tuned on queries
later (prompts, thresholds, fine-tuning).

Only photos in the index can be judged: pairs for other photos are dropped before counting positives.

Positives-only labels: a photo absent from `relevant` is *unknown*, not irrelevant. Nobody marked it bad;
the users simply downloaded something else. Metrics computed with these labels are lower bounds, useful to
compare systems on the same judgments (see `clipsearch.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from clipsearch.errors import DataFormatError
from clipsearch.settings import EvaluateSettings

MAX_GRADE = 3
CONVERSION_COLUMNS = ("converted_at", "keyword", "photo_id", "anonymous_user_id")
KEYWORD_COLUMNS = ("photo_id", "keyword", "suggested_by_user")


@dataclass(frozen=True)
class JudgedQuery:
    """A query and its known-relevant photos: photo_id -> grade (1..MAX_GRADE)."""

    query: str
    relevant: dict[str, int]


@dataclass(frozen=True)
class JudgmentSet:
    """The judged queries plus the facts needed to report how they were made."""

    queries: list[JudgedQuery]
    cutoff: pd.Timestamp | None  # first converted_at in the test set
    n_conversions: int  # usable conversion rows (keyword, photo and time present)
    n_test_conversions: int
    n_candidate_queries: int  # queries with >= min_positives positives, before the max_queries cap
    n_keyword_judgments: int  # (query, photo) pairs added from user-confirmed keywords
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for reports and MLflow params)."""
        n_pos = [len(q.relevant) for q in self.queries]
        return {
            "n_queries": len(self.queries),
            "n_candidate_queries": self.n_candidate_queries,
            "n_conversions": self.n_conversions,
            "n_test_conversions": self.n_test_conversions,
            "cutoff": None if self.cutoff is None else self.cutoff.isoformat(),
            "n_judgments": sum(n_pos),
            "n_keyword_judgments": self.n_keyword_judgments,
            "mean_positives": (sum(n_pos) / len(n_pos)) if n_pos else 0.0,
            **{f"settings.{k}": v for k, v in self.settings.items()},
        }


def normalise_query(text: str) -> str:
    """Lower-case, strip, and collapse runs of whitespace: "  Red  Bicycle " -> "red bicycle"."""
    return " ".join(str(text).lower().split())


def _require(frame: pd.DataFrame, columns: Iterable[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFormatError(
            f"the {table} table lacks columns {missing} (has {list(frame.columns)}); "
            "re-run `dvc repro download` to rebuild data/lite from the Unsplash Lite zip"
        )


def temporal_holdout(conversions: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """The newest `fraction` of conversions (all rows at or after the cut-off time) and the cut-off."""
    if conversions.empty:
        return conversions, None
    times = pd.to_datetime(conversions["converted_at"], utc=True).sort_values(kind="stable")
    n_test = max(1, math.ceil(fraction * len(times) - 1e-9))  # 1e-9: 0.3 * 10 must not round up to 4
    cutoff = times.iloc[len(times) - n_test]
    return conversions.loc[pd.to_datetime(conversions["converted_at"], utc=True) >= cutoff], cutoff


def _conversion_grades(test: pd.DataFrame, indexed: set[str], min_users: int) -> dict[str, dict[str, int]]:
    frame = test.assign(
        query=test["keyword"].map(normalise_query),
        photo_id=test["photo_id"].astype(str),
    )
    frame = frame.loc[(frame["query"] != "") & frame["photo_id"].isin(indexed)]
    if frame.empty:
        return {}
    # A conversion without a user id is one user of its own: give it a unique placeholder.
    users = frame["anonymous_user_id"].astype("string")
    placeholder = pd.Series([f"\x00row{i}" for i in range(len(frame))], index=frame.index, dtype="string")
    frame = frame.assign(user=users.fillna(placeholder))
    counts = frame.groupby(["query", "photo_id"], sort=True)["user"].nunique().reset_index(name="n_users")
    counts = counts.loc[counts["n_users"] >= min_users]
    grades: dict[str, dict[str, int]] = {}
    for query, photo_id, n_users in zip(counts["query"], counts["photo_id"], counts["n_users"], strict=True):
        grades.setdefault(str(query), {})[str(photo_id)] = min(int(n_users), MAX_GRADE)
    return grades


def _keyword_positives(keywords: pd.DataFrame, indexed: set[str], queries: Iterable[str]) -> dict[str, set[str]]:
    """Photos whose user-confirmed keywords equal one of `queries` (after normalisation)."""
    confirmed_mask = keywords["suggested_by_user"].astype("boolean").fillna(False).astype(bool)
    confirmed = keywords.loc[confirmed_mask, ["keyword", "photo_id"]].dropna()
    if confirmed.empty:
        return {}
    confirmed = confirmed.assign(
        query=confirmed["keyword"].map(normalise_query), photo_id=confirmed["photo_id"].astype(str)
    )
    confirmed = confirmed.loc[confirmed["query"].isin(set(queries)) & confirmed["photo_id"].isin(indexed)]
    return {str(q): set(group.tolist()) for q, group in confirmed.groupby("query", sort=True)["photo_id"]}


def build_judgments(
    conversions: pd.DataFrame,
    keywords: pd.DataFrame,
    indexed_photo_ids: Iterable[str],
    settings: EvaluateSettings,
) -> JudgmentSet:
    """Judged test queries from the newest conversions (+ confirmed keywords), for photos in the index.

    Order is deterministic: most positives first, then alphabetical; at most `settings.max_queries`.
    """
    _require(conversions, CONVERSION_COLUMNS, "conversions")
    if settings.use_keywords:
        _require(keywords, KEYWORD_COLUMNS, "keywords")
    indexed = {str(i) for i in indexed_photo_ids}

    usable = conversions.dropna(subset=["converted_at", "keyword", "photo_id"])
    test, cutoff = temporal_holdout(usable, settings.holdout_fraction)
    relevant = _conversion_grades(test, indexed, settings.min_users)

    n_keyword = 0
    if settings.use_keywords and relevant:
        for query, photos in _keyword_positives(keywords, indexed, relevant).items():
            for photo_id in photos:
                if photo_id not in relevant[query]:
                    n_keyword += 1
                relevant[query][photo_id] = max(relevant[query].get(photo_id, 0), 1)

    judged = [JudgedQuery(q, dict(sorted(r.items()))) for q, r in relevant.items() if len(r) >= settings.min_positives]
    judged.sort(key=lambda j: (-len(j.relevant), j.query))
    return JudgmentSet(
        queries=judged[: settings.max_queries],
        cutoff=cutoff,
        n_conversions=len(usable),
        n_test_conversions=len(test),
        n_candidate_queries=len(judged),
        n_keyword_judgments=n_keyword,
        settings=_settings_summary(settings),
    )


def _settings_summary(settings: EvaluateSettings) -> dict[str, Any]:
    keys = ("min_users", "holdout_fraction", "use_keywords", "max_queries", "min_positives")
    return {k: getattr(settings, k) for k in keys}
