"""The feature-chunk format: what the embed stage writes and the build_index stage reads, in one place.

    <features_dir>/chunk-<j:06d>.npz      (6 digits; more past chunk 999999)

Chunk j covers the photos `[j*chunk_size, (j+1)*chunk_size)` of `photos_with_images(...)`: the photo_id-sorted
list of photos that have an image file. The split depends only on the data, so N embed workers can share one
directory and any of them can stop and start again.

Members (plain numpy arrays, readable without pickle):

- `vectors` float32 (n, dim), L2-normalised; row i is photo `ids[i]`.
- `ids` str (n,): the photos embedded, in photo_id order.
- `skipped_ids` str: photos whose file would not decode (left out on purpose, so build_index does not look
  for them). Optional on read: chunks from before it existed have none.
- `model` str: the `ModelIdentity` JSON of the encoder that made the vectors.
- `format_version` int: `FORMAT_VERSION`. A chunk without it is version 1 (the layout above, written before
  the member existed); a chunk of another version is refused, as index artifacts are.

A chunk is written through `clipsearch.fileio` (to `<name>.part`, fsynced, then renamed), so a chunk file that
exists is complete and `list_chunks` never sees a half-written one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from clipsearch.errors import DataFormatError
from clipsearch.fileio import PART_SUFFIX, atomic_file
from clipsearch.identity import ModelIdentity
from clipsearch.images import IMAGE_SUFFIX, is_safe_photo_id

FORMAT_VERSION = 1
LEGACY_FORMAT_VERSION = 1  # what a chunk without a `format_version` member is
CHUNK_GLOB = "chunk-*.npz"
CHUNK_PART_GLOB = f"{CHUNK_GLOB}{PART_SUFFIX}"
_CHUNK_NAME = re.compile(r"^chunk-(\d{6,})\.npz$")


@dataclass(frozen=True)
class FeatureChunk:
    """One chunk file: the vectors of `ids`, the photos deliberately left out, and the model that made them."""

    vectors: np.ndarray
    ids: list[str]
    skipped_ids: list[str]
    model: ModelIdentity

    @property
    def covered(self) -> list[str]:
        """Every photo this chunk accounts for, embedded or skipped, in photo_id order."""
        return sorted([*self.ids, *self.skipped_ids])

    def covers_exactly(self, photo_ids: list[str]) -> bool:
        """True when the chunk accounts for exactly `photo_ids` (sorted), each once, with `ids` in order."""
        return (
            self.covered == photo_ids and len(set(self.covered)) == len(self.covered) and self.ids == sorted(self.ids)
        )


# --------------------------------------------------------------------------------------------- names
def chunk_name(chunk: int) -> str:
    return f"chunk-{chunk:06d}.npz"


def chunk_path(features_dir: Path, chunk: int) -> Path:
    return features_dir / chunk_name(chunk)


def chunk_number(path: Path) -> int | None:
    """j for `chunk-<j>.npz`, None for any other name (`.part` files included)."""
    match = _CHUNK_NAME.match(path.name)
    return int(match.group(1)) if match else None


def part_chunk_number(path: Path) -> int | None:
    """j for a leftover `chunk-<j>.npz.part`, None for any other name."""
    if not path.name.endswith(PART_SUFFIX):
        return None
    return chunk_number(path.with_name(path.name.removesuffix(PART_SUFFIX)))


def list_chunks(features_dir: Path) -> list[Path]:
    """The complete chunk files in `features_dir`, in chunk order (`.part` files are never listed)."""
    found = [p for p in features_dir.glob(CHUNK_GLOB) if chunk_number(p) is not None]
    return sorted(found, key=lambda p: chunk_number(p) or 0)


def chunk_count(n_photos: int, chunk_size: int) -> int:
    """How many chunks `n_photos` photos need at `chunk_size`."""
    return -(-n_photos // chunk_size)


def chunk_slice(photo_ids: list[str], chunk: int, chunk_size: int) -> list[str]:
    """The photos chunk `chunk` must cover."""
    return photo_ids[chunk * chunk_size : (chunk + 1) * chunk_size]


# --------------------------------------------------------------------------------------------- the photo list
def photos_with_images(photo_ids: pd.Series | Iterable[str], images_dir: Path) -> list[str]:
    """The photo_id-sorted list of photos that have an image file: the list chunk j slices.

    `photo_ids` may hold missing values (skipped) and duplicates; ids that are not safe file names never match.
    """
    if not images_dir.is_dir():
        raise DataFormatError(f"{images_dir} does not exist: run the download stage first (dvc repro download).")
    with os.scandir(images_dir) as entries:
        on_disk = {e.name for e in entries if e.name.endswith(IMAGE_SUFFIX)}
    ids = {str(p) for p in pd.Series(photo_ids, dtype=object).dropna()}
    return sorted(p for p in ids if is_safe_photo_id(p) and f"{p}{IMAGE_SUFFIX}" in on_disk)


# --------------------------------------------------------------------------------------------- read / write
def _unreadable(path: Path, exc: Exception) -> DataFormatError:
    return DataFormatError(f"{path} is unreadable or not a feature chunk ({type(exc).__name__}: {exc})")


def _model_json(member: np.ndarray) -> str:
    """The ModelIdentity JSON from a 0-d string array (what write_chunk stores) or a 1-element one."""
    return str(member.item() if member.ndim == 0 else member.reshape(-1)[0])


def _check_version(path: Path, data: np.lib.npyio.NpzFile) -> None:
    version = int(data["format_version"]) if "format_version" in data.files else LEGACY_FORMAT_VERSION
    if version != FORMAT_VERSION:
        raise DataFormatError(
            f"{path} is feature-chunk format {version}; this clipsearch reads format {FORMAT_VERSION}"
        )


def read_chunk_model(path: Path) -> ModelIdentity:
    """Only the model identity of a chunk (npz members load lazily, so this skips the vectors)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            _check_version(path, data)
            return ModelIdentity.model_validate_json(_model_json(data["model"]))
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, ValidationError) as exc:
        raise _unreadable(path, exc) from exc


