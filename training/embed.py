"""DVC stage `embed`: CLIP image features for every downloaded photo, in resumable, shardable chunks.

    python -m training.embed [--shard i/N]

Reads `<data_dir>/lite/photos.parquet` (column `photo_id`) and `<data_dir>/images/<photo_id>.jpg`; writes
`<features_dir>/chunk-<j:06d>.npz` in the format `clipsearch.features` defines (names, members, format version,
atomic write, and the photo list chunk j slices). The split depends only on the data: N workers
(`--shard i/N`, a Kubernetes Indexed Job) share one directory, worker i writes the chunks with `j % N == i`,
and any of them can stop and start again.

Photos whose file would not decode are logged and recorded as `skipped_ids`, so build_index does not look for
them. On a re-run a chunk is skipped when it loads, covers exactly its photos and was made by this model;
a chunk made by another model stops the stage: mixing vectors of two models would make a silently broken index.

Image decoding runs in DataLoader worker processes (`model.num_workers`) that stay a few batches ahead of the
model, so decode and inference overlap.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ConfigError, DataFormatError
from clipsearch.features import (
    CHUNK_PART_GLOB,
    FeatureChunk,
    chunk_count,
    chunk_number,
    chunk_path,
    list_chunks,
    part_chunk_number,
    photos_with_images,
    read_chunk,
    read_chunk_model,
    write_chunk,
)
from clipsearch.identity import ModelIdentity
from clipsearch.images import image_path
from clipsearch.settings import Settings, get_settings
from clipsearch.visual import ImageTransform

log = logging.getLogger(__name__)

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


def photo_ids_with_images(photos_parquet: Path, images_dir: Path) -> list[str]:
    """`clipsearch.features.photos_with_images` over the photos table's photo_id column (the order chunks are cut from)."""
    if not photos_parquet.is_file():
        raise DataFormatError(f"{photos_parquet} does not exist: run the download stage first (dvc repro download).")
    try:
        photos = pd.read_parquet(photos_parquet, columns=["photo_id"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataFormatError(
            f"{photos_parquet} has no readable photo_id column ({type(exc).__name__}: {exc}); "
            "re-run the download stage."
        ) from exc
    return photos_with_images(photos["photo_id"], images_dir)


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
    if not chunk.covers_exactly(plan.photo_ids):
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
    for part in features_dir.glob(CHUNK_PART_GLOB):
        number = part_chunk_number(part)
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
    photo_ids = photo_ids_with_images(data_dir / "lite" / "photos.parquet", data_dir / "images")
    chunk_size = settings.embed.chunk_size
    n_chunks = chunk_count(len(photo_ids), chunk_size)
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
    dataset = ImageFiles(
        [image_path(images_dir, p) for p in order], encoder.preprocess, encoder.image_backend.input_shape
    )
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
