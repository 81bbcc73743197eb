"""DVC stage `build_index`: merge the embed stage's feature chunks into one verified index artifact.

Reads the embed stage's chunks with `clipsearch.features` (the one definition of their format and of the photo
list they slice), refuses an incomplete or mixed set (a shard still running, a chunk from another model, a dataset
that changed under the features), joins photo metadata from `data/lite/photos.parquet` (display and filter
columns), the colour table from `colors.parquet`, builds the BM25 keyword index from photos + machine keywords of
`keywords.parquet` (never conversions, never user-confirmed keywords: see clipsearch.index.keyword), and writes
the artifact to `index.output_dir` atomically. Usage: `python -m training.build_index` (settings from params.yaml / env).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.errors import ArtifactError, DataFormatError
from clipsearch.features import (
    FeatureChunk,
    chunk_count,
    chunk_name,
    chunk_number,
    chunk_slice,
    list_chunks,
    photos_with_images,
    read_chunk,
)
from clipsearch.identity import ModelIdentity
from clipsearch.index.artifact import Manifest, write_artifact
from clipsearch.index.keyword import PHOTO_TEXT_COLUMNS, KeywordIndex, keyword_documents
from clipsearch.settings import Settings, get_settings

log = logging.getLogger("training.build_index")

EMBED_HINT = "run `dvc repro embed` (or wait for every embed shard to finish) and build again"


@dataclass
class Features:
    """All chunks merged: row i of `vectors` is the photo `ids[i]`."""

    vectors: np.ndarray
    ids: list[str]
    model: ModelIdentity
    skipped: list[str] = field(default_factory=list)
    n_chunks: int = 0


def _chunk_files(features_dir: Path) -> dict[int, Path]:
    """chunk index -> path for every complete chunk file (`.part` and other files are ignored)."""
    if not features_dir.is_dir():
        raise ArtifactError(f"{features_dir} does not exist: no features to index; {EMBED_HINT}")
    return {number: path for path in list_chunks(features_dir) if (number := chunk_number(path)) is not None}


def _read_chunk(path: Path) -> FeatureChunk:
    try:
        return read_chunk(path)
    except DataFormatError as exc:
        raise ArtifactError(f"{exc}; delete it and {EMBED_HINT}") from exc


def load_features(features_dir: Path, expected_ids: list[str], chunk_size: int) -> Features:
    """Read and merge every chunk, checking it is exactly the expected photos in order, from one model."""
    if not expected_ids:
        raise ArtifactError("no photo has an image on disk, so there is nothing to index; run `dvc repro download`")
    files = _chunk_files(features_dir)
    n_chunks = chunk_count(len(expected_ids), chunk_size)
    missing = [j for j in range(n_chunks) if j not in files]
    if missing:
        names = ", ".join(chunk_name(j) for j in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ArtifactError(
            f"{features_dir} lacks {len(missing)} of {n_chunks} chunks ({names}) for {len(expected_ids)} photos "
            f"at chunk_size {chunk_size}; {EMBED_HINT}"
        )
    extra = [j for j in files if j >= n_chunks]
    if extra:
        raise ArtifactError(
            f"{features_dir} holds chunks beyond the {n_chunks} that {len(expected_ids)} photos need "
            f"(e.g. {chunk_name(extra[0])}): the features are from another dataset or chunk_size; "
            f"delete {features_dir} and {EMBED_HINT}"
        )

    parts: list[np.ndarray] = []
    ids: list[str] = []
    skipped: list[str] = []
    model: ModelIdentity | None = None
    for j in tqdm(range(n_chunks), desc="read features", unit="chunk"):
        path = files[j]
        chunk = _read_chunk(path)
        if model is None:
            model = chunk.model
        elif chunk.model != model:
            raise ArtifactError(
                f"{path} was embedded with {chunk.model.describe()} but {chunk_name(0)} with {model.describe()}; "
                f"all chunks must come from one model: delete {features_dir} and {EMBED_HINT}"
            )
        want = chunk_slice(expected_ids, j, chunk_size)
        if not chunk.covers_exactly(want):
            covered = set(chunk.covered)
            missing_ids = sorted(set(want) - covered)[:3]
            unexpected = sorted(covered - set(want))[:3]
            raise ArtifactError(
                f"{path} does not cover photos {j * chunk_size}..{j * chunk_size + len(want) - 1} of the "
                f"photo_id-sorted photos with images (missing e.g. {missing_ids}, unexpected e.g. {unexpected}); "
                f"the images or photos changed since embedding: delete it and {EMBED_HINT}"
            )
        parts.append(chunk.vectors)
        ids.extend(chunk.ids)
        skipped.extend(chunk.skipped_ids)
    assert model is not None  # n_chunks >= 1 because expected_ids is not empty
    return Features(vectors=np.concatenate(parts), ids=ids, model=model, skipped=skipped, n_chunks=n_chunks)


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    text = _text(value)
    try:
        return None if text is None else int(float(text))
    except ValueError:
        return None


def photo_metadata(photos: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """The artifact's metadata columns for `ids`, in that order, from the Unsplash Lite photos table."""
    missing = [c for c in ("photo_id", "photo_image_url") if c not in photos.columns]
    if missing:
        raise DataFormatError(f"photos.parquet lacks columns {missing}; re-run `dvc repro download`")
    table = photos.assign(photo_id=photos["photo_id"].astype(str)).drop_duplicates("photo_id").set_index("photo_id")
    absent = [i for i in ids if i not in table.index]
    if absent:
        raise ArtifactError(
            f"{len(absent)} embedded photos are not in photos.parquet (e.g. {absent[:3]}); {EMBED_HINT}"
        )
    rows = table.loc[ids]

    def column(name: str) -> list[Any]:
        return rows[name].tolist() if name in rows.columns else [None] * len(rows)

    descriptions = [
        _text(d) or _text(a) for d, a in zip(column("photo_description"), column("ai_description"), strict=True)
    ]
    photographers = []
    for first, last, user in zip(
        column("photographer_first_name"),
        column("photographer_last_name"),
        column("photographer_username"),
        strict=True,
    ):
        full = " ".join(p for p in (_text(first), _text(last)) if p)
        photographers.append(full or _text(user))

    def strings(name: str) -> Any:
        return pd.array([_text(v) for v in column(name)], dtype="string")

    def numbers(name: str, dtype: Any) -> Any:
        return pd.to_numeric(pd.Series(column(name), dtype="object"), errors="coerce").astype(dtype).array

    featured = pd.Series(column("photo_featured"), dtype="object").map(
        lambda v: None if _text(v) is None else str(v).strip().lower() in ("t", "true", "1")
    )
    return pd.DataFrame(
        {
            "photo_id": ids,
            "image_url": [_text(u) or "" for u in column("photo_image_url")],
            "description": pd.array(descriptions, dtype="string"),
            "photographer": pd.array(photographers, dtype="string"),
            "width": pd.array([_int(w) for w in column("photo_width")], dtype="Int64"),
            "height": pd.array([_int(h) for h in column("photo_height")], dtype="Int64"),
            "blur_hash": pd.array([_text(b) for b in column("blur_hash")], dtype="string"),
            # filter and sort columns (clipsearch.index.filters.FILTER_COLUMNS)
            "photographer_username": strings("photographer_username"),
            "country": strings("photo_location_country"),
            "city": strings("photo_location_city"),
            "location_name": strings("photo_location_name"),
            "latitude": numbers("photo_location_latitude", "Float64"),
            "longitude": numbers("photo_location_longitude", "Float64"),
            "submitted_at": pd.to_datetime(pd.Series(column("photo_submitted_at")), errors="coerce", utc=True).array,
            "camera_make": strings("exif_camera_make"),
            "camera_model": strings("exif_camera_model"),
            "featured": pd.array(featured.tolist(), dtype="boolean"),
            "downloads": numbers("stats_downloads", "Int64"),
        }
    )


