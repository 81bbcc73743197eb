"""DVC stage `embed`: CLIP image features for every downloaded photo, in resumable, shardable chunks.

    python -m training.embed [--shard i/N]

Reads `<data_dir>/lite/photos.parquet` (column `photo_id`) and `<data_dir>/images/<photo_id>.jpg`; writes
`<features_dir>/chunk-<j:06d>.npz` (see docs/ARCHITECTURE.md). Chunk j holds the photos
`[j*chunk_size, (j+1)*chunk_size)` of the photo_id-sorted list of photos that have an image file, so the split
depends only on the data: N workers (`--shard i/N`, a Kubernetes Indexed Job) share one directory, worker i
writes the chunks with `j % N == i`, and any of them can stop and start again.

Each chunk file holds `vectors` (float32, L2-normalised), `ids` (the photos embedded, in order), `skipped_ids`
(photos whose file would not decode: logged and left out on purpose, so build_index does not look for them)
and `model` (the ModelIdentity JSON). A chunk is written to `.part` and renamed, so a file that exists is
complete. On a re-run a chunk is skipped when it loads, covers exactly its photos and was made by this model;
a chunk made by another model stops the stage: mixing vectors of two models would make a silently broken index.

Image decoding runs in DataLoader worker processes (`model.num_workers`) that stay a few batches ahead of the
model, so decode and inference overlap.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.encoder import ClipEncoder, ImageTransform
from clipsearch.errors import ConfigError, DataFormatError
from clipsearch.fileio import PART_SUFFIX, atomic_file
from clipsearch.identity import ModelIdentity
from clipsearch.images import IMAGE_SUFFIX, is_safe_photo_id
from clipsearch.settings import Settings, get_settings

log = logging.getLogger(__name__)

CHUNK_GLOB = "chunk-*.npz"
_CHUNK_NAME = re.compile(r"^chunk-(\d{6,})\.npz$")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
PREFETCH_BATCHES_PER_WORKER = 4


# --------------------------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count`: owns the chunks j with j % count == index."""

    index: int = 0
    count: int = 1

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`"i/N"` with 0 <= i < N, e.g. `0/1` (everything) or `3/8`. Anything else is a ConfigError."""
    match = _SHARD.match(text)
    if not match:
        raise ConfigError(
            f"--shard {text!r} is not of the form i/N (e.g. --shard 0/4 for the first of four workers; "
            "i counts from 0). Omit it to embed everything in one process."
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ConfigError(f"--shard {text!r}: need N >= 1 and 0 <= i < N (workers are numbered 0..N-1).")
    return Shard(index, count)


# --------------------------------------------------------------------------------------------- chunk files
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


def chunk_path(features_dir: Path, chunk: int) -> Path:
    return features_dir / f"chunk-{chunk:06d}.npz"


def chunk_number(path: Path) -> int | None:
    match = _CHUNK_NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_chunks(features_dir: Path) -> list[Path]:
    """The complete chunk files in `features_dir`, in chunk order (`.part` files are never listed)."""
    found = [p for p in features_dir.glob(CHUNK_GLOB) if chunk_number(p) is not None]
    return sorted(found, key=lambda p: chunk_number(p) or 0)


def read_chunk_model(path: Path) -> ModelIdentity:
    """Only the model identity of a chunk (npz members load lazily, so this skips the vectors)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return ModelIdentity.model_validate_json(str(data["model"]))
    except (OSError, ValueError, KeyError, ValidationError) as exc:
        raise DataFormatError(f"{path} is not a readable feature chunk ({type(exc).__name__}: {exc})") from exc


