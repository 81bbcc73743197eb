"""`SearchEngine`: the only code that answers a query, with per-stage timings.

The HTTP API, the chat page, the CLI and the `evaluate` stage all call `SearchEngine.search(query)` with a
`clipsearch.query.Query`, so what is measured offline is what is served. The engine is immutable once built:
the service swaps a whole engine when a new index version arrives, so a request never mixes two versions.

The stages (DESIGN.md, "The query, as it grows"):
1. `query_vector(query)`: the terms -> one unit query vector.
2. `select(filters)`: the filters -> an exact allowed-row selection (`clipsearch.index.filters`).
3. candidate lists: the vector index's top rows within the selection (exact for every index kind, see
   `clipsearch.index.search.search_selected`) and/or the keyword index's (BM25); in hybrid mode fused by
   reciprocal rank fusion, score = sum over lists of 1 / (rrf_k + rank). Every candidate gets its exact cosine.
4. the ranked set (at most `search.max_results`): cut-off (`min_score`, on cosine), de-duplication (greedy in
   relevance order: a photo whose image vector has cosine >= `search.dedupe_threshold` with a better one is
   dropped), sort (relevance, newest, most_downloaded), facets.
5. paging (`offset`, or a `cursor` that also carries what a re-ranked first page showed), then the re-ranker on
   the first page only: it picks k of the first `candidates` of the relevance order.

Order is stable for a given index version: equal scores break by row, so the same query gives the same pages.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from clipsearch.compose import (
    QueryVector,
    compose,
    encode_missing,
    gather_images,
    query_kind,
    require_image_support,
)
from clipsearch.errors import ArtifactError
from clipsearch.image_input import ImageLimits, QueryImage
from clipsearch.index.filters import MISSING_TIME, Selection
from clipsearch.query import CursorError, Query, QueryError, query_fingerprint
from clipsearch.rerank.base import NoopReranker, Reranker, clip_order, rerank_context
from clipsearch.settings import SearchSettings
from clipsearch.types import Candidate, PageInfo, RankedResult, RerankOutcome, SearchResult

if TYPE_CHECKING:
    from clipsearch.identity import ModelIdentity
    from clipsearch.index.artifact import IndexArtifact
    from clipsearch.safe_fetch import SafeFetcher

__all__ = ["QueryVector", "SearchEngine", "load_engine"]


PAGE_BLOCK = 100

Rows = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


class QueryEncoder(Protocol):
    """What the engine needs to encode queries: `ClipEncoder` (torch) or the artifact's ONNX encoder."""

    @property
    def identity(self) -> ModelIdentity: ...

    def encode_text_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]: ...

    # Optional: `encode_query_images(images: Sequence[PIL.Image.Image]) -> np.ndarray` (unit vectors of decoded,
    # validated query images). `ClipEncoder` has it (ONNX Runtime vision tower or torch); the artifact's torch-free
    # text encoder does not, and the engine refuses image terms for it (`compose.ImageQueryUnsupported`, 422).


@dataclass
class Ranked:
    """The ranked set of one query before paging: rows in final order and what shaped them."""

    rows: Rows  # final order (after cut-off, de-duplication and sort)
    cosine: Scores  # cosine of each row with the query vector
    relevance_rank: npt.NDArray[np.int64]  # 1-based position of each row in relevance order
    relevance_head: Rows  # the first rows in relevance order after cut-off and de-dup (the re-ranker's pool)
    info: PageInfo
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Prepared:
    """A page ready for the re-ranker (or to be returned as is): what `finish` needs."""

    query: Query
    encoded: QueryVector
    page: list[Candidate]  # this page in its order (sorted or relevance)
    pool: list[Candidate]  # first page only: the re-ranker's candidates (relevance order); else empty
    info: PageInfo
    exclude: list[int]  # rows a cursor already excludes (carried into the next cursor)
    remaining: int  # rows of the ranked set left after this page's position
    timings_ms: dict[str, float]


