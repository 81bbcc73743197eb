"""`SearchEngine.search(Query)`: filters, modes, paging, cut-off, sort, de-duplication and facets, each checked
against a brute-force reference computed here from the artifact's own vectors and metadata."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd
import pytest

from clipsearch.engine import SearchEngine, dedupe, load_engine, rrf
from clipsearch.index.artifact import write_artifact
from clipsearch.index.keyword import KeywordIndex
from clipsearch.query import Filters, Query, QueryError, Term
from clipsearch.rerank.base import RerankContext
from clipsearch.settings import IndexSettings, SearchSettings
from clipsearch.types import Candidate, RankedResult, RerankOutcome
from tests.unit.test_filters import reference as filter_reference
from tests.unit.test_filters import synthetic

N = 2000
WORDS = ["forest", "ocean", "city", "desert", "snow", "sunset", "flowers", "mountain"]


def make_artifact(tmp_path, encoder, kind: str = "exact", n: int = N, duplicates: int = 0):
    meta, colours = synthetic(n, seed=3)
    rng = np.random.default_rng(0)
    dim = encoder.identity.dim
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    for j in range(duplicates):  # rows 1..duplicates are near-copies of row 0
        vectors[j + 1] = vectors[0] + 0.01 * rng.normal(size=dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [f"a photo of {WORDS[i % len(WORDS)]} number {i}" for i in range(n)]
    settings = IndexSettings(
        kind=kind, dtype="float32", hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=16, ivf_nlist=16, ivf_nprobe=2
    )
    out = tmp_path / f"index-{kind}"
    write_artifact(
        out,
        vectors,
        meta["photo_id"].tolist(),
        meta,
        encoder.identity,
        settings,
        "test@0",
        colors=colours,
        keyword_index=KeywordIndex.build(docs),
    )
    return out, meta, colours, vectors, docs


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder):
    return make_artifact(tmp_path_factory.mktemp("engine"), tiny_encoder)


@pytest.fixture(scope="module")
def engine(built, tiny_encoder) -> SearchEngine:
    return load_engine(built[0], tiny_encoder, settings=SearchSettings(max_results=500))


def ids(result) -> list[str]:
    return [r.candidate.photo_id for r in result.results]


def brute_force(engine: SearchEngine, text: str, rows: Sequence[int], k: int) -> list[str]:
    q = engine.encode_query(text).vector
    rows_arr = np.asarray(rows, dtype=np.int64)
    scores = engine.artifact.vectors[rows_arr].astype(np.float32) @ q
    order = np.lexsort((rows_arr, -scores))
    return [str(engine.artifact.ids[r]) for r in rows_arr[order][:k]]


FILTERS = [
    Filters(orientation=["portrait"]),
    Filters(colors=["blue", "navy"], min_color_coverage=0.4),
    Filters(country=["Japan"], camera_make=["apple"]),
    Filters(submitted_from=date(2022, 1, 1), featured=True),
    Filters(photographer=["bob"], min_width=3500),
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f.model_dump(exclude_none=True)))
def test_filtered_vector_search_equals_brute_force(engine, built, filters: Filters) -> None:
    _, meta, colours, _, _ = built
    allowed = filter_reference(meta, colours, filters)
    result = engine.search(Query.from_text("forest", filters=filters, k=10, candidates=10, rerank="off"))
    assert ids(result) == brute_force(engine, "forest", allowed, 10)
    assert result.page.matched == len(allowed)
    assert result.page.total == len(allowed)
    assert result.page.total_exact


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_k_come_back_at_a_tenth_of_a_percent_for_every_kind(tmp_path, tiny_encoder, kind: str) -> None:
    """5,000 photos, filters matching about 0.1% of them: k come back (all when fewer match), best first."""
    path, meta, colours, _, _ = make_artifact(tmp_path, tiny_encoder, kind=kind, n=5000)
    engine = load_engine(path, tiny_encoder)
    for filters in (
        Filters(photographer=["ann"], country=["peru"], orientation=["portrait"], featured=True),  # 14 photos
        Filters(photographer=["dee"], city=["vik"], featured=True, camera_make=["canon"]),  # 11 photos
    ):
        allowed = filter_reference(meta, colours, filters)
        assert 5 <= len(allowed) <= 15, len(allowed)  # 0.1% .. 0.3%
        for k in (3, 10):
            result = engine.search(Query.from_text("ocean", filters=filters, k=k, candidates=k, rerank="off"))
            assert len(result.results) == min(k, len(allowed))
            assert ids(result) == brute_force(engine, "ocean", allowed, k)
            assert result.page.understood["vector_search"] == "brute_force"


def test_offset_and_cursor_pages_tile_the_reference(engine, built) -> None:
    _, meta, colours, _, _ = built
    filters = Filters(orientation=["landscape"])
    allowed = filter_reference(meta, colours, filters)
    expected = brute_force(engine, "city", allowed, 12)
    by_offset = []
    for offset in (0, 4, 8):
        page = engine.search(Query.from_text("city", filters=filters, k=4, offset=offset, rerank="off"))
        assert page.page.offset == offset
        assert [r.rank for r in page.results] == [
            offset + 1,
            offset + 2,
            offset + 3,
            offset + 4,
        ]
        by_offset += ids(page)
    assert by_offset == expected
    by_cursor, cursor = [], None
    for _ in range(3):
        page = engine.search(Query.from_text("city", filters=filters, k=4, cursor=cursor, rerank="off"))
        by_cursor += ids(page)
        cursor = page.page.next_cursor
        assert cursor
    assert by_cursor == expected


def test_a_cursor_only_fits_its_own_query_and_index(engine) -> None:
    first = engine.search(Query.from_text("city", k=4, rerank="off"))
    cursor = first.page.next_cursor
    assert cursor
    with pytest.raises(QueryError, match="cursor: it belongs to a different query"):
        engine.search(Query.from_text("ocean", k=4, cursor=cursor))
    with pytest.raises(QueryError, match="cursor: not a cursor"):
        engine.search(Query.from_text("city", k=4, cursor="bm90IGEgY3Vyc29y"))
    with pytest.raises(QueryError, match=r"^offset"):
        engine.search(Query.from_text("city", k=10, offset=495))


def test_min_score_cuts_and_says_so(engine) -> None:
    q = engine.encode_query("snow").vector
    scores = engine.artifact.vectors.astype(np.float32) @ q
    threshold = float(np.sort(scores)[-7])  # exactly 7 photos reach it
    result = engine.search(Query.from_text("snow", k=10, candidates=10, min_score=threshold, rerank="off"))
    assert len(result.results) == 7
    assert all(r.candidate.score >= threshold for r in result.results)
    assert result.page.total == 7
    assert result.page.total_exact
    assert result.page.fewer_than_k == "min_score"
    assert result.page.next_cursor is None


def test_sort_newest_and_most_downloaded_order_the_set_above_the_cut_off(engine, built) -> None:
    _, meta, _, _, _ = built
    q = engine.encode_query("sunset").vector
    scores = engine.artifact.vectors.astype(np.float32) @ q
    threshold = float(np.sort(scores)[-40])
    above = np.flatnonzero(scores >= threshold)
    for sort, column in (("newest", "submitted_at"), ("most_downloaded", "downloads")):
        result = engine.search(Query.from_text("sunset", k=10, min_score=threshold, sort=sort, rerank="off"))
        frame = (
            meta.iloc[above]
            .assign(score=scores[above])
            .sort_values([column, "score"], ascending=[False, False], na_position="last", kind="stable")
        )
        assert ids(result) == frame["photo_id"].head(10).tolist()
        assert result.page.order == sort
        assert result.page.total == 40


def test_dedupe_collapses_near_copies_to_the_best(tmp_path, tiny_encoder) -> None:
    path, *_ = make_artifact(tmp_path, tiny_encoder, n=300, duplicates=3)
    engine = load_engine(path, tiny_encoder)
    plain = Query(terms=[Term(photo_id=str(engine.artifact.ids[0]))], k=6, candidates=6, rerank="off")
    first = engine.search(plain)  # "more like this" leaves the photo itself out: its three near copies lead
    copies = {str(engine.artifact.ids[i]) for i in range(1, 4)}
    assert set(ids(first)[:3]) == copies
    deduped = engine.search(plain.model_copy(update={"dedupe": True}))
    shown = ids(deduped)
    assert sum(s in copies for s in shown) == 1
    assert str(engine.artifact.ids[0]) not in shown
    assert shown[0] == ids(first)[0]
    assert deduped.page.dropped_duplicates == 2
    assert len(shown) == 6


def test_dedupe_is_greedy_in_order() -> None:
    v = np.eye(4, dtype=np.float32)
    v = np.vstack([v[0], v[0], v[1], (v[1] + 0.01 * v[2]) / np.linalg.norm(v[1] + 0.01 * v[2]), v[3]])
    assert dedupe(v, 0.95).tolist() == [0, 2, 4]


def test_rrf_fuses_by_reciprocal_rank() -> None:
    fused = rrf([np.array([1, 2, 3]), np.array([3, 4, 1])], 60)
    # 1: 1/61 + 1/63, 3: 1/63 + 1/61 (tie, row order), 2: 1/62, 4: 1/62 (tie)
    assert fused.tolist() == [1, 3, 2, 4]


def test_keyword_and_hybrid_modes(engine, built) -> None:
    _, _, _, _, docs = built
    keyword = engine.search(Query.from_text("desert number 11", mode="keyword", k=5, rerank="off"))
    assert ids(keyword)[0] == str(engine.artifact.ids[11])  # the only document with both words
    assert keyword.page.relevance == "bm25"
    assert keyword.page.understood["keyword_terms"] == ["desert", "number", "11"]
    assert all(
        r.candidate.photo_id == "p00011" or "desert" in docs[int(r.candidate.photo_id[1:])] for r in keyword.results
    )
    hybrid = engine.search(Query.from_text("desert", mode="hybrid", k=8, candidates=8, rerank="off"))
    vector = engine.artifact.search_rows(engine.encode_query("desert").vector, 500)[1]
    kw = engine.artifact.keyword_index.search("desert", 500)[1]
    expected = rrf([vector, kw], 60)[:8]
    assert ids(hybrid) == [str(engine.artifact.ids[r]) for r in expected]
    assert hybrid.page.relevance == "rrf"
    assert hybrid.page.understood["fusion"] == "rrf(k=60)"
    nothing = engine.search(Query.from_text("zebra", mode="keyword", k=4, rerank="off"))
    assert nothing.results == []
    assert nothing.page.fewer_than_k == "no_keyword_match"


def test_filtered_keyword_search_stays_within_the_filter(engine, built) -> None:
    _, meta, colours, _, _ = built
    filters = Filters(country=["France"])
    allowed = {str(meta["photo_id"].iloc[i]) for i in filter_reference(meta, colours, filters)}
    result = engine.search(Query.from_text("ocean", mode="keyword", filters=filters, k=20, rerank="off"))
    assert ids(result)
    assert set(ids(result)) <= allowed


class Reverse:
    name = "reverse"

    def rerank(
        self,
        query: str,  # noqa: ARG002 - protocol
        candidates: Sequence[Candidate],
        k: int,
        *,
        context: RerankContext | None = None,  # noqa: ARG002
    ) -> RerankOutcome:
        ranked = list(reversed(candidates))[:k]
        return RerankOutcome(
            results=[RankedResult(candidate=c, rank=i + 1) for i, c in enumerate(ranked)], applied=True
        )


def test_rerank_orders_the_first_page_only_and_the_cursor_skips_what_it_showed(built, tiny_encoder) -> None:
    engine = load_engine(built[0], tiny_encoder, reranker=Reverse())
    query = Query.from_text("flowers", k=3, candidates=6)
    first = engine.search(query)
    plain = ids(engine.search(query.model_copy(update={"rerank": "off", "k": 12})))
    assert first.rerank_applied
    assert first.page.order == "reranked"
    assert ids(first) == list(reversed(plain[:6]))[:3]
    second = engine.search(query.model_copy(update={"cursor": first.page.next_cursor}))
    assert not second.rerank_applied
    assert second.rerank_fallback_reason == "not_first_page"
    assert second.page.order == "relevance"
    assert ids(second) == [p for p in plain if p not in ids(first)][:3]
    third = engine.search(query.model_copy(update={"cursor": second.page.next_cursor}))
    assert ids(third) == [p for p in plain if p not in ids(first)][3:6]
    sorted_page = engine.search(query.model_copy(update={"sort": "newest", "min_score": -1.0}))
    assert not sorted_page.rerank_applied
    assert sorted_page.page.order == "newest"


def test_facets_count_the_ranked_set(engine, built) -> None:  # noqa: ARG001
    result = engine.search(Query.from_text("forest", k=4, min_score=-1.0, rerank="off"))
    assert sum(result.page.facets["orientation"].values()) <= result.page.total
    assert result.page.facets["color"]


def test_understood_says_how_the_query_was_read(engine) -> None:
    result = engine.search(
        Query.from_text("forest", mode="hybrid", filters=Filters(orientation=["square"]), rerank="off")
    )
    u = result.page.understood
    assert u["mode"] == "hybrid"
    assert u["filters"] == {"orientation": ["square"], "min_color_coverage": 0.1}
    assert u["terms"] == [{"kind": "text", "weight": 1.0, "share": 1.0, "text": "forest", "truncated": False}]
    assert u["kind"] == "text"
    assert u["excluded"] == []
    assert u["vector_search"] in ("brute_force", "masked_scan")


def test_an_index_without_keywords_refuses_keyword_mode(tmp_path, tiny_encoder) -> None:
    meta, _ = synthetic(20)
    vectors = np.eye(20, tiny_encoder.identity.dim, dtype=np.float32)
    write_artifact(
        tmp_path / "i",
        vectors,
        meta["photo_id"].tolist(),
        meta,
        tiny_encoder.identity,
        IndexSettings(dtype="float32"),
        "t@0",
    )
    engine = load_engine(tmp_path / "i", tiny_encoder)
    with pytest.raises(QueryError, match=r"^mode: hybrid needs a keyword index"):
        engine.search(Query.from_text("x", mode="hybrid"))
    assert len(engine.search(Query.from_text("x", k=3)).results) == 3
    pd.testing.assert_series_equal(engine.artifact.metadata["photo_id"], meta["photo_id"], check_dtype=False)


def test_evaluate_measures_vector_and_hybrid_side_by_side(engine) -> None:
    from clipsearch.relevance import JudgedQuery
    from training.evaluate import compare_modes

    queries = [
        JudgedQuery(query=w, relevant={str(engine.artifact.ids[i]): 1 for i in range(j, 80, 8)})
        for j, w in enumerate(WORDS)
    ]
    metrics, runs = compare_modes(engine, queries, 10, "vector")
    assert set(runs) == {"vector", "hybrid"}
    for key in ("precision_at_4", "recall_at_10", "ndcg_at_4", "mrr"):
        assert metrics[key] == metrics[f"vector_{key}"]
        assert f"hybrid_{key}" in metrics
    # the keyword side knows which document holds each word, the random vectors do not
    assert metrics["hybrid_recall_at_10"] > metrics["vector_recall_at_10"]
    gated_on_hybrid, _ = compare_modes(engine, queries, 10, "hybrid")
    assert gated_on_hybrid["ndcg_at_4"] == gated_on_hybrid["hybrid_ndcg_at_4"]
