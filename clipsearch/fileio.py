"""Atomic writes: the one way clipsearch puts a file or a directory at its final path.

A reader sees the old content or the new, never half of one: data goes to a temporary sibling on the same
file system, which is renamed over the final path only when the write completed. `durable=True` also fsyncs
the data before the rename (and the parent directory after it), so the rename survives a power cut.

- `atomic_path(final)`: a temporary path to hand to a writer that wants a file name (`to_parquet`, an ONNX
  exporter, `torch.save`); renamed onto `final` when the block succeeds, removed when it fails.
- `atomic_file(final)`: the same, as an open binary file.
- `write_atomic(final, data)`: bytes or text in one call.
- `atomic_directory(final)`: a temporary sibling directory that replaces `final` as a whole (index artifacts,
  downloaded registry versions).

Temporary files are `<name>.part` by default (the download and embed stages clean leftovers by that suffix);
`unique=True` adds a random part for writers that may race another process on the same target.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PART_SUFFIX = ".part"


def part_path(final: Path, *, unique: bool = False, suffix: str = PART_SUFFIX) -> Path:
    """The temporary sibling `final` is written as: `<name>.part`, or `.<name>.<random><suffix>` when unique."""
    if unique:
        return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{suffix}")
    return final.with_name(final.name + suffix)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    final: Path, *, durable: bool = True, unique: bool = False, suffix: str = PART_SUFFIX
) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` when the block succeeds, else remove it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(final, unique=unique, suffix=suffix)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(final: Path, *, durable: bool = True, unique: bool = False) -> Iterator[BinaryIO]:
    """An open binary file that becomes `final` when the block succeeds (see `atomic_path`)."""
    with atomic_path(final, durable=False, unique=unique) as tmp, tmp.open("wb") as fh:
        yield fh
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def write_atomic(final: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Write `data` (str as UTF-8) to `<final>.part`, then rename over `final`.

    `durable` also fsyncs before the rename. Images skip it: the download stage re-verifies every file on
    resume, so a torn file after a crash is refetched anyway.
    """
    with atomic_file(final, durable=durable) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def atomic_directory(final: Path, *, durable: bool = True, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling directory that takes `final`'s place when the block succeeds.

    With `replace`, an existing `final` is moved aside for the rename and removed afterwards (put back if the
    rename fails); without it, an existing `final` makes the rename fail and the new directory is dropped.
    `durable` fsyncs every file written, the directory and its parent. On failure nothing is left behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.tmp-{tag}")
    old = final.with_name(f".{final.name}.old-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            for root, _dirs, files in os.walk(tmp):
                for name in files:
                    fsync_path(Path(root) / name)
            fsync_path(tmp)
        if replace:
            with _moved_aside(final, old):
                tmp.rename(final)
        else:
            tmp.rename(final)
        if durable:
            fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _moved_aside(final: Path, old: Path) -> Iterator[None]:
    """Move an existing `final` to `old` for the duration of the block; put it back if the block fails."""
    had_old = final.exists() or final.is_symlink()
    if had_old:
        final.rename(old)
    try:
        yield
    except BaseException:
        if had_old and not final.exists():
            old.rename(final)
        raise