def read_chunk(path: Path) -> FeatureChunk:
    """Load and check one chunk file; DataFormatError when it is unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as data:
            vectors = np.asarray(data["vectors"], dtype=np.float32)
            ids = [str(x) for x in data["ids"]]
            skipped = [str(x) for x in data["skipped_ids"]]
            model = ModelIdentity.model_validate_json(str(data["model"]))
    except (OSError, ValueError, KeyError, ValidationError) as exc:
        raise DataFormatError(f"{path} is not a readable feature chunk ({type(exc).__name__}: {exc})") from exc
    if vectors.ndim != 2 or vectors.shape != (len(ids), model.dim):
        raise DataFormatError(
            f"{path}: vectors have shape {vectors.shape}, expected ({len(ids)}, {model.dim}); delete the file "
            "and run the embed stage again."
        )
    return FeatureChunk(vectors=vectors, ids=ids, skipped_ids=skipped, model=model)


def write_chunk(path: Path, chunk: FeatureChunk) -> None:
    """Write `<path>.part` (fsynced), then rename over `path`: a chunk file that exists is complete."""
    with atomic_file(path) as fh:
        np.savez(
            fh,
            vectors=np.ascontiguousarray(chunk.vectors, dtype=np.float32).reshape(len(chunk.ids), chunk.model.dim),
            ids=np.asarray(chunk.ids, dtype=np.str_),
            skipped_ids=np.asarray(chunk.skipped_ids, dtype=np.str_),
            model=np.asarray(chunk.model.model_dump_json(), dtype=np.str_),
        )


def foreign_chunks(features_dir: Path, identity: ModelIdentity) -> list[tuple[Path, ModelIdentity]]:
    """Readable chunks in the directory made by another model (unreadable ones get redone anyway)."""
    foreign: list[tuple[Path, ModelIdentity]] = []
    for path in list_chunks(features_dir):
        try:
            model = read_chunk_model(path)
        except DataFormatError:
            continue
        if model != identity:
            foreign.append((path, model))
    return foreign


def replace_foreign_chunks(features_dir: Path, identity: ModelIdentity) -> int:
    """Delete chunks made by another model (the configured model changed, so they are stale); return how many.

    Shards running at once may race to delete the same stale file, so a file already gone is fine.
    """
    stale = foreign_chunks(features_dir, identity)
    for path, _model in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning(
            "removed %d chunk(s) made by %s: this run embeds with %s",
            len(stale),
            stale[0][1].describe(),
            identity.describe(),
        )
    return len(stale)


def refuse_foreign_chunks(features_dir: Path, identity: ModelIdentity) -> None:
    """Stop when any readable chunk in the directory was made by another model."""
    foreign = foreign_chunks(features_dir, identity)
    if foreign:
        path, model = foreign[0]
        raise ConfigError(
            f"{len(foreign)} feature chunk(s) in {features_dir} were made by another model "
            f"(e.g. {path.name}: {model.describe()}); this run uses {identity.describe()}. Vectors of different "
            f"models cannot share an index: delete {features_dir} to re-embed everything with this model, or "
            "set model.arch / model.pretrained back to the model that made them."
        )


# --------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class ChunkPlan:
    """Chunk `number` and the photo ids it must cover."""

    number: int
    photo_ids: list[str]


def photos_with_images(photos_parquet: Path, images_dir: Path) -> list[str]:
    """photo_ids from the photos table that have an image file, sorted (the order chunks are cut from)."""
    if not photos_parquet.is_file():
        raise DataFormatError(f"{photos_parquet} does not exist: run the download stage first (dvc repro download).")
    try:
        photos = pd.read_parquet(photos_parquet, columns=["photo_id"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataFormatError(
            f"{photos_parquet} has no readable photo_id column ({type(exc).__name__}: {exc}); "
            "re-run the download stage."
        ) from exc
    if not images_dir.is_dir():
        raise DataFormatError(f"{images_dir} does not exist: run the download stage first (dvc repro download).")
    with os.scandir(images_dir) as entries:
        on_disk = {e.name for e in entries if e.name.endswith(IMAGE_SUFFIX)}
    ids = {str(p) for p in photos["photo_id"].dropna()}
    return sorted(p for p in ids if is_safe_photo_id(p) and f"{p}{IMAGE_SUFFIX}" in on_disk)


def plan_chunks(photo_ids: Sequence[str], chunk_size: int, shard: Shard) -> list[ChunkPlan]:
    """The chunks `shard` owns: chunk j covers photo_ids[j*chunk_size:(j+1)*chunk_size]."""
    return [
        ChunkPlan(j, list(photo_ids[start : start + chunk_size]))
        for j, start in enumerate(range(0, len(photo_ids), chunk_size))
        if shard.owns(j)
    ]


def is_done(path: Path, plan: ChunkPlan, identity: ModelIdentity) -> bool:
    """True when the chunk file exists, loads, was made by `identity` and covers exactly the planned photos."""
    if not path.is_file():
        return False
    try:
        chunk = read_chunk(path)
    except DataFormatError as exc:
        log.warning("%s: %s; embedding this chunk again", path.name, exc)
        return False
    if chunk.model != identity:  # refuse_foreign_chunks ran first; a file replaced since then lands here
        raise ConfigError(
            f"{path} was made by {chunk.model.describe()}, not {identity.describe()}: delete {path.parent} "
            "or use the model that made it."
        )
    if chunk.covered != plan.photo_ids:
        log.info("%s covers other photos than now (the image set changed); embedding it again", path.name)
        return False
    return True


def remove_stale_chunks(features_dir: Path, n_chunks: int, shard: Shard) -> list[Path]:
    """Delete this shard's chunk files numbered beyond the data (the image set shrank) and leftover `.part`s."""
    removed = []
    for path in list_chunks(features_dir):
        number = chunk_number(path)
        if number is not None and number >= n_chunks and shard.owns(number):
            path.unlink()
            removed.append(path)
    for part in features_dir.glob(f"chunk-*.npz{PART_SUFFIX}"):
        number = chunk_number(part.with_name(part.name.removesuffix(PART_SUFFIX)))
        if number is not None and shard.owns(number):
            part.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------------------------- decoding