class SearchEngine:
    """An encoder, an index artifact built by that same encoder, and a re-ranker."""

    def __init__(
        self,
        encoder: QueryEncoder,
        artifact: IndexArtifact,
        reranker: Reranker | None = None,
        settings: SearchSettings | None = None,
    ) -> None:
        if encoder.identity != artifact.manifest.model:
            raise ArtifactError(
                f"The index at {artifact.path} was built with {artifact.manifest.model.describe()}, but the "
                f"encoder is {encoder.identity.describe()}. Vectors from different models are not comparable: "
                "serve this index with the model named in its manifest, or rebuild it with `dvc repro`."
            )
        self.encoder = encoder
        self.artifact = artifact
        self.reranker: Reranker = reranker or NoopReranker()
        self.settings = settings or SearchSettings()
        artifact.brute_force_max = self.settings.filter_brute_force_max
        # Query images (clipsearch.image_input / safe_fetch): set by the caller from `inputs` settings.
        self.image_limits = ImageLimits()
        self.fetcher: SafeFetcher | None = None

    @property
    def index_version(self) -> str:
        return self.artifact.version

    @property
    def can_rerank(self) -> bool:
        return not isinstance(self.reranker, NoopReranker)

    # ------------------------------------------------------------------------------------------- encoding

    def encode_query(self, query: str) -> QueryVector:
        """Encode one query (EOT-truncated text path); report whether it exceeded CLIP's context."""
        return self.encode_queries([query])[0]

    def encode_queries(self, queries: Sequence[str]) -> list[QueryVector]:
        """Encode a batch of queries in one forward pass (the service micro-batches concurrent requests)."""
        vectors, truncated = self.encoder.encode_text_with_flags(list(queries))
        return [QueryVector(vector=v, truncated=t) for v, t in zip(vectors, truncated, strict=True)]

    def query_vector(
        self,
        query: Query,
        encoded: Mapping[str, QueryVector] | None = None,
        images: Mapping[str, QueryImage] | None = None,
    ) -> QueryVector:
        """The query's terms -> one unit vector: the normalised weighted sum of the terms' unit vectors
        (`clipsearch.compose`). Texts and images not in `encoded` (keyed by `compose.term_key`) are encoded here,
        each kind in one pass; images not in `images` are decoded (URLs fetched by `self.fetcher`); photo ids use
        the index's stored vectors. The result carries the echo of each term and the photo ids to exclude."""
        require_image_support(self.encoder, query)
        known = dict(encoded or {})
        decoded = dict(images or {})
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        gathered = gather_images(query, self.image_limits, self.fetcher, skip={**known, **decoded})
        if gathered:
            timings["image_input"] = (time.perf_counter() - t0) * 1000.0
            decoded.update(gathered)
        new, encode_timings = encode_missing(self.encoder, query, known, decoded)
        known.update(new)
        timings.update(encode_timings)
        return compose(query, known, self.artifact, decoded, timings)

    # ----------------------------------------------------------------------------------------- searching

    def search(self, query: Query) -> SearchResult:
        """Answer one query: the ranked set for its mode and filters, one page of it, re-ranked when asked."""
        start = time.perf_counter()
        encoded = self.query_vector(query)
        prepared = self.prepare(query, encoded, timings_ms={"encode": 0.0, **encoded.timings_ms})
        return self.finish(prepared, started_at=start)

    def search_text(self, text: str, k: int = 4, candidates: int = 10, rerank: bool = True) -> SearchResult:
        """The plain query (one text term, default mode): `search(Query.from_text(text, ...))`."""
        return self.search(
            Query.from_text(
                text, k=k, candidates=max(k, candidates), mode=self.settings.mode, rerank="auto" if rerank else "off"
            )
        )

    def select(self, query: Query) -> Selection | None:
        """The rows the query's filters allow (None: all)."""
        return self.artifact.attributes.select(query.filters)

    def retrieve(self, vectors: np.ndarray, candidates: int) -> list[list[Candidate]]:
        """The nearest `candidates` photos for each row of `vectors`, in one batched index search (unfiltered)."""
        scores, rows = self.artifact.index.search(np.asarray(vectors, dtype=np.float32), candidates)
        return [self.artifact.candidates_for(r, s) for r, s in zip(rows, scores, strict=True)]

    def rank_set(self, query: Query, encoded: QueryVector, *, depth: int | None = None) -> Ranked:
        """Stages 2-4: selection, candidate lists (fused), cut-off, de-duplication, sort, facets.

        `depth`: how many relevance-ordered results the page needs (None: search.max_results)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        selection = self.select(query)
        timings["select"] = (time.perf_counter() - t0) * 1000.0
        n_all = len(self.artifact)
        matched = len(selection) if selection is not None else None
        universe = matched if matched is not None else n_all
        full = query.min_score is not None or query.sort != "relevance" or query.dedupe
        max_results = self.settings.max_results
        # The whole pageable set when cut-off, de-dup or sort need it, or when fusing (RRF ranks depend on the
        # lists' depth, so a fixed depth keeps page one the same whichever page is asked). Else just as deep as
        # the page reaches: exact and BM25 rankings are prefix-stable (ties break by row); approximate indexes
        # search in blocks of PAGE_BLOCK, so pages within a block come from one search.
        if full or depth is None or query.mode == "hybrid":
            depth = max_results
        elif self.artifact.index.kind != "exact":
            depth = -(-depth // PAGE_BLOCK) * PAGE_BLOCK
        depth = max(1, min(depth, max_results))
        info = PageInfo(matched=matched, relevance={"vector": "cosine", "hybrid": "rrf", "keyword": "bm25"}[query.mode])
        # "more like this": the photos given as photo-id terms never answer their own query. They are dropped from
        # each candidate list, which is fetched that much deeper, and do not count in the pageable set.
        excluded = self._excluded_rows(encoded)
        if len(excluded):
            in_universe = excluded if selection is None else excluded[np.isin(excluded, selection.rows)]
            universe = max(0, universe - len(in_universe))
        fetch = depth + len(excluded)

        vector_rows: Rows | None = None
        vector_short = False
        vector_scores: Scores | None = None
        keyword_rows: Rows | None = None
        n_keyword = 0
        strategy = "none"
        if query.mode in ("vector", "hybrid"):
            t0 = time.perf_counter()
            vector_scores, vector_rows, strategy = self.artifact.search_rows(encoded.vector, fetch, selection)
            vector_short = len(vector_rows) < fetch
            if len(excluded):
                keep = ~np.isin(vector_rows, excluded)
                vector_scores, vector_rows = vector_scores[keep][:depth], vector_rows[keep][:depth]
            timings["search"] = (time.perf_counter() - t0) * 1000.0
        if query.mode in ("keyword", "hybrid"):
            keyword_index = self.artifact.keyword_index
            if keyword_index is None:
                raise QueryError(
                    f"mode: {query.mode} needs a keyword index, and the served index {self.index_version} has none; "
                    "rebuild it with `dvc repro build_index` (index.keyword_index: true)"
                )
            t0 = time.perf_counter()
            _, keyword_rows, n_keyword = keyword_index.search(
                query.text, fetch, selection.rows if selection is not None else None
            )
            if len(excluded):
                keep = ~np.isin(keyword_rows, excluded)
                n_keyword -= int((~keep).sum())
                keyword_rows = keyword_rows[keep][:depth]
            timings["keyword"] = (time.perf_counter() - t0) * 1000.0

        t0 = time.perf_counter()
        if query.mode == "vector":
            assert vector_rows is not None
            assert vector_scores is not None
            rows = vector_rows
            cosine = self.artifact.cosine(encoded.vector, rows) if len(rows) else np.empty(0, np.float32)
            order = np.lexsort((rows, -cosine))  # exact re-score: a refine step for approximate indexes
            rows, cosine = rows[order], cosine[order]
            complete = vector_short or len(rows) >= universe
            pool_total = universe
        else:
            assert keyword_rows is not None
            rows = (
                keyword_rows
                if query.mode == "keyword"
                else rrf([vector_rows, keyword_rows], self.settings.rrf_k)[:depth]
            )
            cosine = self.artifact.cosine(encoded.vector, rows) if len(rows) else np.empty(0, np.float32)
            pool_total = n_keyword if query.mode == "keyword" else universe
            complete = len(rows) >= pool_total or (query.mode == "keyword" and len(rows) < depth)
        info.understood = self._understood(query, encoded, strategy)

        # cut-off
        if query.min_score is not None:
            keep = cosine >= query.min_score
            info.below_cutoff = int((~keep).sum())
            # vector mode ranks by cosine: a cut inside the ranked set means nothing deeper passes it
            complete = complete or (query.mode == "vector" and info.below_cutoff > 0)
            rows, cosine = rows[keep], cosine[keep]
        relevance_rank = np.arange(1, len(rows) + 1, dtype=np.int64)
        # de-duplication (greedy, relevance order)
        if query.dedupe and len(rows) > 1:
            keep_idx = dedupe(np.asarray(self.artifact.vectors[rows], dtype=np.float32), self.settings.dedupe_threshold)
            info.dropped_duplicates = len(rows) - len(keep_idx)
            rows, cosine, relevance_rank = rows[keep_idx], cosine[keep_idx], relevance_rank[keep_idx]
        head = rows[: max(query.candidates, query.k)]
        # sort
        if query.sort != "relevance":
            attrs = self.artifact.attributes
            key = attrs.submitted_ns[rows] if query.sort == "newest" else attrs.downloads[rows]
            key = np.where(key == MISSING_TIME, np.iinfo(np.int64).min + 1, key) if query.sort == "newest" else key
            order = np.lexsort((relevance_rank, -key.astype(np.float64)))
            rows, cosine, relevance_rank = rows[order], cosine[order], relevance_rank[order]
        timings["rank"] = (time.perf_counter() - t0) * 1000.0

        if not full:
            info.total, info.total_exact = pool_total, True
        else:
            info.total, info.total_exact = len(rows), complete
        info.facets = self.artifact.attributes.facets(rows)
        return Ranked(
            rows=rows, cosine=cosine, relevance_rank=relevance_rank, relevance_head=head, info=info, timings_ms=timings
        )

    def prepare(self, query: Query, encoded: QueryVector, *, timings_ms: dict[str, float] | None = None) -> Prepared:
        """Everything but the re-ranker (CPU only): the ranked set and this query's page of it."""
        offset, exclude = query.offset, list[int]()
        if query.cursor is not None:  # the cursor's position, then `offset` more when both are given
            at, exclude = self._read_cursor(query)
            offset += at
        if offset + query.k > self.settings.max_results:
            raise QueryError(
                f"offset: offset + k = {offset + query.k} goes past the {self.settings.max_results} results a query "
                "can page through (search.max_results); narrow the query with filters or min_score"
            )
        ranked = self.rank_set(query, encoded, depth=max(query.candidates, offset + query.k + len(exclude)))
        info = ranked.info
        info.offset = offset
        position = np.arange(len(ranked.rows))
        if exclude:
            position = position[~np.isin(ranked.rows, np.asarray(exclude, dtype=np.int64))]
        chosen = position[offset : offset + query.k]
        page = self._candidates(ranked, chosen)
        first_page = query.cursor is None and query.offset == 0 and query.sort == "relevance"
        pool: list[Candidate] = []
        if first_page and query.rerank != "off" and self.can_rerank:
            pool = self._candidates(ranked, np.arange(min(len(ranked.rows), max(query.candidates, query.k))))
        info.order = query.sort
        # what is left after this page: the whole set when its size is known, else what the ranked set holds
        left = (info.total - len(exclude)) if info.total_exact and info.total is not None else len(position)
        remaining = max(0, min(left, self.settings.max_results) - (offset + len(chosen)))
        if len(chosen) < query.k:
            info.fewer_than_k = self._why_short(query, info)
        return Prepared(
            query=query,
            encoded=encoded,
            page=page,
            pool=pool,
            info=info,
            exclude=exclude,
            remaining=remaining,
            timings_ms={**(timings_ms or {}), **ranked.timings_ms},
        )

    def finish(self, prepared: Prepared, *, started_at: float) -> SearchResult:
        """Re-rank the first page when asked and possible; assemble the result and the next cursor."""
        query, info = prepared.query, prepared.info
        t0 = time.perf_counter()
        if prepared.pool:
            # a composed query shows Gemini its example images and names the terms to avoid
            context = rerank_context(query, prepared.encoded, self.artifact)
            if context is not None:
                outcome = self.reranker.rerank(query.text or "", prepared.pool, query.k, context=context)
            else:
                outcome = self.reranker.rerank(query.text or "", prepared.pool, query.k)
            if outcome.applied:
                info.order = "reranked"
        else:
            reason = "not_requested" if query.rerank == "off" else "disabled"
            if query.rerank != "off" and self.can_rerank:
                reason = "not_first_page" if query.sort == "relevance" else "sorted"
            outcome = RerankOutcome(results=clip_order(prepared.page, query.k), applied=False, fallback_reason=reason)
        rerank_ms = (time.perf_counter() - t0) * 1000.0
        results = [
            RankedResult(candidate=r.candidate, rank=info.offset + i + 1, reason=r.reason)
            for i, r in enumerate(outcome.results)
        ]
        if outcome.applied:
            shown = [self.artifact.row_of(r.candidate.photo_id) for r in outcome.results]
            more = (info.total or 0) > len(prepared.exclude) + len(shown)
            info.next_cursor = self._cursor(query, 0, [*prepared.exclude, *shown]) if more else None
        elif prepared.remaining > 0:
            info.next_cursor = self._cursor(query, info.offset + len(results), prepared.exclude)
        done = time.perf_counter()
        return SearchResult(
            results=results,
            query=query.text,
            timings_ms={**prepared.timings_ms, "rerank": rerank_ms, "total": (done - started_at) * 1000.0},
            rerank_applied=outcome.applied,
            rerank_fallback_reason=None if outcome.applied else outcome.fallback_reason,
            query_truncated=prepared.encoded.truncated,
            index_version=self.index_version,
            rerank_detail=outcome.detail,
            rerank_usage=outcome.usage,
            rerank_model=outcome.model,
            page=info,
            understood=prepared.encoded.terms,
        )

    # ------------------------------------------------------------------------------------------- helpers

    def _candidates(self, ranked: Ranked, positions: npt.NDArray[np.integer]) -> list[Candidate]:
        out = self.artifact.candidates_for(ranked.rows[positions], ranked.cosine[positions])
        return [
            Candidate(**{**c.__dict__, "rank": int(r)})
            for c, r in zip(out, ranked.relevance_rank[positions], strict=True)
        ]

    def _excluded_rows(self, encoded: QueryVector) -> Rows:
        """The rows of the photos a query leaves out of its results (its photo-id terms)."""
        rows = []
        for photo_id in encoded.exclude:
            try:
                rows.append(self.artifact.row_of(photo_id))
            except KeyError:
                continue
        return np.asarray(sorted(set(rows)), dtype=np.int64)

    @staticmethod
    def _why_short(query: Query, info: PageInfo) -> str:
        if info.below_cutoff and query.min_score is not None:
            return "min_score"
        if info.matched is not None and info.matched < query.offset + query.k:
            return "filters"
        if query.mode == "keyword" and (info.total or 0) < query.offset + query.k:
            return "no_keyword_match"
        return "end_of_results"

    def _understood(self, query: Query, encoded: QueryVector, strategy: str) -> dict[str, object]:
        terms = [t.as_dict() for t in encoded.terms]
        out: dict[str, object] = {
            "kind": query_kind(query),
            "mode": query.mode,
            "terms": terms,
            "excluded": list(encoded.exclude),
            "truncated": [i for i, t in enumerate(terms) if t.get("truncated")],
            "filters": query.filters.model_dump(mode="json", exclude_none=True) if not query.filters.is_empty() else {},
            "sort": query.sort,
            "min_score": query.min_score,
            "dedupe": query.dedupe,
            "vector_search": strategy,
        }
        if query.mode != "vector" and self.artifact.keyword_index is not None:
            out["keyword_terms"] = self.artifact.keyword_index.terms(query.text)
        if query.mode == "hybrid":
            out["fusion"] = f"rrf(k={self.settings.rrf_k})"
        return out

    def _fingerprint(self, query: Query) -> str:
        return query_fingerprint(query, exclude={"offset", "cursor", "k", "candidates", "rerank"})

    def _cursor(self, query: Query, offset: int, exclude: list[int]) -> str:
        payload = {"v": self.index_version, "q": self._fingerprint(query), "o": offset, "x": exclude}
        return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")

    def _read_cursor(self, query: Query) -> tuple[int, list[int]]:
        assert query.cursor is not None
        try:
            raw = base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4))
            payload = json.loads(raw)
            offset, exclude = int(payload["o"]), [int(x) for x in payload["x"]]
            version, fingerprint = str(payload["v"]), str(payload["q"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CursorError("cursor: not a cursor this service issued; start again without it") from exc
        if version != self.index_version:
            raise CursorError(
                f"cursor: it belongs to index version {version}, and {self.index_version} is served now; "
                "start again from the first page"
            )
        if fingerprint != self._fingerprint(query):
            raise CursorError("cursor: it belongs to a different query (terms, filters, mode, cut-off or sort changed)")
        if offset < 0 or any(x < 0 or x >= len(self.artifact) for x in exclude):
            raise CursorError("cursor: out of range; start again without it")
        return offset, exclude


def rrf(lists: Sequence[Rows | None], k: int) -> Rows:
    """Reciprocal rank fusion of ranked row lists: score = sum of 1 / (k + rank), rank 1-based; ties by row."""
    present = [np.asarray(lst, dtype=np.int64) for lst in lists if lst is not None and len(lst)]
    if not present:
        return np.empty(0, np.int64)
    rows = np.concatenate(present)
    contrib = np.concatenate([1.0 / (k + np.arange(1, len(lst) + 1, dtype=np.float64)) for lst in present])
    unique, inverse = np.unique(rows, return_inverse=True)
    scores = np.bincount(inverse, weights=contrib)
    order = np.lexsort((unique, -scores))
    return unique[order]


def dedupe(vectors: npt.NDArray[np.float32], threshold: float) -> npt.NDArray[np.int64]:
    """Greedy de-duplication in the given (relevance) order: keep a row unless its cosine with a kept row is
    >= threshold. Returns the kept positions."""
    n = len(vectors)
    kept = np.empty((n, vectors.shape[1]), dtype=np.float32)
    positions: list[int] = []
    block = 256
    for start in range(0, n, block):
        chunk = vectors[start : start + block]
        against_kept = chunk @ kept[: len(positions)].T if positions else np.zeros((len(chunk), 0), np.float32)
        within = chunk @ chunk.T
        kept_in_chunk: list[int] = []
        for i in range(len(chunk)):
            if against_kept.shape[1] and against_kept[i].max() >= threshold:
                continue
            if kept_in_chunk and within[i, kept_in_chunk].max() >= threshold:
                continue
            kept_in_chunk.append(i)
        for i in kept_in_chunk:
            kept[len(positions)] = chunk[i]
            positions.append(start + i)
    return np.asarray(positions, dtype=np.int64)


def load_engine(
    index_dir: Path,
    encoder: QueryEncoder,
    reranker: Reranker | None = None,
    settings: SearchSettings | None = None,
) -> SearchEngine:
    """Load and verify an artifact for this encoder (checksums, format, model identity), then build an engine."""
    from clipsearch.index.artifact import load_artifact

    artifact = load_artifact(index_dir, expected_model=encoder.identity)
    return SearchEngine(encoder, artifact, reranker, settings)
