"""The index artifact: a directory of vectors, ids, metadata and a manifest that vouches for them.

It is the unit the pipeline builds, MLflow registers and the service pulls, so it must be impossible to
serve one that is half-written, corrupted or built by another model:

- `write_artifact` writes through `clipsearch.fileio.atomic_directory`: a temporary sibling directory, every
  file fsynced, then renamed into place (replacing an older artifact only after the new one is complete);
- `load_artifact` reads each file once, checks its sha256 against the manifest, checks the arrays against
  the manifest (count, dim, finite, unit norm, unique ids, metadata aligned with ids) and, when given, that
  the serving encoder's `ModelIdentity` is exactly the one that produced the vectors.

Layout (see docs/ARCHITECTURE.md): vectors.npy, ids.npy, metadata.parquet (display columns, plus the filter
columns of `clipsearch.index.filters.FILTER_COLUMNS` when built with them), optional colors.parquet (photo_id,
colour keyword, coverage: the colour filter), optional keywords.npz (the BM25 keyword index for hybrid search),
optional faiss.index, optional reference_queries.npy (evaluation query embeddings, the drift reference), optional
ONNX query encoders, manifest.json. Every file is listed in the manifest with its sha256.

Why one file of this size: the manifest model, the writer and the verifying reader are the two halves of one
contract (format version, file list, checksums, array checks); kept together, a change to one side is made next
to the other, and the reader cannot drift from what the writer produces.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipsearch.errors import ArtifactError
from clipsearch.fileio import atomic_directory
from clipsearch.identity import ModelIdentity
from clipsearch.index.filters import COLOR_COLUMNS, FILTER_COLUMNS, MISSING_TIME, PhotoAttributes, Selection
from clipsearch.index.keyword import KeywordIndex
from clipsearch.index.search import (
    DEFAULT_BRUTE_FORCE_MAX,
    FaissIndex,
    VectorIndex,
    build_index,
    load_index,
    search_selected,
)
from clipsearch.settings import IndexSettings
from clipsearch.types import Candidate

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
IDS = "ids.npy"
METADATA = "metadata.parquet"
FAISS_INDEX = "faiss.index"
REFERENCE_QUERIES = "reference_queries.npy"
COLORS = "colors.parquet"
KEYWORDS = "keywords.npz"
REQUIRED_FILES = (VECTORS, IDS, METADATA)
METADATA_COLUMNS = ("photo_id", "image_url", "description", "photographer", "width", "height", "blur_hash")

# |norm - 1| allowed per stored dtype: float16 keeps ~3 decimal digits, so a unit vector reads back as 1 ± 1e-3.
NORM_TOLERANCE = {"float16": 5e-3, "float32": 1e-4}
# Inputs to write_artifact may be a little off unit norm (an encoder in fp16); they are re-normalised.
INPUT_NORM_TOLERANCE = 1e-2
REBUILD_HINT = "rebuild it with `dvc repro build_index`"


class IndexSpec(BaseModel):
    """Which search structure the artifact carries and the parameters it was built with."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["exact", "hnsw", "ivf", "hnsw_sq"]
    params: dict[str, int | float | str] = Field(default_factory=dict)


