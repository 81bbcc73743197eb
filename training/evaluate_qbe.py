"""Query-by-example evaluation ("more like this"), scored next to the text metrics by the `evaluate` stage.

A held-out photo is the query (a photo-id term: its stored vector, the photo itself left out of the answer, exactly
as `GET /search?like=<photo_id>` serves it); its judged neighbours are the other indexed photos that share a label
with it, where a photo's labels are its user-confirmed keywords (`keywords.suggested_by_user`) and the search
keywords of its conversions (someone searched that word and downloaded the photo). The grade is the number of
shared labels, capped at 3. As with text queries the labels are positives only: an unlabelled neighbour is
unknown, not wrong, so the numbers are lower bounds and comparable between versions, not absolute.

The example photos are a deterministic sample (by a hash of the photo id, so the same photos for every version
of an index over the same data) of the photos that have at least one labelled neighbour.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import pandas as pd

from clipsearch.engine import SearchEngine
from clipsearch.metrics import evaluate_rankings, latency_summary
from clipsearch.query import Query, Term
from clipsearch.relevance import JudgedQuery, normalise_query

MAX_EXAMPLES = 200
MAX_GRADE = 3
MAX_LABEL_PHOTOS = 500  # a label on more photos than this says little about similarity ("nature"): ignored


def photo_labels(conversions: pd.DataFrame, keywords: pd.DataFrame, indexed: set[str]) -> dict[str, set[str]]:
    """photo_id -> its labels (confirmed keywords and conversion search keywords), for indexed photos."""
    labels: dict[str, set[str]] = defaultdict(set)
    confirmed = keywords.loc[keywords["suggested_by_user"].astype("boolean").fillna(False).astype(bool)]
    for frame in (confirmed[["photo_id", "keyword"]], conversions[["photo_id", "keyword"]]):
        for photo_id, keyword in frame.dropna().itertuples(index=False):
            pid = str(photo_id)
            label = normalise_query(str(keyword))
            if pid in indexed and label:
                labels[pid].add(label)
    return dict(labels)


def example_judgments(
    conversions: pd.DataFrame, keywords: pd.DataFrame, indexed_ids: list[str], limit: int = MAX_EXAMPLES
) -> list[JudgedQuery]:
    """Judged example queries: `query` is a photo id, `relevant` its labelled neighbours with grades."""
    indexed = set(indexed_ids)
    labels = photo_labels(conversions, keywords, indexed)
    photos_of: dict[str, set[str]] = defaultdict(set)
    for pid, photo_labels_ in labels.items():
        for label in photo_labels_:
            photos_of[label].add(pid)
    judged: list[JudgedQuery] = []
    for pid in sorted(labels, key=lambda p: hashlib.sha256(p.encode()).hexdigest()):
        shared: dict[str, int] = defaultdict(int)
        for label in labels[pid]:
            others = photos_of[label]
            if len(others) > MAX_LABEL_PHOTOS:
                continue
            for other in others:
                if other != pid:
                    shared[other] += 1
        if shared:
            judged.append(JudgedQuery(pid, {o: min(n, MAX_GRADE) for o, n in sorted(shared.items())}))
        if len(judged) >= limit:
            break
    return judged


def evaluate_examples(
    engine: SearchEngine,
    conversions: pd.DataFrame,
    keywords: pd.DataFrame,
    depth: int,
    limit: int = MAX_EXAMPLES,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run every example through `SearchEngine.search` (the served "more like this" path, CLIP order);
    return `qbe_`-prefixed metrics (empty when no photo has a labelled neighbour) and the per-query rows."""
    judged = example_judgments(conversions, keywords, [str(i) for i in engine.artifact.ids], limit)
    if not judged:
        return {}, []
    rows: list[dict[str, Any]] = []
    for example in judged:
        query = Query(terms=[Term(photo_id=example.query)], k=depth, candidates=depth, rerank="off")
        result = engine.search(query)
        rows.append(
            {
                "photo_id": example.query,
                "ranked": [r.candidate.photo_id for r in result.results],
                "relevant": example.relevant,
                "timings_ms": result.timings_ms,
            }
        )
    quality = evaluate_rankings([(r["ranked"], r["relevant"]) for r in rows])
    latency = latency_summary([r["timings_ms"]["total"] for r in rows])
    metrics = {f"qbe_{k}": round(float(v), 6) for k, v in quality.items()}
    metrics.update({f"qbe_latency_ms_{k}": round(float(v), 3) for k, v in latency.items() if k in ("p50", "p95")})
    metrics["qbe_n_queries"] = float(len(rows))
    return metrics, rows