def read_chunk(path: Path) -> FeatureChunk:
    """Load and check one chunk file; DataFormatError when it is unreadable, of another format or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as data:
            _check_version(path, data)
            vectors = np.asarray(data["vectors"], dtype=np.float32)
            ids = [str(x) for x in data["ids"].tolist()]
            skipped = [str(x) for x in data["skipped_ids"].tolist()] if "skipped_ids" in data.files else []
            model = ModelIdentity.model_validate_json(_model_json(data["model"]))
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, ValidationError) as exc:
        raise _unreadable(path, exc) from exc
    if vectors.ndim != 2 or vectors.shape != (len(ids), model.dim):
        raise DataFormatError(
            f"{path}: vectors have shape {vectors.shape} for {len(ids)} ids of a {model.dim}-d model, expected "
            f"({len(ids)}, {model.dim})"
        )
    return FeatureChunk(vectors=vectors, ids=ids, skipped_ids=skipped, model=model)


def write_chunk(path: Path, chunk: FeatureChunk) -> None:
    """Write the chunk atomically (`<path>.part`, fsynced, renamed): a chunk file that exists is complete."""
    with atomic_file(path) as fh:
        np.savez(
            fh,
            vectors=np.ascontiguousarray(chunk.vectors, dtype=np.float32).reshape(len(chunk.ids), chunk.model.dim),
            ids=np.asarray(chunk.ids, dtype=np.str_),
            skipped_ids=np.asarray(chunk.skipped_ids, dtype=np.str_),
            model=np.asarray(chunk.model.model_dump_json(), dtype=np.str_),
            format_version=np.asarray(FORMAT_VERSION, dtype=np.int64),
        )
