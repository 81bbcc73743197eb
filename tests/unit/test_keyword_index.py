"""The keyword index: what feeds it, no label leakage from the evaluation's judgments, and its artifact file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipsearch.errors import ArtifactError
from clipsearch.index.artifact import KEYWORDS, load_artifact, write_artifact
from clipsearch.index.keyword import KeywordIndex, keyword_documents, machine_keywords
from clipsearch.relevance import build_judgments
from clipsearch.settings import EvaluateSettings, IndexSettings
from clipsearch.unsplash import LiteTables, read_lite
from clipsearch_devtools.unsplash_lite import build_fixture


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> LiteTables:
    info = build_fixture(tmp_path_factory.mktemp("lite"), n_photos=120, seed=4)
    return read_lite(info.zip_path)


def test_documents_hold_descriptions_places_and_machine_keywords_only() -> None:
    photos = pd.DataFrame(
        {
            "photo_id": ["a", "b"],
            "photo_description": ["Foggy pines", None],
            "ai_description": ["a forest in fog", "a red car"],
            "photo_location_name": ["Vik, Iceland", None],
            "photo_location_city": ["Vik", None],
            "photo_location_country": ["Iceland", None],
        }
    )
    keywords = pd.DataFrame(
        {
            "photo_id": ["a", "a", "a", "b"],
            "keyword": ["pine", "wallpaper", "confirmedword", "lowconfidence"],
            "ai_service_1_confidence": [90.0, 55.0, 99.0, 20.0],
            "ai_service_2_confidence": [None, None, None, 30.0],
            "suggested_by_user": [False, False, True, False],
        }
    )
    docs = keyword_documents(photos, keywords, ["b", "a"])
    assert docs[0] == "a red car"
    assert docs[1] == "Foggy pines . a forest in fog . Vik, Iceland . Vik . Iceland . pine . wallpaper"
    assert machine_keywords(keywords, 50)["keyword"].tolist() == ["pine", "wallpaper"]


def test_judgment_rows_change_no_document_and_no_ranking(lite: LiteTables) -> None:
    """The judged queries come from conversions and user-confirmed keywords. Remove every such row from the
    inputs: the documents, and so every judged query's keyword ranking, stay exactly the same."""
    ids = lite.photos["photo_id"].astype(str).tolist()
    judgments = build_judgments(lite.conversions, lite.keywords, ids, EvaluateSettings(holdout_fraction=1.0))
    assert judgments.queries
    assert judgments.n_keyword_judgments > 0

    docs = keyword_documents(lite.photos, lite.keywords, ids, min_ai_confidence=0)
    by_user = lite.keywords["suggested_by_user"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    without = keyword_documents(lite.photos, lite.keywords[~by_user], ids, min_ai_confidence=0)
    assert docs == without

    full, blind = KeywordIndex.build(docs), KeywordIndex.build(without)
    for judged in judgments.queries:
        a, b = full.search(judged.query, 50), blind.search(judged.query, 50)
        assert a[1].tolist() == b[1].tolist(), judged.query


def test_a_word_only_a_judgment_holds_finds_nothing(lite: LiteTables) -> None:
    ids = lite.photos["photo_id"].astype(str).tolist()
    confirmed = pd.DataFrame(
        {
            "photo_id": ids[:3],
            "keyword": ["zyzzyva"] * 3,
            "ai_service_1_confidence": [99.0] * 3,  # even with a machine confidence: a person confirmed it
            "ai_service_2_confidence": [np.nan] * 3,
            "suggested_by_user": [True] * 3,
        }
    )
    keywords = pd.concat([lite.keywords, confirmed], ignore_index=True)
    index = KeywordIndex.build(keyword_documents(lite.photos, keywords, ids))
    _, rows, matched = index.search("zyzzyva", 10)
    assert rows.size == 0
    assert matched == 0
    assert index.terms("zyzzyva") == []


def test_the_keyword_file_is_checksummed_in_the_artifact(tmp_path, tiny_encoder) -> None:
    n = 12
    ids = [f"p{i}" for i in range(n)]
    meta = pd.DataFrame(
        {
            "photo_id": ids,
            "image_url": ["u"] * n,
            "description": None,
            "photographer": None,
            "width": 10,
            "height": 10,
            "blur_hash": None,
        }
    )
    vectors = np.eye(n, tiny_encoder.identity.dim, dtype=np.float32)
    docs = [f"doc {'ocean' if i % 2 else 'forest'} {i}" for i in range(n)]
    manifest = write_artifact(
        tmp_path / "a",
        vectors,
        ids,
        meta,
        tiny_encoder.identity,
        IndexSettings(dtype="float32"),
        "t@0",
        keyword_index=KeywordIndex.build(docs),
    )
    assert KEYWORDS in manifest.files
    art = load_artifact(tmp_path / "a")
    assert art.keyword_index is not None
    assert art.keyword_index.search("ocean", 3)[1].tolist() == [1, 3, 5]
    path = tmp_path / "a" / KEYWORDS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"keywords\.npz is corrupt"):
        load_artifact(tmp_path / "a")
    with pytest.raises(ArtifactError, match="documents for"):
        write_artifact(
            tmp_path / "b",
            vectors,
            ids,
            meta,
            tiny_encoder.identity,
            IndexSettings(dtype="float32"),
            "t@0",
            keyword_index=KeywordIndex.build(docs[:5]),
        )
