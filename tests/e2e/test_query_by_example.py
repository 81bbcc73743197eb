"""Ask with pictures too, against the live fixture service and the CLI: an uploaded image (multipart and base64
JSON), an image URL on the loopback fixture server, a photo id ("more like this") and composed queries with
negative terms; the echo of how the query was understood; re-ranking with the query image and things to avoid;
metrics by query kind; OpenAPI; and every hostile input refused with a 4xx and its reason."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from clipsearch_devtools import gemini_standin as gs
from tests.conftest import ServedFixture
from tests.e2e.conftest import BIN, LiveService

pytestmark = pytest.mark.e2e

ALLOW_LOOPBACK = {"CLIPSEARCH_INPUTS__FETCH_ALLOW_HOSTS": '["127.0.0.1"]'}


def generated_png(color=(30, 120, 200), size=(96, 64)) -> bytes:
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):
        for y in range(size[1]):
            img.putpixel((x, y), (250, 250, 250))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def noisy_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((200, 200), 90).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def search(service: LiveService, **kwargs) -> httpx.Response:
    method = "POST" if ("json" in kwargs or "files" in kwargs or "data" in kwargs) else "GET"
    return httpx.request(method, service.url("/search"), timeout=30, **kwargs)


def some_photo(service: LiveService) -> str:
    body = search(service, params={"q": "a snowy mountain", "rerank": "off"}).json()
    return body["results"][0]["photo_id"]


def test_uploaded_image_multipart_and_base64_json(live_service: LiveService) -> None:
    data = generated_png()
    r = search(live_service, files={"image": ("query.png", data, "image/png")}, data={"rerank": "off"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 4
    assert body["query"] == ""
    assert body["understood"]["kind"] == "image"
    (term,) = body["understood"]["terms"]
    assert term["kind"] == "image"
    assert term["image"] == f"PNG 96x64, {len(data)} bytes"
    assert term["weight"] == 1
    assert {"image_input", "image_encode", "search", "total"} <= set(body["timings_ms"])

    as_json = search(live_service, json={"images": [base64.b64encode(data).decode()], "rerank": "off"})
    assert as_json.status_code == 200, as_json.text
    assert [h["photo_id"] for h in as_json.json()["results"]] == [h["photo_id"] for h in body["results"]]
    via_terms = search(
        live_service, json={"terms": [{"image": base64.b64encode(data).decode(), "weight": 2}], "rerank": "off"}
    )
    assert via_terms.status_code == 200
    assert [h["photo_id"] for h in via_terms.json()["results"]] == [h["photo_id"] for h in body["results"]]


def test_image_url_on_the_loopback_fixture_server(
    live_service: LiveService, unsplash_fixture_server: ServedFixture
) -> None:
    photo = some_photo(live_service)
    url = f"{unsplash_fixture_server.server.base_url}/photos/{photo}.jpg?w=96"
    r = search(live_service, json={"image_url": [url], "rerank": "off"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["understood"]["terms"][0] == {**body["understood"]["terms"][0], "kind": "image_url", "image_url": url}
    assert body["results"][0]["photo_id"] == photo  # the photo itself (by URL it is just an image): found first


def test_more_like_this_by_photo_id_excludes_the_photo(live_service: LiveService) -> None:
    photo = some_photo(live_service)
    r = search(live_service, params={"like": photo, "rerank": "off"})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [h["photo_id"] for h in body["results"]]
    assert len(ids) == 4
    assert photo not in ids
    assert body["understood"]["kind"] == "photo_id"
    assert body["understood"]["excluded"] == [photo]
    assert body["timings_ms"]["encode"] == 0.0
    assert "image_encode" not in body["timings_ms"]


def test_composed_query_with_a_negative_term(live_service: LiveService) -> None:
    photo = some_photo(live_service)
    plain = search(live_service, params={"q": "a snowy mountain", "rerank": "off", "k": 10, "candidates": 10}).json()
    r = search(
        live_service,
        params=[
            ("q", "a snowy mountain"),
            ("not", "forest"),
            ("like", photo),
            ("rerank", "off"),
            ("k", "10"),
            ("candidates", "10"),
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    understood = body["understood"]
    assert understood["kind"] == "composed"
    assert [(t["kind"], t["weight"]) for t in understood["terms"]] == [("text", 1), ("photo_id", 1), ("text", -1)]
    assert [round(t["share"], 3) for t in understood["terms"]] == [0.333, 0.333, -0.333]
    assert photo not in [h["photo_id"] for h in body["results"]]
    assert [h["photo_id"] for h in body["results"]] != [h["photo_id"] for h in plain["results"]]

    weighted = search(
        live_service,
        json={
            "terms": [{"text": "a snowy mountain", "weight": 2}, {"photo_id": photo}, {"text": "forest", "weight": -1}],
            "rerank": "off",
        },
    )
    assert weighted.status_code == 200, weighted.text
    assert [t["share"] for t in weighted.json()["understood"]["terms"]] == [0.5, 0.25, -0.25]

    multipart_ref = search(
        live_service,
        files={"photo": ("q.png", generated_png(), "image/png")},
        data={
            "query": json.dumps({"terms": [{"file": "photo", "weight": 2}, {"text": "forest", "weight": -1}]}),
            "rerank": "off",
        },
    )
    assert multipart_ref.status_code == 200, multipart_ref.text
    assert [t["kind"] for t in multipart_ref.json()["understood"]["terms"]] == ["image", "text"]


def test_rerank_sees_the_query_image_and_what_to_avoid(live_service: LiveService) -> None:
    standin = live_service.standin
    standin.script(gs.rank())
    try:
        r = search(
            live_service,
            files={"image": ("q.png", generated_png(), "image/png")},
            data={"not": "people", "rerank": "on"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["rerank"]["applied"] is True, body["rerank"]
        sent = standin.requests[-1]
        _, _, payload = sent.texts[0].partition("\n")
        assert json.loads(payload)["avoid"] == ["people"]
        assert any(t.startswith("Query example 1") for t in sent.texts)
        assert len(sent.images) == 10 + 1  # the candidates and the query's thumbnail
        assert "avoid" in sent.system_instruction
    finally:
        standin.script()


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"files": {"image": ("x.png", b"this is not an image", "image/png")}}, 422, "not a JPEG, PNG, WebP or GIF"),
        ({"files": {"image": ("x.jpg", noisy_jpeg()[:3000], "image/jpeg")}}, 422, "truncated"),
        ({"files": {"image": ("x.bmp", b"BM" + b"\0" * 200, "image/bmp")}}, 422, "not a JPEG"),
        ({"json": {"images": ["***not base64***"]}}, 422, "base64"),
        ({"json": {"image_url": ["http://169.254.169.254/latest/meta-data/"]}}, 422, "link-local"),
        ({"json": {"image_url": ["http://10.1.2.3/a.jpg"]}}, 422, "private"),
        ({"json": {"image_url": ["http://127.0.0.2:1/a.jpg"]}}, 422, "loopback"),  # only 127.0.0.1 is allowed
        ({"json": {"image_url": ["file:///etc/passwd"]}}, 422, "http(s)"),
        ({"json": {"like": ["notInTheIndex"]}}, 404, "not in the served index"),
        ({"json": {"terms": [{"text": "snow", "weight": -1}]}}, 422, "positive weight"),
        ({"json": {"terms": [{"text": "snow", "weight": 2}, {"text": "snow", "weight": -2}]}}, 422, "cancel out"),
        ({"json": {"terms": [{"text": "snow"}, {"like": "x"}]}}, 422, "terms.1"),
        ({"json": {"like": [f"p{i}" for i in range(9)]}}, 422, "at most 8"),
        ({"json": {"q": "snow", "terms": [{"text": "a", "photo_id": "b"}]}}, 422, "exactly one"),
        ({"json": {"q": "snow", "colour": "red"}}, 422, "colour"),
        ({"params": {"not": "people"}}, 422, "positive weight"),
        ({"params": {"q": "snow", "not": " "}}, 422, "not: empty"),
        ({"content": b"q=snow", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
    ],
)
def test_hostile_inputs_are_4xx_with_reasons(
    live_service: LiveService, kwargs: dict, status: int, fragment: str
) -> None:
    if "content" in kwargs:
        r = httpx.post(live_service.url("/search"), timeout=30, **kwargs)
    else:
        r = search(live_service, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"], r.json()
    assert r.json()["request_id"]


def test_image_url_refusals_from_the_fixture_server(
    live_service: LiveService, unsplash_fixture_server: ServedFixture
) -> None:
    base = unsplash_fixture_server.server.base_url
    for url, fragment in (
        (f"{base}/photos/doesNotExist.jpg", "HTTP 404"),
        (f"{base}/data/lite/latest", "not a JPEG, PNG, WebP or GIF"),  # a redirect, followed, to a zip
    ):
        r = search(live_service, json={"image_url": [url]})
        assert r.status_code == 422, r.text
        assert fragment in r.json()["detail"]


def test_oversized_upload_is_413(live_service: LiveService) -> None:
    big = b"\xff\xd8" + b"\0" * (10 * 1024 * 1024 + 10)
    r = search(live_service, files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413, r.text
    assert "limit is" in r.json()["detail"]


def test_metrics_by_query_kind(live_service: LiveService) -> None:
    photo = some_photo(live_service)
    search(live_service, params={"like": photo, "rerank": "off"})
    search(live_service, files={"image": ("q.png", generated_png(), "image/png")}, data={"rerank": "off"})
    search(live_service, json={"like": ["notInTheIndex"]})
    text = httpx.get(live_service.url("/metrics"), timeout=5).text
    for needle in (
        'clipsearch_queries_total{kind="photo_id",status="200"}',
        'clipsearch_queries_total{kind="image",status="200"}',
        'clipsearch_queries_total{kind="photo_id",status="404"}',
        'clipsearch_queries_total{kind="text",status="200"}',
        'clipsearch_query_latency_seconds_count{kind="image"}',
        'clipsearch_stage_latency_seconds_count{stage="image_encode"}',
    ):
        assert needle in text, needle


def test_openapi_documents_the_query_forms(live_service: LiveService) -> None:
    spec = httpx.get(live_service.url("/openapi.json"), timeout=10).json()
    get_params = {p["name"]: p for p in spec["paths"]["/search"]["get"]["parameters"]}
    assert {"q", "like", "not", "k", "candidates", "rerank"} <= set(get_params)
    assert get_params["like"]["schema"]["anyOf"][0]["type"] == "array"
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"more_like_this", "negative", "weighted", "image", "image_url"} <= set(body["application/json"]["examples"])
    assert "image" in body["multipart/form-data"]["schema"]["properties"]
    request = spec["components"]["schemas"]["SearchRequest"]
    for name in ("q", "like", "not", "image_url", "images", "terms", "k", "candidates", "rerank"):
        assert request["properties"][name].get("description"), name
    term = spec["components"]["schemas"]["Term"]
    for name in ("text", "image", "image_url", "photo_id", "weight"):
        assert term["properties"][name].get("description"), name
    assert "Understood" in spec["components"]["schemas"]


def test_cli_image_like_not_and_weights(
    live_service: LiveService, unsplash_fixture_server: ServedFixture, tmp_path
) -> None:
    repo = live_service.repo
    photo = some_photo(live_service)
    image = tmp_path / "query.png"
    image.write_bytes(generated_png())
    out = repo.run(
        str(BIN / "clipsearch"),
        "search",
        "2:snow",
        "--image",
        str(image),
        "--like",
        photo,
        "--not",
        "forest",
        "--no-rerank",
        "--json",
        env=ALLOW_LOOPBACK,
    ).stdout
    body = json.loads(out)
    assert [(t["kind"], t["weight"]) for t in body["understood"]["terms"]] == [
        ("text", 2),
        ("image", 1),
        ("photo_id", 1),
        ("text", -1),
    ]
    assert len(body["results"]) == 4
    assert photo not in [r["photo_id"] for r in body["results"]]

    url = f"{unsplash_fixture_server.server.base_url}/photos/{photo}.jpg?w=96"
    out = repo.run(
        str(BIN / "clipsearch"), "search", "--image", url, "--no-rerank", "--json", env=ALLOW_LOOPBACK
    ).stdout
    body = json.loads(out)
    assert body["understood"]["terms"][0]["kind"] == "image_url"
    assert body["results"][0]["photo_id"] == photo

    refused = repo.run(
        str(BIN / "clipsearch"), "search", "--image", "http://169.254.169.254/x.jpg", "--no-rerank", check=False
    )
    assert refused.returncode == 2
    assert "link-local" in refused.stderr
    bad = repo.run(str(BIN / "clipsearch"), "search", "--like", "notInTheIndex", "--no-rerank", check=False)
    assert bad.returncode == 2
    assert "not in the served index" in bad.stderr
    text = repo.run(str(BIN / "clipsearch"), "search", "--like", photo, "--no-rerank").stdout
    assert text.splitlines()[0].startswith(f"photo_id:{photo}")


def test_evaluate_scores_query_by_example_next_to_text(live_service: LiveService) -> None:
    from mlflow import MlflowClient

    root = live_service.repo.root
    metrics = json.loads((root / "metrics.json").read_text())
    for name in ("qbe_ndcg_at_4", "qbe_precision_at_4", "qbe_recall_at_10", "qbe_mrr", "qbe_n_queries"):
        assert name in metrics, name
    assert metrics["qbe_n_queries"] > 0
    assert 0 <= metrics["qbe_ndcg_at_4"] <= 1
    assert "ndcg_at_4" in metrics  # the text metrics are still there, beside them
    examples = json.loads((root / "reports" / "evaluation_examples.json").read_text())["examples"]
    assert examples
    assert all(e["photo_id"] not in e["ranked"] for e in examples)
    run_id = json.loads((root / "reports" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=live_service.repo.tracking_uri)
    logged = client.get_run(run_id).data.metrics
    assert logged["qbe_ndcg_at_4"] == pytest.approx(metrics["qbe_ndcg_at_4"])
    assert "ndcg_at_4" in logged
