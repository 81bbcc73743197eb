"""The query language through the real service and CLI on the fixture index: filters, modes, paging, cut-off,
sort and de-duplication, each against a brute-force reference computed here from the served artifact."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from clipsearch.encoder import ClipEncoder
from clipsearch.index.artifact import IndexArtifact, load_artifact
from clipsearch.query import Filters, GeoRadius
from clipsearch.settings import ModelSettings
from tests.e2e.conftest import BIN, LiveService
from tests.unit.test_filters import reference as filter_reference

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(live_service: LiveService) -> tuple[IndexArtifact, ClipEncoder]:
    """The artifact the pipeline built (what the champion serves) and the same encoder, for references."""
    artifact = load_artifact(live_service.repo.root / "data" / "index")
    encoder = ClipEncoder(
        ModelSettings(
            arch="clipsearch-tiny", pretrained=str(live_service.repo.checkpoint), device="cpu", precision="fp32"
        )
    ).load()
    return artifact, encoder


def brute_force(served, text: str, filters: Filters, k: int) -> list[str]:
    artifact, encoder = served
    rows = np.asarray(filter_reference(artifact.metadata, artifact.colors, filters), dtype=np.int64)
    q = encoder.encode_text([text])[0]
    scores = np.asarray(artifact.vectors[rows], dtype=np.float32) @ q
    order = np.lexsort((rows, -scores))
    return [str(artifact.ids[r]) for r in rows[order][:k]]


def get(service: LiveService, **params: Any) -> dict:
    r = httpx.get(service.url("/search"), params={"rerank": "off", **params}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict) -> list[str]:
    return [hit["photo_id"] for hit in body["results"]]


FILTER_CASES = [
    ({"orientation": "landscape"}, Filters(orientation=["landscape"])),
    ({"orientation": ["portrait", "square"]}, Filters(orientation=["portrait", "square"])),
    ({"color": "forestgreen", "min_color_coverage": 0.2}, Filters(colors=["forestgreen"], min_color_coverage=0.2)),
    ({"country": "Iceland"}, Filters(country=["Iceland"])),
    ({"city": "kyoto"}, Filters(city=["Kyoto"])),
    ({"near": "64.1,-21.9,50"}, Filters(near=GeoRadius(lat=64.1, lon=-21.9, radius_km=50))),
    ({"submitted_from": "2020-01-01"}, Filters(submitted_from=date(2020, 1, 1))),
    ({"camera_make": "fujifilm", "camera_model": "X-T3"}, Filters(camera_make=["FUJIFILM"], camera_model=["x-t3"])),
    ({"featured": "true", "min_width": 4000}, Filters(featured=True, min_width=4000)),
    ({"min_height": 4000}, Filters(min_height=4000)),
]


@pytest.mark.parametrize(("params", "filters"), FILTER_CASES, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_each_filter_over_http_equals_brute_force(live_service, served, params: dict, filters: Filters) -> None:
    body = get(live_service, q="a forest", k=8, candidates=8, **params)
    expected = brute_force(served, "a forest", filters, 8)
    assert expected, "the fixture has photos for every case"
    assert ids(body) == expected
    assert body["page"]["matched"] == len(filter_reference(served[0].metadata, served[0].colors, filters))


def test_filters_in_json_and_combined(live_service, served) -> None:
    filters = Filters(orientation=["landscape"], submitted_from=date(2018, 1, 1), featured=False)
    r = httpx.post(
        live_service.url("/search"),
        json={"q": "ocean waves", "k": 6, "candidates": 6, "rerank": "off", "filters": filters.model_dump(mode="json")},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    assert ids(r.json()) == brute_force(served, "ocean waves", filters, 6)
    assert r.json()["understood"]["filters"]["orientation"] == ["landscape"]


def test_pages_by_offset_and_cursor(live_service, served) -> None:
    expected = brute_force(served, "city at night", Filters(), 12)
    by_offset = [i for offset in (0, 4, 8) for i in ids(get(live_service, q="city at night", k=4, offset=offset))]
    assert by_offset == expected
    pages, cursor = [], None
    for _ in range(3):
        body = get(live_service, q="city at night", k=4, **({"cursor": cursor} if cursor else {}))
        pages += ids(body)
        cursor = body["page"]["next_cursor"]
    assert pages == expected
    assert body["page"]["total"] == 300
    assert body["page"]["order"] == "relevance"


def test_min_score_sort_and_dedupe(live_service, served) -> None:
    artifact, encoder = served
    q = encoder.encode_text(["snowy mountains"])[0]
    scores = np.asarray(artifact.vectors, dtype=np.float32) @ q
    threshold = float(np.sort(scores)[-5])
    body = get(live_service, q="snowy mountains", k=10, candidates=10, min_score=threshold)
    assert len(body["results"]) == 5
    assert body["page"]["fewer_than_k"] == "min_score"
    assert body["page"]["total"] == 5
    assert body["page"]["total_exact"]
    wide = float(np.sort(scores)[-30])
    newest = get(live_service, q="snowy mountains", k=10, min_score=wide, sort="newest")
    above = np.flatnonzero(scores >= wide)
    frame = artifact.metadata.iloc[above].assign(score=scores[above])
    frame = frame.sort_values(["submitted_at", "score"], ascending=[False, False], kind="stable")
    assert ids(newest) == frame["photo_id"].head(10).tolist()
    assert newest["page"]["order"] == "newest"
    assert newest["page"]["total"] == 30
    dates = [hit["submitted_at"] for hit in newest["results"]]
    assert dates == sorted(dates, reverse=True)
    deduped = get(live_service, q="snowy mountains", k=10, dedupe="true")
    assert deduped["page"]["dropped_duplicates"] >= 0
    assert len(deduped["results"]) == 10
    assert set(deduped["facets"]) == {"orientation", "color"}


def test_hybrid_and_keyword_modes(live_service) -> None:
    hybrid = get(live_service, q="forest", k=4, mode="hybrid")
    assert hybrid["page"]["relevance"] == "rrf"
    assert len(hybrid["results"]) == 4
    assert hybrid["understood"]["keyword_terms"] == ["forest"]
    keyword = get(live_service, q="Reykjavík", k=4, mode="keyword")
    assert keyword["page"]["relevance"] == "bm25"
    assert keyword["results"], "location names are indexed"


@pytest.mark.parametrize(
    ("method", "payload", "fragment"),
    [
        ("get", {"q": "x", "colour": "blue"}, "colour: unknown parameter"),
        ("get", {"q": "x", "orientation": "diagonal"}, "orientation"),
        ("get", {"q": "x", "near": "64,-21"}, "near: give lat,lon,radius_km"),
        ("get", {"q": "x", "submitted_from": "last year"}, "submitted_from"),
        ("get", {"q": "x", "min_width": "wide"}, "min_width"),
        ("get", {"q": "x", "sort": "oldest"}, "sort"),
        ("get", {"q": "x", "mode": "magic"}, "mode"),
        ("get", {"q": "x", "offset": 2000}, "offset"),
        ("post", {"q": "x", "filters": {"colour": ["blue"]}}, "filters.colour: Extra inputs are not permitted"),
        ("post", {"q": "x", "filters": {"min_width": -1}}, "filters.min_width"),
        ("post", {"q": "x", "filters": {"submitted_from": 0}}, "filters.submitted_from: must be a date"),
        ("post", {"q": "x", "dedupe": 0}, "dedupe"),
        ("post", {"q": "x", "k": True}, "k: must be a number"),
        ("post", {"q": "x", "page": 2}, "page: Extra inputs are not permitted"),
    ],
)
def test_bad_query_language_is_a_422_naming_the_field(live_service, method: str, payload: dict, fragment: str) -> None:
    if method == "get":
        r = httpx.get(live_service.url("/search"), params=payload, timeout=10)
    else:
        r = httpx.post(live_service.url("/search"), json=payload, timeout=10)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_a_cursor_this_service_did_not_issue_is_a_404_and_an_empty_one_is_none(live_service) -> None:
    r = httpx.get(live_service.url("/search"), params={"q": "x", "cursor": "garbage", "rerank": "off"}, timeout=10)
    assert r.status_code == 404, r.text
    assert r.json()["detail"].startswith("cursor:")
    empty = httpx.get(live_service.url("/search"), params={"q": "x", "cursor": "", "rerank": "off"}, timeout=10)
    assert empty.status_code == 200, empty.text


def test_cli_filters_mode_paging_cut_off_and_sort(live_service, served) -> None:
    repo = live_service.repo
    filters = Filters(orientation=["landscape"], colors=["forestgreen"], min_color_coverage=0.2)
    out = repo.run(
        str(BIN / "clipsearch"),
        "search",
        "a forest",
        "--k",
        "3",
        "--offset",
        "3",
        "--filter",
        "orientation=landscape",
        "--filter",
        "color=forestgreen",
        "--filter",
        "min_color_coverage=0.2",
        "--no-rerank",
        "--json",
    )
    body = json.loads(out.stdout)
    assert [r["photo_id"] for r in body["results"]] == brute_force(served, "a forest", filters, 6)[3:]
    sorted_out = repo.run(
        str(BIN / "clipsearch"),
        "search",
        "a forest",
        "--min-score",
        "-1",
        "--sort",
        "most_downloaded",
        "--mode",
        "hybrid",
        "--no-rerank",
        "--json",
    )
    sorted_body = json.loads(sorted_out.stdout)
    downloads = [r["downloads"] for r in sorted_body["results"]]
    assert downloads == sorted(downloads, reverse=True)
    assert sorted_body["page"]["order"] == "most_downloaded"
    bad = repo.run(str(BIN / "clipsearch"), "search", "x", "--filter", "orientaton=landscape", check=False)
    assert bad.returncode == 2
    assert "filters.orientaton: unknown filter" in bad.stderr
    assert pd.notna(body["page"]["total"])
