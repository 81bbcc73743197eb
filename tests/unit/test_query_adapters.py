"""GET parameters, JSON bodies and multipart forms become one `Query`; every refusal has a status and a reason."""

from __future__ import annotations

import base64
import io
import json

import pandas as pd
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch.query import Query
from clipsearch.settings import Settings
from services.search.query_adapters import AdapterError, document_search_body, from_get, from_request
from training.evaluate_qbe import example_judgments

SETTINGS = Settings()


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


def summary(query: Query) -> list[tuple[str, float, object]]:
    out: list[tuple[str, float, object]] = []
    for t in query.terms:
        value = t.text or t.photo_id or t.image_url or (len(t.image) if t.image else None)
        out.append((t.kind, t.weight, value))
    return out


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        try:
            query = await from_request(request, SETTINGS)
        except AdapterError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return JSONResponse({"terms": summary(query), "k": query.k, "candidates": query.candidates})

    document_search_body(app)
    return TestClient(app)


def test_get_q_like_not() -> None:
    query = from_get(SETTINGS, q=" snow ", like=["abc"], not_=["people", "cars"], k=4, candidates=10, rerank="off")
    assert summary(query) == [("text", 1, "snow"), ("photo_id", 1, "abc"), ("text", -1, "people"), ("text", -1, "cars")]
    assert query.rerank == "off"
    assert query.text == "snow"
    assert query.avoid == ["people", "cars"]


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"q": "  "}, 422, "q: the query is empty"),
        ({"q": None}, 422, "q: give something to search for"),
        ({"q": "x" * 501}, 422, "q: the query is 501 characters; the limit is 500"),
        ({"q": "snow", "k": 0}, 422, "k: must be between 1 and"),
        ({"q": None, "not_": ["people"]}, 422, "positive weight"),
        ({"q": "snow", "like": ["../etc"]}, 422, "not a valid Unsplash photo id"),
        ({"q": "snow", "like": [f"p{i}" for i in range(8)]}, 422, "at most 8"),
    ],
)
def test_get_refusals(kwargs: dict, status: int, fragment: str) -> None:
    args = {"q": None, "like": [], "not_": [], "k": 4, "candidates": 10, "rerank": "auto", **kwargs}
    with pytest.raises(AdapterError) as info:
        from_get(SETTINGS, **args)
    assert info.value.status == status
    assert fragment in info.value.detail


def test_json_shorthand_and_terms(client: TestClient) -> None:
    data = png()
    body = {
        "q": "snow",
        "like": ["abc"],
        "not": ["people"],
        "image_url": ["https://img.example/a.jpg"],
        "images": [base64.b64encode(data).decode()],
        "terms": [{"text": "sports car", "weight": -2}, {"image": base64.b64encode(data).decode(), "weight": 3}],
        "k": 6,
    }
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["terms"] == [
        ["text", 1, "snow"],
        ["photo_id", 1, "abc"],
        ["image_url", 1, "https://img.example/a.jpg"],
        ["text", -1, "people"],
        ["text", -2, "sports car"],
        ["image", 3, len(data)],
        ["image", 1, len(data)],
    ]
    assert r.json()["k"] == 6
    assert r.json()["candidates"] == SETTINGS.search.candidates


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({}, 422, "give something to search for"),
        ({"images": ["%%%"]}, 422, "images.0: not valid base64"),
        ({"terms": [{"text": "a", "weight": 0}]}, 422, "weight: 0"),
        ({"terms": [{"text": "a", "weight": 11}]}, 422, "less than or equal to 10"),
        ({"terms": [{"image_url": "ftp://x/y.jpg"}]}, 422, "http(s)"),
        ({"q": "a", "bogus": 1}, 422, "bogus"),
        ([1, 2], 422, "expected a JSON object"),
    ],
)
def test_json_refusals(client: TestClient, body: object, status: int, fragment: str) -> None:
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]


def test_broken_json_and_wrong_content_type(client: TestClient) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["detail"]
    r = client.post("/search", content=b"q=snow", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = client.post("/search", content=b"x", headers={"content-type": "application/json", "content-length": str(10**9)})
    assert r.status_code == 413


def test_multipart_files_fields_and_file_references(client: TestClient) -> None:
    data = png()
    r = client.post(
        "/search",
        files=[("image", ("a.png", data, "image/png")), ("photo", ("b.png", data + b"\0", "image/png"))],
        data={
            "q": "snow",
            "not": ["people", "cars"],
            "k": "3",
            "query": json.dumps({"terms": [{"file": "photo", "weight": 2}], "like": ["abc"]}),
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["terms"] == [
        ["text", 1, "snow"],
        ["photo_id", 1, "abc"],
        ["text", -1, "people"],
        ["text", -1, "cars"],
        ["image", 2, len(data) + 1],
        ["image", 1, len(data)],
    ]
    assert r.json()["k"] == 3


def test_multipart_refusals(client: TestClient) -> None:
    r = client.post("/search", files={"image": ("a.png", png(), "image/png")}, data={"colour": "red"})
    assert r.status_code == 422
    assert "unknown field(s) colour" in r.json()["detail"]
    r = client.post(
        "/search",
        files={"image": ("a.png", png(), "image/png")},
        data={"query": json.dumps({"terms": [{"file": "x"}]})},
    )
    assert r.status_code == 422
    assert "no file part named 'x'" in r.json()["detail"]
    big = b"\0" * (SETTINGS.inputs.max_image_bytes + 1)
    r = client.post("/search", files={"image": ("a.png", big, "image/png")})
    assert r.status_code == 413
    assert "limit is" in r.json()["detail"]
    r = client.post("/search", files=[("image", (f"{i}.png", png(), "image/png")) for i in range(9)])
    assert r.status_code in (413, 422), r.text


def test_openapi_has_both_body_forms(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/SearchRequest"}
    assert "weighted" in content["application/json"]["examples"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["items"]["format"] == "binary"
    assert {"SearchRequest", "Term"} <= set(spec["components"]["schemas"])


def test_query_by_example_judgments_share_labels() -> None:
    keywords = pd.DataFrame(
        {
            "photo_id": ["a", "b", "c", "d", "a"],
            "keyword": ["Snow", "snow", "desert", "desert", "dog"],
            "suggested_by_user": [True, True, True, False, True],
        }
    )
    conversions = pd.DataFrame({"photo_id": ["c", "e"], "keyword": ["dune", "dune"]})
    judged = {j.query: j.relevant for j in example_judgments(conversions, keywords, ["a", "b", "c", "d", "e"])}
    assert judged == {"a": {"b": 1}, "b": {"a": 1}, "c": {"e": 1}, "e": {"c": 1}}  # d's keyword is unconfirmed


def test_fewer_candidates_than_k_reranks_from_k() -> None:
    """Each documented bound alone is what a client can read (OpenAPI): candidates < k is not refused."""
    query = from_get(SETTINGS, q="snow", like=[], not_=[], k=8, candidates=4, rerank="auto")
    assert (query.k, query.candidates) == (8, 8)
