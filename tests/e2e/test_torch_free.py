"""The CPU query path runs without torch: a fresh interpreter imports the whole service, loads an artifact that
carries its query encoder, answers a query with the same results as the torch encoder, and never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import QUERIES
from clipsearch.engine import load_engine
from clipsearch.index.artifact import add_query_encoders, load_artifact
from clipsearch.query_encoders import export_query_encoders, load_dir
from clipsearch.settings import ModelSettings
from clipsearch_devtools.processes import clean_environ
from tests.unit.test_engine import _artifact

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from pathlib import Path
import services.search.app  # the service's whole module graph
from clipsearch.engine import SearchEngine
from clipsearch.settings import load_settings
from services.search.encoders import QueryEncoders

encoders = QueryEncoders(load_settings())
encoder, artifact = encoders.load(Path(sys.argv[1]))
result = SearchEngine(encoder, artifact).search_text(sys.argv[2], k=3, candidates=5, rerank=False)
print(json.dumps({
    "torch": "torch" in sys.modules,
    "open_clip": "open_clip" in sys.modules,
    "artifact_first": encoders.artifact_first,
    "encoder": encoders.description,
    "photo_ids": [r.candidate.photo_id for r in result.results],
}))
"""


def test_cpu_query_path_never_imports_torch(tmp_path: Path, tiny_encoder) -> None:
    index_dir = _artifact(tmp_path / "index", tiny_encoder)
    spec = export_query_encoders(
        tiny_encoder, tmp_path / "enc", ModelSettings(), list(QUERIES[:4]), load_artifact(index_dir).index
    )
    add_query_encoders(index_dir, load_dir(tmp_path / "enc", spec), spec)
    query = "a foggy forest at dawn"
    expected = [
        r.candidate.photo_id for r in load_engine(index_dir, tiny_encoder).search_text(query, 3, 5, False).results
    ]
    env = {
        **clean_environ(),
        "CLIPSEARCH_PARAMS": str(tmp_path / "no-params.yaml"),
        "CLIPSEARCH_MODEL__ARCH": "clipsearch-tiny",
        "CLIPSEARCH_MODEL__PRETRAINED": "random",
        "CLIPSEARCH_MODEL__DEVICE": "cpu",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(index_dir), query],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["artifact_first"] and "no torch" in out["encoder"], out  # noqa: PT018
    assert out["torch"] is False and out["open_clip"] is False, "the CPU query path imported torch"  # noqa: PT018
    assert out["photo_ids"] == expected

    # A replica configured for another model refuses the artifact, as it would with torch.
    env["CLIPSEARCH_MODEL__ARCH"] = "ViT-B-32"
    refused = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(index_dir), query], capture_output=True, text=True, timeout=300, env=env
    )
    assert refused.returncode != 0
    assert "configured for ViT-B-32/random" in refused.stderr
    assert os.path.isdir(index_dir)
