"""End-to-end fixtures: a real `mlflow server`, and a temporary copy of this repo where `dvc repro` runs for real
against the generated Unsplash Lite fixture served on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.processes import mlflow_server

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class PipelineRepo:
    """A throwaway checkout with params pointed at the fixture server, the tiny model and a live MLflow."""

    root: Path
    tracking_uri: str
    checkpoint: Path

    def run(self, *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args), cwd=self.root, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def set_params(self, **sections: dict[str, object]) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for section, values in sections.items():
            params[section].update(values)
        path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_repo(dest: Path) -> None:
    """Copy the tracked (and new, unignored) files of this repo, as a fresh clone would have them."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, served artifacts, one worker) on 127.0.0.1 for the session."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory, unsplash_fixture_server, tiny_clip_checkpoint, mlflow_url) -> PipelineRepo:
    """A repo copy whose params point at the fixture server, the trained tiny CLIP checkpoint and MLflow."""
    root = tmp_path_factory.mktemp("repo")
    copy_repo(root)
    repo = PipelineRepo(root=root, tracking_uri=mlflow_url, checkpoint=tiny_clip_checkpoint)
    repo.set_params(
        dataset={"url": unsplash_fixture_server.zip_url, "limit": None, "image_width": 96, "concurrency": 8},
        model={"arch": "clipsearch-tiny", "pretrained": str(tiny_clip_checkpoint), "device": "cpu", "precision": "fp32",
               "num_workers": 1, "batch_size": 64},
        embed={"chunk_size": 128},
        registry={"tracking_uri": mlflow_url, "gate_tolerance": 0.02},
    )
    return repo


@pytest.fixture(scope="session")
def reproduced(pipeline_repo: PipelineRepo) -> PipelineRepo:
    """`dvc repro` run once for the session (the pipeline test and the service tests share its registry)."""
    result = pipeline_repo.run(str(BIN / "dvc"), "repro")
    (pipeline_repo.root / "first-repro.log").write_text(result.stdout + result.stderr)
    return pipeline_repo
