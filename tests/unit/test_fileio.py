"""clipsearch.fileio: the one atomic-write helper (files and directories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.fileio import atomic_directory, atomic_path, write_atomic


def test_write_atomic_replaces_and_leaves_no_part(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    write_atomic(target, "one")
    write_atomic(target, b"two", durable=False)
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, unique=True, suffix=".tmp.onnx") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_directory_swaps_whole_directories(tmp_path: Path) -> None:
    out = tmp_path / "index"
    with atomic_directory(out) as tmp:
        (tmp / "x").write_bytes(b"1")
    with atomic_directory(out) as tmp:
        (tmp / "y").write_bytes(b"2")
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "z").write_bytes(b"3")
        raise RuntimeError("failed")
    assert sorted(p.name for p in out.iterdir()) == ["y"] and [p.name for p in tmp_path.iterdir()] == ["index"]
    with pytest.raises(OSError), atomic_directory(out, replace=False) as tmp:
        (tmp / "w").write_bytes(b"4")
    assert sorted(p.name for p in out.iterdir()) == ["y"] and [p.name for p in tmp_path.iterdir()] == ["index"]