class ImageFiles(Dataset[tuple[torch.Tensor, bool, str]]):
    """Decode + preprocess one image per item, in DataLoader workers. Unreadable files become a flagged dummy.

    Picklable (paths, a picklable open_clip transform and a shape), so it also works with spawned workers.
    """

    def __init__(self, paths: Sequence[Path], preprocess: ImageTransform, shape: tuple[int, int, int]) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.shape = shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool, str]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()
                return self.preprocess(image), True, ""
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return torch.zeros(self.shape), False, f"{type(exc).__name__}: {exc}"


def _input_shape(encoder: ClipEncoder) -> tuple[int, int, int]:
    size = encoder.model.visual.preprocess_cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    return (3, int(height), int(width))


# --------------------------------------------------------------------------------------------- the stage
@dataclass
class EmbedSummary:
    """What one run did (printed at the end; returned for tests and callers)."""

    shard: Shard
    chunks_planned: int = 0
    chunks_written: list[int] = field(default_factory=list)
    chunks_already_done: int = 0
    images: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0  # decoding + inference + writing, the part that scales with the images
    total_seconds: float = 0.0  # also planning, model load and resume checks

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"embed shard {self.shard}: {self.images} images in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} images/s); chunks written {len(self.chunks_written)}, "
            f"already done {self.chunks_already_done} of {self.chunks_planned}; "
            f"unreadable images skipped {len(self.skipped)}; {self.total_seconds:.1f} s in all"
        )


class _ChunkAssembler:
    """Collects per-image results in loader order and writes each chunk the moment its last image arrives.

    Plans are never empty (`plan_chunks` cuts non-empty slices), so every chunk is completed by an `add`.
    """

    def __init__(self, plans: list[ChunkPlan], features_dir: Path, identity: ModelIdentity) -> None:
        self.plans = plans
        self.features_dir = features_dir
        self.identity = identity
        self._current = 0
        self._vectors: list[np.ndarray] = []
        self._ids: list[str] = []
        self._skipped: list[str] = []
        self.written: list[int] = []

    def add(self, photo_id: str, vector: np.ndarray | None) -> None:
        if vector is None:
            self._skipped.append(photo_id)
        else:
            self._vectors.append(vector)
            self._ids.append(photo_id)
        if len(self._ids) + len(self._skipped) == len(self.plans[self._current].photo_ids):
            self._write_current()

    def _write_current(self) -> None:
        plan = self.plans[self._current]
        vectors = np.stack(self._vectors) if self._vectors else np.empty((0, self.identity.dim), np.float32)
        chunk = FeatureChunk(vectors=vectors, ids=self._ids, skipped_ids=self._skipped, model=self.identity)
        write_chunk(chunk_path(self.features_dir, plan.number), chunk)
        self.written.append(plan.number)
        self._current += 1
        self._vectors, self._ids, self._skipped = [], [], []

    @property
    def complete(self) -> bool:
        return self._current == len(self.plans)


