"""Term composition through `SearchEngine`: the normalised weighted sum, photo ids from the index, images by CLIP,
"more like this" without the photo itself, the echo, and the refusals."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from clipsearch.compose import query_kind, term_key, without_excluded
from clipsearch.engine import load_engine
from clipsearch.image_input import ImageInputError, ImageLimits
from clipsearch.query import Query, QueryError, Term
from clipsearch.rerank.base import RerankContext
from clipsearch.types import Candidate, RankedResult, RerankOutcome
from tests.unit.test_engine import WORDS, _artifact


@pytest.fixture
def engine(tmp_path, tiny_encoder):
    return load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder)


def png(color=(200, 30, 30), size=(48, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_query_vector_is_the_normalised_weighted_sum(engine) -> None:
    a, b = engine.encode_queries(["red car", "white snow"])
    query = Query(terms=[Term(text="red car", weight=2), Term(text="white snow", weight=-0.5)])
    qv = engine.query_vector(query)
    expected = unit(2 * a.vector - 0.5 * b.vector)
    np.testing.assert_allclose(qv.vector, expected, atol=1e-5)
    assert np.linalg.norm(qv.vector) == pytest.approx(1.0, abs=1e-5)
    assert [t.share for t in qv.terms] == pytest.approx([0.8, -0.2])
    assert [t.kind for t in qv.terms] == ["text", "text"]
    assert qv.exclude == ()
    assert set(qv.timings_ms) == {"encode"}


def test_a_single_text_term_is_exactly_the_text_query(engine) -> None:
    plain = engine.encode_query("night city").vector
    composed = engine.query_vector(Query.from_text("night city")).vector
    np.testing.assert_allclose(composed, plain, atol=1e-6)


def test_photo_id_uses_the_stored_vector_without_encoding(engine, monkeypatch) -> None:
    def no_encoder(*args, **kwargs):
        raise AssertionError("a photo id must not be re-encoded")

    monkeypatch.setattr(engine.encoder, "encode_text_with_flags", no_encoder)
    monkeypatch.setattr(engine.encoder, "encode_query_images", no_encoder)
    qv = engine.query_vector(Query(terms=[Term(photo_id="photo2")]))
    np.testing.assert_allclose(qv.vector, unit(engine.artifact.vector_of("photo2")), atol=1e-6)
    assert qv.exclude == ("photo2",)
    assert qv.timings_ms == {}


def test_more_like_this_excludes_the_photo_itself(engine) -> None:
    result = engine.search(Query(terms=[Term(photo_id="photo2")], k=3, candidates=5, rerank="off"))
    ids = [r.candidate.photo_id for r in result.results]
    assert "photo2" not in ids
    assert len(ids) == 3
    assert [r.candidate.rank for r in result.results] == [1, 2, 3]
    assert result.understood[0].photo_id == "photo2"


def test_unknown_photo_id_is_a_query_error(engine) -> None:
    with pytest.raises(QueryError, match=r"terms\[1\].photo_id: photo nope is not in the served index"):
        engine.query_vector(Query(terms=[Term(text="snow"), Term(photo_id="nope")]))


def test_cancelling_weights_are_refused(engine) -> None:
    with pytest.raises(QueryError, match="cancel out"):
        engine.query_vector(Query(terms=[Term(text="snow", weight=1), Term(text="snow", weight=-1)]))


def test_negative_term_pushes_results_away(engine) -> None:
    plain = engine.search(Query(terms=[Term(text="red car")], k=6, candidates=6, rerank="off"))
    pushed = engine.search(
        Query(terms=[Term(text="red car"), Term(photo_id="photo4", weight=-3)], k=6, candidates=6, rerank="off")
    )
    before = [r.candidate.photo_id for r in plain.results]
    after = [r.candidate.photo_id for r in pushed.results]
    assert "photo4" not in after  # a photo-id term is never in its own answer
    assert after.index("photo0") <= before.index("photo0")


def test_image_terms_are_encoded_by_clip_and_echoed(engine) -> None:
    data = png()
    query = Query(terms=[Term(image=data), Term(text="people", weight=-1)])
    qv = engine.query_vector(query)
    image_vector = engine.encoder.encode_images([Image.open(io.BytesIO(data)).convert("RGB")])[0]  # torch
    text_vector = engine.encode_query("people").vector
    np.testing.assert_allclose(qv.vector, unit(unit(image_vector) - text_vector), atol=1e-4)  # ONNX vs torch
    echo = qv.terms[0]
    assert echo.kind == "image"
    assert echo.image == f"PNG 48x40, {len(data)} bytes"
    assert {"image_input", "image_encode", "encode"} <= set(qv.timings_ms)
    assert len(qv.images) == 1  # the positive image is what the re-ranker sees


def test_image_refusals_name_the_term(engine) -> None:
    engine.image_limits = ImageLimits(max_bytes=2048)
    with pytest.raises(ImageInputError) as info:
        engine.query_vector(Query(terms=[Term(text="snow"), Term(image=b"not an image at all")]))
    assert str(info.value).startswith("terms[1].image:")
    assert info.value.status == 422
    with pytest.raises(ImageInputError) as info:
        engine.query_vector(Query(terms=[Term(image=png(size=(400, 400)) + b"\0" * 4096)]))
    assert info.value.status == 413


def test_base64_images_arrive_as_bytes() -> None:
    data = png()
    term = Term.model_validate({"image": base64.b64encode(data).decode()})
    assert term.image == data
    assert term.kind == "image"
    assert term_key(term).startswith("\x00image:")
    assert term_key(Term(text="x")) == "x"


def test_query_kinds() -> None:
    assert query_kind(Query.from_text("snow")) == "text"
    assert query_kind(Query(terms=[Term(text="a"), Term(text="b")])) == "text"
    assert query_kind(Query(terms=[Term(image=png())])) == "image"
    assert query_kind(Query(terms=[Term(image_url="https://img.example/a.jpg")])) == "image"
    assert query_kind(Query(terms=[Term(photo_id="abc")])) == "photo_id"
    assert query_kind(Query(terms=[Term(text="a"), Term(text="b", weight=-1)])) == "composed"
    assert query_kind(Query(terms=[Term(photo_id="abc"), Term(text="b")])) == "composed"


def test_without_excluded_renumbers() -> None:
    pool = [Candidate(photo_id=f"p{i}", score=1 - i / 10, rank=i + 1, image_url="u") for i in range(5)]
    kept = without_excluded(pool, ("p1",), 3)
    assert [(c.photo_id, c.rank) for c in kept] == [("p0", 1), ("p2", 2), ("p3", 3)]


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, RerankContext | None]] = []

    def rerank(self, query, candidates, k, *, context=None) -> RerankOutcome:
        self.calls.append((query, context))
        results = [RankedResult(candidate=c, rank=i + 1) for i, c in enumerate(list(candidates)[:k])]
        return RerankOutcome(results=results, applied=True)


def test_reranker_gets_query_images_examples_and_things_to_avoid(tmp_path, tiny_encoder) -> None:
    reranker = Recording()
    engine = load_engine(_artifact(tmp_path, tiny_encoder), tiny_encoder, reranker=reranker)
    engine.search(
        Query(
            terms=[Term(image=png()), Term(photo_id="photo1"), Term(text="people", weight=-1)],
            k=2,
            candidates=4,
        )
    )
    text, context = reranker.calls[-1]
    assert text == ""  # no positive text: the images are the request
    assert context is not None
    assert context.avoid == ("people",)
    assert len(context.images) == 1
    assert Image.open(io.BytesIO(context.images[0])).format == "JPEG"
    assert [c.photo_id for c in context.examples] == ["photo1"]
    engine.search(Query.from_text("night city", k=2, candidates=4))
    assert reranker.calls[-1] == ("night city", None)  # plain text: the re-ranker's old call


def test_words_are_found_by_composed_text(engine) -> None:
    result = engine.search(Query(terms=[Term(text=WORDS[3], weight=3)], k=1, candidates=3, rerank="off"))
    assert result.results[0].candidate.photo_id == "photo3"


def test_photo_id_queries_skip_the_batcher(engine) -> None:
    from services.search.batching import direct_prepare

    query = Query(terms=[Term(photo_id="photo2"), Term(photo_id="photo5", weight=0.5)], k=3, candidates=3)
    got = direct_prepare(engine, query)
    assert [c.rank for c in got.prepared.page] == [1, 2, 3]
    assert not {"photo2", "photo5"} & {c.photo_id for c in got.prepared.page}
    assert got.encoded.exclude == ("photo2", "photo5")
    assert {"encode", "search"} <= set(got.timings_ms)