class Manifest(BaseModel):
    """manifest.json: what the artifact contains, which model made it, and the sha256 of every file."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    format_version: int
    model: ModelIdentity
    dim: int = Field(ge=1)
    count: int = Field(ge=0)
    metric: Literal["cosine"] = "cosine"
    index: IndexSpec
    dataset_version: str
    files: dict[str, str]
    created_at: datetime
    # The query encoders the artifact carries (clipsearch.query_encoders.QueryEncoderSpec as JSON): their files
    # are listed in `files` like every other, so they are checksummed and pulled with the rest.
    query_encoders: dict[str, Any] | None = None

    @property
    def query_encoder_files(self) -> list[str]:
        return list((self.query_encoders or {}).get("files", {}).values())

    @property
    def version(self) -> str:
        """A short content hash: equal for two artifacts with the same files, model and index (not the time)."""
        payload = self.model_dump(mode="json", exclude={"created_at"})
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:12]


@dataclass(frozen=True)
class _RowMeta:
    """Metadata columns as plain Python lists, so building candidates is list indexing, not pandas."""

    photo_id: list[str]
    image_url: list[str]
    description: list[str | None]
    photographer: list[str | None]
    width: list[int | None]
    height: list[int | None]
    blur_hash: list[str | None]


@dataclass
class IndexArtifact:
    """A loaded, verified artifact: arrays, metadata and a ready-to-search index."""

    path: Path
    manifest: Manifest
    vectors: np.ndarray
    ids: np.ndarray
    metadata: pd.DataFrame
    index: VectorIndex
    reference_queries: np.ndarray | None = None
    # The verified bytes of the query-encoder files, when `load_artifact(..., query_encoders=True)` read them.
    query_encoder_blobs: dict[str, bytes] = field(default_factory=dict, repr=False)
    colors: pd.DataFrame | None = None
    keyword_index: KeywordIndex | None = None
    brute_force_max: int = DEFAULT_BRUTE_FORCE_MAX
    attributes: PhotoAttributes = field(init=False, repr=False)
    _rows: _RowMeta = field(init=False, repr=False)
    _row_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = _row_meta(self.metadata)
        self._row_of = {photo_id: row for row, photo_id in enumerate(self._rows.photo_id)}
        self.attributes = PhotoAttributes(self.metadata, self.colors)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def model(self) -> ModelIdentity:
        return self.manifest.model

    def __len__(self) -> int:
        return self.manifest.count

    def row_of(self, photo_id: str) -> int:
        """The row of `photo_id` in vectors/ids/metadata; KeyError when the photo is not indexed."""
        try:
            return self._row_of[photo_id]
        except KeyError:
            raise KeyError(f"photo {photo_id!r} is not in index {self.version}") from None

    def vector_of(self, photo_id: str) -> npt.NDArray[np.float32]:
        """The stored embedding of one photo as float32 (for "more like this" queries)."""
        return np.asarray(self.vectors[self.row_of(photo_id)], dtype=np.float32)

    def candidates_for(self, rows: npt.ArrayLike, scores: npt.ArrayLike) -> list[Candidate]:
        """Index rows + scores (one query, best first) -> `Candidate`s with metadata; rank is 1-based.

        Negative rows (FAISS's "no result" slots) are dropped.
        """
        meta = self._rows
        out: list[Candidate] = []
        for row, score in zip(np.asarray(rows).tolist(), np.asarray(scores).tolist(), strict=True):
            if row < 0:
                continue
            out.append(
                Candidate(
                    photo_id=meta.photo_id[row],
                    score=float(score),
                    rank=len(out) + 1,
                    image_url=meta.image_url[row],
                    description=meta.description[row],
                    photographer=meta.photographer[row],
                    width=meta.width[row],
                    height=meta.height[row],
                    blur_hash=meta.blur_hash[row],
                    submitted_at=_iso_day(self.attributes.submitted_ns[row]),
                    downloads=_int_or_none(self.attributes.downloads[row]),
                )
            )
        return out

    def search(self, queries: npt.ArrayLike, k: int) -> list[list[Candidate]]:
        """Top-k candidates for each query vector (rows of `queries`)."""
        scores, rows = self.index.search(queries, k)
        return [self.candidates_for(r, s) for r, s in zip(rows, scores, strict=True)]

    def search_rows(
        self, query: npt.ArrayLike, k: int, selection: Selection | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], str]:
        """Top-k (scores, rows, strategy) of one query vector, among `selection` when given (exact; see
        `clipsearch.index.search.search_selected`)."""
        if selection is None:
            scores, rows = self.index.search(np.asarray(query, dtype=np.float32)[None, :], k)
            keep = rows[0] >= 0
            return scores[0][keep], rows[0][keep], "index"
        return search_selected(self.index, self.vectors, query, k, selection.rows, brute_force_max=self.brute_force_max)

    def cosine(self, query: npt.ArrayLike, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Exact cosine of one query vector with the stored vectors of `rows`."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        return np.asarray(np.asarray(self.vectors[rows], dtype=np.float32) @ q, dtype=np.float32)


# --------------------------------------------------------------------------------------------- writing


def write_artifact(
    out_dir: Path | str,
    vectors: npt.ArrayLike,
    ids: Sequence[str] | npt.ArrayLike,
    metadata: pd.DataFrame,
    model: ModelIdentity,
    index_settings: IndexSettings,
    dataset_version: str,
    *,
    index: VectorIndex | None = None,
    reference_queries: npt.ArrayLike | None = None,
    colors: pd.DataFrame | None = None,
    keyword_index: KeywordIndex | None = None,
) -> Manifest:
    """Write a complete artifact at `out_dir` atomically and return its manifest.

    `vectors` (n, dim) must be finite and L2-normalised (within 1e-2; they are re-normalised before the
    cast to `index_settings.dtype`). `metadata` needs the METADATA_COLUMNS, one row per id in the same order;
    the FILTER_COLUMNS it has are kept too. `colors` (photo_id, keyword, coverage) feeds the colour filter and
    `keyword_index` (one document per row) hybrid and keyword search.
    The search structure is built from the stored (possibly float16) vectors per `index_settings`, unless a
    prebuilt `index` over exactly those vectors is passed.
    """
    out_dir = Path(out_dir)
    stored, id_array, meta = _validate_inputs(vectors, ids, metadata, model, index_settings)
    if index is None:
        index = build_index(stored.astype(np.float32), index_settings)
    if len(index) != len(id_array):
        raise ArtifactError(f"the index holds {len(index)} vectors but {len(id_array)} ids were given")

    arrays: dict[str, bytes] = {VECTORS: _npy_bytes(stored), IDS: _npy_bytes(id_array), METADATA: _parquet_bytes(meta)}
    if isinstance(index, FaissIndex):
        arrays[FAISS_INDEX] = index.to_bytes()
    if colors is not None:
        arrays[COLORS] = _parquet_bytes(_validate_colors(colors, id_array))
    if keyword_index is not None:
        if len(keyword_index) != len(id_array):
            raise ArtifactError(f"the keyword index holds {len(keyword_index)} documents for {len(id_array)} photos")
        arrays[KEYWORDS] = keyword_index.to_bytes()
    if reference_queries is not None:
        arrays[REFERENCE_QUERIES] = _npy_bytes(_validate_reference(reference_queries, model.dim))

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model=model,
        dim=model.dim,
        count=len(id_array),
        index=IndexSpec(kind=index_settings.kind, params=dict(index.params)),
        dataset_version=dataset_version,
        files={name: _sha256(data) for name, data in sorted(arrays.items())},
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    _publish(out_dir, {**arrays, MANIFEST: _manifest_bytes(manifest)})
    logger.info("wrote index artifact %s (%d vectors, %s) to %s", manifest.version, manifest.count, index.kind, out_dir)
    return manifest


def add_reference_queries(path: Path | str, embeddings: npt.ArrayLike) -> Manifest:
    """Add (or replace) reference_queries.npy in an existing artifact, atomically, and return the new manifest.

    The artifact is verified first; the result is a new directory swapped into place like `write_artifact`.
    """
    path = Path(path)
    manifest = read_manifest(path)
    blobs = _read_verified_files(path, manifest)
    blobs[REFERENCE_QUERIES] = _npy_bytes(_validate_reference(embeddings, manifest.dim))
    new_manifest = manifest.model_copy(update={"files": {name: _sha256(data) for name, data in sorted(blobs.items())}})
    _publish(path, {**blobs, MANIFEST: _manifest_bytes(new_manifest)})
    return new_manifest


with_reference_queries = add_reference_queries  # the name in the design notes


def _validate_inputs(
    vectors: npt.ArrayLike,
    ids: Sequence[str] | npt.ArrayLike,
    metadata: pd.DataFrame,
    model: ModelIdentity,
    settings: IndexSettings,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != model.dim:
        raise ArtifactError(f"vectors must have shape (n, {model.dim}) for {model.describe()}; got {x.shape}")
    if not np.isfinite(x).all():
        raise ArtifactError("vectors contain NaN or infinity; re-run the embed stage (`dvc repro embed`)")
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > INPUT_NORM_TOLERANCE)
    if bad.size:
        raise ArtifactError(
            f"{bad.size} vectors are not L2-normalised (e.g. row {bad[0]} has norm {norms[bad[0]]:.4f}); "
            "the embed stage must normalise its outputs"
        )
    stored = (x / norms[:, None]).astype(settings.dtype)

    if x.shape[0] == 0:
        raise ArtifactError("no vectors to index; the embed stage produced nothing (check data/features)")
    id_array = np.asarray(ids).astype(str)
    if id_array.shape != (x.shape[0],):
        raise ArtifactError(f"{id_array.shape[0]} ids for {x.shape[0]} vectors; they must match one to one")
    _check_unique(id_array, "ids")

    missing = [c for c in METADATA_COLUMNS if c not in metadata.columns]
    if missing:
        raise ArtifactError(f"metadata lacks columns {missing}; expected {list(METADATA_COLUMNS)}")
    extra = [c for c in FILTER_COLUMNS if c in metadata.columns]
    meta = metadata.loc[:, [*METADATA_COLUMNS, *extra]].reset_index(drop=True)
    if meta["photo_id"].astype(str).tolist() != id_array.tolist():
        raise ArtifactError("metadata rows must be in the same order as the ids (row i describes ids[i])")
    meta["photo_id"] = meta["photo_id"].astype(str)
    for column in ("width", "height"):
        meta[column] = pd.to_numeric(meta[column], errors="coerce").astype("Int64")
    return stored, id_array, meta


def _validate_colors(colors: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    missing = [c for c in COLOR_COLUMNS if c not in colors.columns]
    if missing:
        raise ArtifactError(f"colors lacks columns {missing}; expected {list(COLOR_COLUMNS)}")
    out = colors.loc[:, list(COLOR_COLUMNS)].reset_index(drop=True)
    out["photo_id"] = out["photo_id"].astype(str)
    out = out[out["photo_id"].isin(set(ids.tolist()))]
    out["keyword"] = out["keyword"].astype("string")
    out["coverage"] = pd.to_numeric(out["coverage"], errors="coerce").astype("float32")
    return out.sort_values(["photo_id", "coverage"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _validate_reference(embeddings: npt.ArrayLike, dim: int) -> np.ndarray:
    ref = np.asarray(embeddings, dtype=np.float32)
    if ref.ndim != 2 or ref.shape[1] != dim or not np.isfinite(ref).all():
        raise ArtifactError(f"reference query embeddings must be finite with shape (n, {dim}); got {ref.shape}")
    return ref


def _publish(out_dir: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` into a temp sibling of `out_dir`, fsync, then swap it into place."""
    with atomic_directory(out_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------- reading


def read_manifest(path: Path | str) -> Manifest:
    """Parse and check manifest.json alone (cheap: no arrays are read)."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} does not exist: {Path(path)} is not an index artifact; {REBUILD_HINT}")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); {REBUILD_HINT}") from exc
    found = raw.get("format_version") if isinstance(raw, dict) else None
    if found != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format_version {found!r} but this clipsearch reads format {FORMAT_VERSION}; "
            f"{REBUILD_HINT} with this version, or serve it with the clipsearch version that wrote it"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{manifest_path} is malformed: {exc}; {REBUILD_HINT}") from exc


def load_artifact(
    path: Path | str,
    expected_model: ModelIdentity | None = None,
    verify: bool = True,
    query_encoders: bool = False,
) -> IndexArtifact:
    """Load an artifact and refuse it if anything is off (see module docstring).

    `verify=False` skips the checksum and norm checks (for trusted local reloads); shapes, ids and the
    model identity are always checked. The query-encoder files (hundreds of MB) are read, verified and handed
    over in `query_encoder_blobs` only with `query_encoders=True`.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if expected_model is not None and manifest.model != expected_model:
        raise ArtifactError(
            f"the index at {path} was built with {manifest.model.describe()} but the encoder is "
            f"{expected_model.describe()}; serve it with the matching model, or rebuild the index with this "
            "model (`dvc repro build_index` after `dvc repro embed`)"
        )
    skip = set() if query_encoders else set(manifest.query_encoder_files)
    blobs = _read_verified_files(path, manifest, skip) if verify else _read_files(path, manifest, skip)
    encoder_blobs = {name: blobs.pop(name) for name in manifest.query_encoder_files if name in blobs}

    vectors = _load_npy(blobs[VECTORS], VECTORS, path)
    ids = _load_npy(blobs[IDS], IDS, path)
    metadata = _load_parquet(blobs[METADATA], path)
    reference = _load_npy(blobs[REFERENCE_QUERIES], REFERENCE_QUERIES, path) if REFERENCE_QUERIES in blobs else None
    colors = _load_parquet(blobs[COLORS], path, COLORS, COLOR_COLUMNS) if COLORS in blobs else None
    keyword_index = KeywordIndex.from_bytes(blobs[KEYWORDS], str(path / KEYWORDS)) if KEYWORDS in blobs else None
    if keyword_index is not None and len(keyword_index) != manifest.count:
        raise ArtifactError(
            f"{path / KEYWORDS} holds {len(keyword_index)} documents for {manifest.count} photos; {REBUILD_HINT}"
        )
    _check_arrays(path, manifest, vectors, ids, metadata, reference, verify=verify)

    index = load_index(manifest.index.kind, dict(manifest.index.params), vectors, blobs.get(FAISS_INDEX))
    if len(index) != manifest.count:
        raise ArtifactError(
            f"{path / FAISS_INDEX} holds {len(index)} vectors but the manifest says {manifest.count}; {REBUILD_HINT}"
        )
    return IndexArtifact(
        path=path,
        manifest=manifest,
        vectors=vectors,
        ids=ids,
        metadata=metadata,
        index=index,
        reference_queries=reference,
        query_encoder_blobs=encoder_blobs,
        colors=colors,
        keyword_index=keyword_index,
    )


def add_query_encoders(path: Path | str, files: Mapping[str, bytes], spec: Mapping[str, Any]) -> Manifest:
    """Add the query encoders (ONNX graphs, embedding tables, tokenizer vocabulary) to an existing artifact.

    `spec["model"]` must be the artifact's own model identity: encoders of another model are refused, like
    vectors of another model. The artifact is verified first and republished atomically with the new files.
    """
    path = Path(path)
    manifest = read_manifest(path)
    model = ModelIdentity.model_validate(spec.get("model", {}))
    if model != manifest.model:
        raise ArtifactError(
            f"the query encoders were exported from {model.describe()} but the index at {path} was built with "
            f"{manifest.model.describe()}; re-run the export stage (`dvc repro export_encoders`)"
        )
    named = dict(spec.get("files", {}))
    if sorted(named.values()) != sorted(files) or any(Path(n).name != n or n == MANIFEST for n in files):
        raise ArtifactError(f"the query encoder spec names {sorted(named.values())} but the files are {sorted(files)}")
    blobs = _read_verified_files(path, manifest)
    for old in manifest.query_encoder_files:
        blobs.pop(old, None)
    blobs.update(files)
    new_manifest = manifest.model_copy(
        update={
            "files": {name: _sha256(data) for name, data in sorted(blobs.items())},
            "query_encoders": dict(spec),
        }
    )
    _publish(path, {**blobs, MANIFEST: _manifest_bytes(new_manifest)})
    return new_manifest


def _read_files(path: Path, manifest: Manifest, skip: set[str] | None = None) -> dict[str, bytes]:
    for name in REQUIRED_FILES:
        if name not in manifest.files:
            raise ArtifactError(f"{path / MANIFEST} does not list {name}; {REBUILD_HINT}")
    if manifest.index.kind != "exact" and FAISS_INDEX not in manifest.files:
        raise ArtifactError(f"{path / MANIFEST} names a {manifest.index.kind} index but lists no {FAISS_INDEX}")
    blobs: dict[str, bytes] = {}
    for name in manifest.files:
        if skip and name in skip:
            continue
        if Path(name).name != name or name == MANIFEST:
            raise ArtifactError(f"{path / MANIFEST} lists an invalid file name {name!r}; {REBUILD_HINT}")
        file = path / name
        try:
            blobs[name] = file.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                f"{file} is missing (the manifest lists it); the artifact is incomplete, {REBUILD_HINT}"
            ) from None
    return blobs


def _read_verified_files(path: Path, manifest: Manifest, skip: set[str] | None = None) -> dict[str, bytes]:
    """Read every listed file once and check it against its manifest sha256 (no re-read between check and use)."""
    blobs = _read_files(path, manifest, skip)
    for name, data in blobs.items():
        actual = _sha256(data)
        if actual != manifest.files[name]:
            raise ArtifactError(
                f"{path / name} is corrupt: sha256 {actual[:16]}… does not match the manifest's "
                f"{manifest.files[name][:16]}…; re-pull it from the registry or {REBUILD_HINT}"
            )
    return blobs


def _load_npy(data: bytes, name: str, path: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{path / name} is not a readable .npy file ({exc}); {REBUILD_HINT}") from exc


def _load_parquet(
    data: bytes, path: Path, name: str = METADATA, columns: Sequence[str] = METADATA_COLUMNS
) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise ArtifactError(f"{path / name} is not a readable parquet file ({exc}); {REBUILD_HINT}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{path / name} lacks columns {missing}; {REBUILD_HINT}")
    return frame


def _check_arrays(
    path: Path,
    manifest: Manifest,
    vectors: np.ndarray,
    ids: np.ndarray,
    metadata: pd.DataFrame,
    reference: np.ndarray | None,
    *,
    verify: bool,
) -> None:
    expected = (manifest.count, manifest.dim)
    if vectors.shape != expected:
        raise ArtifactError(f"{path / VECTORS} has shape {vectors.shape}, manifest says {expected}; {REBUILD_HINT}")
    if vectors.dtype.name not in NORM_TOLERANCE:
        raise ArtifactError(f"{path / VECTORS} has dtype {vectors.dtype}; expected float16 or float32")
    if manifest.dim != manifest.model.dim:
        raise ArtifactError(f"{path / MANIFEST}: dim {manifest.dim} differs from the model's {manifest.model.dim}")
    if ids.shape != (manifest.count,) or ids.dtype.kind != "U":
        raise ArtifactError(
            f"{path / IDS} must hold {manifest.count} unicode ids; found shape {ids.shape} dtype {ids.dtype}"
        )
    _check_unique(ids, str(path / IDS))
    if len(metadata) != manifest.count or metadata["photo_id"].astype(str).tolist() != ids.tolist():
        raise ArtifactError(f"{path / METADATA} rows do not line up with {IDS}; {REBUILD_HINT}")
    if reference is not None and (reference.ndim != 2 or reference.shape[1] != manifest.dim):
        raise ArtifactError(f"{path / REFERENCE_QUERIES} has shape {reference.shape}; expected (n, {manifest.dim})")
    if verify and manifest.count:
        if not np.isfinite(vectors).all():
            raise ArtifactError(f"{path / VECTORS} contains NaN or infinity; {REBUILD_HINT}")
        # einsum accumulates in float32 without materialising a float32 copy of a float16 matrix.
        deviation = np.abs(np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32)) - 1.0)
        worst = int(np.argmax(deviation))
        if deviation[worst] > NORM_TOLERANCE[vectors.dtype.name]:
            raise ArtifactError(
                f"{path / VECTORS} row {worst} has norm {1.0 + float(deviation[worst]):.5f}, not 1 "
                f"(tolerance {NORM_TOLERANCE[vectors.dtype.name]}); {REBUILD_HINT}"
            )


def _check_unique(ids: np.ndarray, what: str) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:
        dupes = unique[counts > 1][:3].tolist()
        raise ArtifactError(f"{what} contains duplicate photo ids (e.g. {dupes}); each photo must appear once")


def _row_meta(metadata: pd.DataFrame) -> _RowMeta:
    def strings(column: str) -> list[str | None]:
        return [None if _missing(v) else str(v) for v in metadata[column].tolist()]

    def ints(column: str) -> list[int | None]:
        return [None if _missing(v) else int(v) for v in metadata[column].tolist()]

    return _RowMeta(
        photo_id=[str(v) for v in metadata["photo_id"].tolist()],
        image_url=["" if _missing(v) else str(v) for v in metadata["image_url"].tolist()],
        description=strings("description"),
        photographer=strings("photographer"),
        width=ints("width"),
        height=ints("height"),
        blur_hash=strings("blur_hash"),
    )


def _iso_day(ns: np.int64) -> str | None:
    if int(ns) == MISSING_TIME:
        return None
    return datetime.fromtimestamp(int(ns) / 1e9, tz=UTC).date().isoformat()


def _int_or_none(value: np.int64) -> int | None:
    return None if int(value) < 0 else int(value)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