def photo_colors(colors: pd.DataFrame | None) -> pd.DataFrame | None:
    """The colour filter's table (photo_id, keyword, coverage) from Unsplash Lite's colors table."""
    if colors is None or "keyword" not in colors.columns or "ai_coverage" not in colors.columns:
        return None
    out = colors.loc[colors["keyword"].notna(), ["photo_id", "keyword", "ai_coverage"]]
    return out.rename(columns={"ai_coverage": "coverage"})


def _optional_table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        log.warning("%s is missing: the index is built without what it feeds (re-run `dvc repro download`)", path)
        return None
    return pd.read_parquet(path)


def dataset_version(dataset_json: Path) -> str:
    """`<version>@<zip sha256 prefix>` (plus the photo limit when one was set) from download's dataset.json."""
    try:
        record = json.loads(dataset_json.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataFormatError(f"{dataset_json} is missing; run `dvc repro download` first") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{dataset_json} is not valid JSON ({exc}); run `dvc repro download` again") from exc
    version = record.get("resolved_version") or record.get("version") or "unknown"
    sha = str(record.get("zip_sha256") or record.get("sha256") or "")
    label = f"{version}@{sha[:12]}" if sha else str(version)
    return f"{label}/limit={record['limit']}" if record.get("limit") else label


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    n_chunks: int
    n_skipped: int


def build(settings: Settings) -> BuildResult:
    """Run the stage: features + photos -> artifact at `settings.index.output_dir`."""
    data_dir = settings.dataset.data_dir
    photos_path = data_dir / "lite" / "photos.parquet"
    try:
        photos = pd.read_parquet(photos_path)
    except FileNotFoundError as exc:
        raise DataFormatError(f"{photos_path} is missing; run `dvc repro download` first") from exc
    version = dataset_version(data_dir / "lite" / "dataset.json")
    expected = photos_with_images(photos["photo_id"], data_dir / "images")
    features = load_features(settings.embed.features_dir, expected, settings.embed.chunk_size)
    if features.skipped:
        log.warning(
            "%d photos were skipped by the embed stage (undecodable images) and are not indexed, e.g. %s",
            len(features.skipped),
            features.skipped[:3],
        )
    keyword_index = None
    if settings.index.keyword_index:
        keywords = _optional_table(data_dir / "lite" / "keywords.parquet")
        documents = keyword_documents(
            photos, keywords, features.ids, min_ai_confidence=settings.index.keyword_min_ai_confidence
        )
        keyword_index = KeywordIndex.build(
            documents,
            fields={
                "fields": [*PHOTO_TEXT_COLUMNS, "keywords.keyword (machine-suggested only)"],
                "min_ai_confidence": settings.index.keyword_min_ai_confidence,
            },
        )
    manifest = write_artifact(
        settings.index.output_dir,
        features.vectors,
        features.ids,
        photo_metadata(photos, features.ids),
        features.model,
        settings.index,
        version,
        colors=photo_colors(_optional_table(data_dir / "lite" / "colors.parquet")),
        keyword_index=keyword_index,
    )
    return BuildResult(manifest=manifest, n_chunks=features.n_chunks, n_skipped=len(features.skipped))


def main() -> None:
    configure_logging()
    settings = get_settings()
    started = time.perf_counter()
    result = build(settings)
    m = result.manifest
    print(
        f"built index {m.version} at {settings.index.output_dir}: {m.count} vectors x {m.dim} "
        f"({settings.index.dtype}, {m.index.kind} {m.index.params}) from {result.n_chunks} chunks "
        f"({result.n_skipped} photos skipped), model {m.model.describe()}, dataset {m.dataset_version}, "
        f"in {time.perf_counter() - started:.1f}s"
    )


if __name__ == "__main__":
    run_cli(main)