def embed(
    settings: Settings, shard: Shard = Shard(), *, encoder: ClipEncoder | None = None, replace_other_model: bool = False
) -> EmbedSummary:
    """Embed this shard's pending chunks; return what was done. The module docstring has the contract.

    Chunks made by another model are refused by default (mixing models corrupts an index); with
    `replace_other_model` (what `dvc repro` uses: a changed model param means re-embed) they are deleted first.
    """
    started = time.perf_counter()
    data_dir = settings.dataset.data_dir
    features_dir = settings.embed.features_dir
    photo_ids = photos_with_images(data_dir / "lite" / "photos.parquet", data_dir / "images")
    chunk_size = settings.embed.chunk_size
    n_chunks = -(-len(photo_ids) // chunk_size)
    plans = plan_chunks(photo_ids, chunk_size, shard)
    summary = EmbedSummary(shard=shard, chunks_planned=len(plans))
    if not photo_ids:
        log.warning("no photo in %s has an image file; nothing to embed", data_dir / "lite" / "photos.parquet")

    encoder = encoder or ClipEncoder.from_settings(settings.model)
    identity = encoder.identity
    features_dir.mkdir(parents=True, exist_ok=True)
    if replace_other_model:
        replace_foreign_chunks(features_dir, identity)
    else:
        refuse_foreign_chunks(features_dir, identity)
    for stale in remove_stale_chunks(features_dir, n_chunks, shard):
        log.info("removed %s: beyond the %d chunks the current images need", stale.name, n_chunks)
    pending = [plan for plan in plans if not is_done(chunk_path(features_dir, plan.number), plan, identity)]
    summary.chunks_already_done = len(plans) - len(pending)
    log.info(
        "shard %s: %d photos with images, %d chunks of %d; this shard owns %d, %d to do, model %s",
        shard,
        len(photo_ids),
        n_chunks,
        chunk_size,
        len(plans),
        len(pending),
        identity.describe(),
    )

    order = [photo_id for plan in pending for photo_id in plan.photo_ids]
    images_dir = data_dir / "images"
    dataset = ImageFiles([images_dir / f"{p}{IMAGE_SUFFIX}" for p in order], encoder.preprocess, _input_shape(encoder))
    workers = settings.model.num_workers
    loader = DataLoader(
        dataset,
        batch_size=settings.model.batch_size,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=PREFETCH_BATCHES_PER_WORKER if workers > 0 else None,
        pin_memory=encoder.device.type == "cuda",
    )
    assembler = _ChunkAssembler(pending, features_dir, identity)
    cursor = 0
    loop_started = time.perf_counter()
    with tqdm(total=len(order), unit="img", desc=f"embed {shard}", dynamic_ncols=True, smoothing=0.1) as bar:
        for batch, ok, errors in loader:
            ok_mask = ok.bool()
            if bool(ok_mask.all()):
                vectors = encoder.encode_image_tensors(batch)
            else:
                vectors = np.zeros((len(ok_mask), identity.dim), np.float32)
                if bool(ok_mask.any()):
                    vectors[ok_mask.numpy()] = encoder.encode_image_tensors(batch[ok_mask])
            for k in range(len(ok_mask)):
                photo_id = order[cursor + k]
                if bool(ok_mask[k]):
                    assembler.add(photo_id, vectors[k])
                else:
                    log.warning("skipping %s: the image does not decode (%s)", photo_id, errors[k])
                    summary.skipped.append(photo_id)
                    assembler.add(photo_id, None)
            cursor += len(ok_mask)
            summary.images += int(ok_mask.sum())
            bar.update(len(ok_mask))
    if not assembler.complete:  # a loader that yields fewer items than planned would be a bug, not bad data
        raise RuntimeError(f"embed: {cursor} images loaded for {len(order)} planned; chunks left incomplete")
    summary.chunks_written = assembler.written
    summary.seconds = time.perf_counter() - loop_started
    summary.total_seconds = time.perf_counter() - started
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.embed",
        description="Embed downloaded images with CLIP into resumable feature chunks (one shard of them).",
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        help="i/N: embed the chunks j with j %% N == i (N workers share one features directory). Default 0/1.",
    )
    parser.add_argument(
        "--replace-other-model",
        action="store_true",
        help="Delete feature chunks made by another model instead of refusing to run (the model params changed).",
    )
    args = parser.parse_args(argv)
    shard = parse_shard(args.shard)
    configure_logging()
    summary = embed(get_settings(), shard, replace_other_model=args.replace_other_model)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    run_cli(main, name="training.embed")
