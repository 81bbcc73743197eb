"""The keyword index: BM25 (the maintained `bm25s` library) over text that describes each photo.

What feeds it (`keyword_documents`, one document per artifact row), and what never does:

| field (Unsplash Lite)                               | indexed | why                                          |
|-----------------------------------------------------|---------|----------------------------------------------|
| photos.photo_description                            | yes     | the photographer's own words                 |
| photos.ai_description                               | yes     | Unsplash's machine caption                   |
| photos.photo_location_name / _city / _country       | yes     | where it was taken                           |
| photos.ai_primary_landmark_name                     | yes     | machine-detected landmark                    |
| keywords.keyword, machine-suggested rows only       | yes     | `suggested_by_user` false and an AI service  |
|   (ai_service_1/2_confidence >= min_ai_confidence)  |         | confidence at least the threshold            |
| keywords.keyword where `suggested_by_user` is true  | **no**  | these are judgments in `evaluate` (leakage)  |
| conversions.keyword                                 | **no**  | the judged queries themselves (leakage)      |

The evaluation's judged queries are conversion keywords (what people searched before downloading) and its
positives include keywords users confirmed. Indexing either would let hybrid search "find" a positive because
its label was written into the index. `keyword_documents` never receives the conversions table and drops every
user-confirmed keyword row, and `tests/unit/test_keyword_index.py` shows that removing all judgment rows from
the inputs leaves every document unchanged, and that a word found only in a judgment finds nothing.

Storage: bm25s's own saved files (sparse score matrix, vocabulary, parameters) packed into one
`keywords.npz` of the artifact (checksummed like every file). Queries are tokenised with the same stopwords
and Snowball stemmer the index was built with (recorded in the file).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from clipsearch.errors import ArtifactError

KEYWORD_FORMAT = 1
STOPWORDS = "en"
STEMMER = "english"
DEFAULT_MIN_AI_CONFIDENCE = 50.0
PHOTO_TEXT_COLUMNS = (
    "photo_description",
    "ai_description",
    "photo_location_name",
    "photo_location_city",
    "photo_location_country",
    "ai_primary_landmark_name",
)


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = " ".join(str(value).split())
    return text or None


def keyword_documents(
    photos: pd.DataFrame,
    keywords: pd.DataFrame | None,
    ids: Sequence[str],
    *,
    min_ai_confidence: float = DEFAULT_MIN_AI_CONFIDENCE,
) -> list[str]:
    """One text per photo in `ids` order: its descriptive fields and machine keywords (see module docstring).

    Never pass judgments here: `keywords` rows with `suggested_by_user` true are dropped, and the conversions
    table is not a parameter on purpose.
    """
    table = photos.assign(photo_id=photos["photo_id"].astype(str)).drop_duplicates("photo_id").set_index("photo_id")
    texts: dict[str, list[str]] = {pid: [] for pid in ids}
    rows = table.reindex(list(ids))
    for column in PHOTO_TEXT_COLUMNS:
        if column not in rows.columns:
            continue
        for pid, value in zip(ids, rows[column].tolist(), strict=True):
            text = _text(value)
            if text:
                texts[pid].append(text)
    if keywords is not None and len(keywords):
        machine = machine_keywords(keywords, min_ai_confidence)
        machine = machine[machine["photo_id"].isin(texts)]
        for pid, keyword in zip(machine["photo_id"].tolist(), machine["keyword"].tolist(), strict=True):
            texts[pid].append(keyword)
    return [" . ".join(texts[pid]) for pid in ids]


def machine_keywords(keywords: pd.DataFrame, min_ai_confidence: float) -> pd.DataFrame:
    """Keyword rows no user confirmed, with an AI confidence >= the threshold (photo_id, keyword)."""
    by_user = keywords["suggested_by_user"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    confidence = np.zeros(len(keywords), dtype=np.float64)
    for column in ("ai_service_1_confidence", "ai_service_2_confidence"):
        if column in keywords.columns:
            values = pd.to_numeric(keywords[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            confidence = np.fmax(confidence, np.nan_to_num(values, nan=0.0))
    keep = ~by_user & (confidence >= min_ai_confidence) & keywords["keyword"].notna().to_numpy(dtype=bool)
    out = keywords.loc[keep, ["photo_id", "keyword"]].copy()
    out["photo_id"] = out["photo_id"].astype(str)
    out["keyword"] = out["keyword"].astype(str).str.strip()
    return out.sort_values(["photo_id", "keyword"], kind="stable")


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer(STEMMER)


class KeywordIndex:
    """BM25 over one document per artifact row; `search` returns (scores, rows) best first, score > 0 only."""

    def __init__(self, retriever: Any, n_docs: int, meta: dict[str, Any]) -> None:
        self._retriever = retriever
        self._stem = _stemmer()
        self.n_docs = n_docs
        self.meta = meta

    @classmethod
    def build(cls, documents: Sequence[str], *, fields: dict[str, Any] | None = None) -> KeywordIndex:
        import bm25s

        stemmer = _stemmer()
        tokens = bm25s.tokenize(list(documents), stopwords=STOPWORDS, stemmer=stemmer, show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        meta = {
            "format": KEYWORD_FORMAT,
            "library": f"bm25s {bm25s.__version__}",
            "stopwords": STOPWORDS,
            "stemmer": STEMMER,
            "n_docs": len(documents),
            "vocabulary": len(tokens.vocab),
            **(fields or {}),
        }
        return cls(retriever, len(documents), meta)

    def __len__(self) -> int:
        return self.n_docs

    def terms(self, text: str) -> list[str]:
        """The index terms `text` turns into (lower-cased, stopwords dropped, stemmed), known ones only."""
        import bm25s

        query = bm25s.tokenize([text], stopwords=STOPWORDS, stemmer=self._stem, return_ids=False, show_progress=False)
        return [t for t in dict.fromkeys(query[0]) if t in self._retriever.vocab_dict]

    def scores(self, text: str) -> npt.NDArray[np.float32]:
        """BM25 score of every document for `text` (0 where no query term occurs)."""
        terms = self.terms(text)
        if not terms:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(terms), dtype=np.float32)

    def search(
        self, text: str, k: int, rows: npt.NDArray[np.int64] | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], int]:
        """The top-k documents (among `rows` when given) with a positive score, equal scores in row order, and
        how many documents (among `rows`) match at all."""
        scores = self.scores(text)
        candidates = rows[scores[rows] > 0] if rows is not None else np.flatnonzero(scores > 0).astype(np.int64)
        top = candidates[np.argpartition(-scores[candidates], k - 1)[:k]] if k < candidates.size else candidates
        top_scores = scores[top]
        order = np.lexsort((top, -top_scores))
        return top_scores[order].astype(np.float32), top[order].astype(np.int64), int(candidates.size)

    # ------------------------------------------------------------------------------- one file in the artifact

    def to_bytes(self) -> bytes:
        """bm25s's saved files plus our metadata, packed in one .npz."""
        with tempfile.TemporaryDirectory() as tmp:
            self._retriever.save(tmp, show_progress=False)
            files = {p.name: np.frombuffer(p.read_bytes(), dtype=np.uint8) for p in sorted(Path(tmp).iterdir())}
        buf = io.BytesIO()
        meta = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8)
        members: dict[str, Any] = {"meta.json": meta, **{f"bm25s/{name}": data for name, data in files.items()}}
        np.savez(buf, **members)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "keywords.npz") -> KeywordIndex:
        import bm25s

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["meta.json"]).decode())
                files = {
                    name.removeprefix("bm25s/"): bytes(npz[name]) for name in npz.files if name.startswith("bm25s/")
                }
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(
                f"{where} is not a readable keyword index ({exc}); rebuild it with `dvc repro build_index`"
            ) from exc
        if meta.get("format") != KEYWORD_FORMAT:
            raise ArtifactError(
                f"{where} has keyword format {meta.get('format')!r}; this version reads {KEYWORD_FORMAT}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            for name, blob in files.items():
                if Path(name).name != name:
                    raise ArtifactError(f"{where} holds an invalid member name {name!r}")
                (Path(tmp) / name).write_bytes(blob)
            retriever = bm25s.BM25.load(tmp, mmap=False, show_progress=False)
        return cls(retriever, int(meta["n_docs"]), meta)
