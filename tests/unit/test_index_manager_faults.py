"""IndexManager while serving: registry gone -> stale with the reason, then confirmed again; a version that cannot
be written to the cache -> refused with the reason, the current version kept. (The e2e twins run against a real
MLflow server: tests/e2e/test_serving_faults.py.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clipsearch.errors import ArtifactError, RegistryError
from clipsearch.registry import RegisteredVersion
from clipsearch.settings import Settings
from services.search import index_manager as im


def _manager(tmp_path: Path, swaps: list[tuple[str, bool]]) -> im.IndexManager:
    settings = Settings(service={"cache_dir": tmp_path / "cache"})
    (tmp_path / "cache" / "indexes" / "v1").mkdir(parents=True)
    manager = im.IndexManager(
        settings,
        encoder=None,  # type: ignore[arg-type]
        reranker=None,  # type: ignore[arg-type]
        on_swap=[lambda s, stale: swaps.append((str(s.registry_version), stale))],
    )
    engine: Any = SimpleNamespace(index_version="idx-1", artifact=[])
    manager.current = im.ServingIndex(
        engine=engine, registry_version="1", path=tmp_path / "cache" / "indexes" / "v1" / "index", loaded_at=0.0
    )
    return manager


def _version(v: str) -> RegisteredVersion:
    return RegisteredVersion(name="clipsearch-index", version=v, run_id="r", alias="champion")


def test_registry_unreachable_while_serving_is_stale_then_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    swaps: list[tuple[str, bool]] = []
    manager = _manager(tmp_path, swaps)

    def down(settings: object) -> RegisteredVersion:  # noqa: ARG001
        raise RegistryError("MLflow at http://mlflow is unreachable while trying to resolve the alias")

    monkeypatch.setattr(im, "resolve_alias", down)
    assert manager.check_for_update().startswith("registry unreachable")
    assert manager.stale
    assert "unreachable" in (manager.last_error or "")
    assert swaps == [("1", True)]
    manager.check_for_update()  # still down: published once, not on every poll
    assert swaps == [("1", True)]

    monkeypatch.setattr(im, "resolve_alias", lambda settings: _version("1"))  # noqa: ARG005
    assert "reachable again" in manager.check_for_update()
    assert not manager.stale
    assert manager.last_error is None
    assert swaps[-1] == ("1", False)


def test_cache_not_writable_is_refused_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    swaps: list[tuple[str, bool]] = []
    manager = _manager(tmp_path, swaps)
    monkeypatch.setattr(im, "resolve_alias", lambda settings: _version("2"))  # noqa: ARG005

    def unwritable(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(im.tempfile, "NamedTemporaryFile", unwritable)
    with pytest.raises(ArtifactError, match="not writable"):
        manager.check_for_update()
    assert manager.current is not None
    assert manager.current.registry_version == "1"
    assert "version 2 refused" in (manager.last_error or "")
    assert "Permission denied" in (manager.last_error or "")
    assert swaps == []


def test_download_failing_midway_is_refused_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    swaps: list[tuple[str, bool]] = []
    manager = _manager(tmp_path, swaps)
    monkeypatch.setattr(im, "resolve_alias", lambda settings: _version("2"))  # noqa: ARG005
    calls: list[str] = []

    def cut(settings: object, version: str, dest: Path) -> Path:  # noqa: ARG001
        calls.append(version)
        raise RegistryError("download of version 2 broke off (IncompleteRead)")

    monkeypatch.setattr(im, "download_index", cut)
    for _ in range(2):
        with pytest.raises(RegistryError):
            manager.check_for_update()
    assert calls == ["2", "2"]  # each poll tries again
    assert manager.current is not None
    assert manager.current.registry_version == "1"
    assert "version 2 refused" in (manager.last_error or "")
