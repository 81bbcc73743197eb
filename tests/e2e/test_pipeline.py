"""`dvc repro` end to end: fixture data set over HTTP -> images -> features -> index -> evaluation -> MLflow registry,
then the promotion gate with a better and a worse challenger. Real processes throughout (dvc, mlflow server)."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow import MlflowClient

from tests.e2e.conftest import BIN, PipelineRepo

pytestmark = pytest.mark.e2e

STAGES = ("download", "embed", "build_index", "evaluate", "register")


def test_repro_builds_a_registered_challenger(reproduced: PipelineRepo) -> None:
    root = reproduced.root
    metrics = json.loads((root / "metrics.json").read_text())
    for key in ("precision_at_4", "recall_at_10", "ndcg_at_4", "mrr", "latency_ms_p50", "latency_ms_p95", "n_queries"):
        assert key in metrics, key
    assert metrics["n_queries"] >= 5
    # The tiny CLIP trained on the fixture retrieves its themes: far above random (~1/8 for P@4).
    assert metrics["precision_at_4"] > 0.3, metrics
    assert (root / "reports" / "results_grid.png").stat().st_size > 1000
    assert (root / "dvc.lock").is_file()

    registered = json.loads((root / "reports" / "registered.json").read_text())
    client = MlflowClient(tracking_uri=reproduced.tracking_uri, registry_uri=reproduced.tracking_uri)
    version = client.get_model_version_by_alias("clipsearch-index", "challenger")
    assert version.version == registered["version"]
    assert version.run_id is not None
    run = client.get_run(version.run_id)
    assert run.data.metrics["ndcg_at_4"] == pytest.approx(metrics["ndcg_at_4"])
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"results_grid.png", "evaluation.json", "metrics.json"} <= artifacts
    assert version.tags["index_version"] == registered["index_version"]

    # The MLflow UI opens the experiment as model development (not the GenAI overview) and shows the data lineage.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert run.inputs is not None
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1, inputs
    assert inputs[0].dataset.name == "unsplash-lite-fixture"
    tags = {t.key: t.value for t in inputs[0].tags}
    assert tags["mlflow.data.context"] == "evaluation"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lite_md5 = next(o["md5"] for o in lock["stages"]["download"]["outs"] if o["path"] == "data/lite")
    assert inputs[0].dataset.digest == lite_md5[:36]
    assert tags["dvc_md5:data/lite"] == lite_md5


def test_registered_version_loads_as_a_pyfunc_model(reproduced: PipelineRepo) -> None:
    """What MLflow users get from the registry: a model whose predict runs the same SearchEngine."""
    code = (
        "import mlflow, pandas as pd, sys\n"
        f"mlflow.set_tracking_uri({reproduced.tracking_uri!r})\n"
        f"mlflow.set_registry_uri({reproduced.tracking_uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/clipsearch-index@challenger')\n"
        "out = m.predict(pd.DataFrame({'query': ['forest', 'red car']}), params={'k': 2})\n"
        "print(out.to_json(orient='records'))\n"
    )
    out = reproduced.run(
        str(BIN / "python"), "-c", code, env={"CLIPSEARCH_PARAMS": str(reproduced.root / "params.yaml")}
    )
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["query"], r["rank"]) for r in rows] == [("forest", 1), ("forest", 2), ("red car", 1), ("red car", 2)]


def test_second_repro_skips_every_stage(reproduced: PipelineRepo) -> None:
    out = reproduced.run(str(BIN / "dvc"), "repro").stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert "Running stage" not in out


def test_search_cli_uses_the_built_index(reproduced: PipelineRepo) -> None:
    out = reproduced.run(str(BIN / "clipsearch"), "search", "forest", "--json").stdout
    result = json.loads(out)
    assert len(result["results"]) == 4
    assert result["index_version"]


def test_flipped_byte_is_refused(reproduced: PipelineRepo, tmp_path) -> None:
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(reproduced.root / "data" / "index", copy)
    vectors = copy / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-7] ^= 0x01
    vectors.write_bytes(bytes(data))
    proc = reproduced.run(str(BIN / "clipsearch"), "verify", str(copy), check=False)
    assert proc.returncode == 2
    assert "vectors.npy" in proc.stderr
    assert "sha256" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


def test_promote_gate_accepts_then_refuses_a_worse_challenger(reproduced: PipelineRepo) -> None:
    client = MlflowClient(tracking_uri=reproduced.tracking_uri, registry_uri=reproduced.tracking_uri)
    from mlflow.exceptions import MlflowException

    try:  # a live-service fixture of an earlier test file may have promoted the first version already
        champion = client.get_model_version_by_alias("clipsearch-index", "champion").version
    except MlflowException:
        first = reproduced.run(str(BIN / "clipsearch"), "promote")
        assert "promoted clipsearch-index version" in first.stdout
        champion = client.get_model_version_by_alias("clipsearch-index", "champion").version

    # A worse challenger: the same pipeline with untrained (random) weights.
    worse = reproduced.root.parent / f"{reproduced.root.name}-worse"
    import shutil

    shutil.copytree(reproduced.root, worse, symlinks=True)
    repo = PipelineRepo(root=worse, tracking_uri=reproduced.tracking_uri, checkpoint=reproduced.checkpoint)
    repo.set_params(model={"pretrained": "random"})
    out = repo.run(str(BIN / "dvc"), "repro").stdout
    assert "Stage 'download' didn't change, skipping" in out
    assert "Running stage 'embed'" in out
    challenger = client.get_model_version_by_alias("clipsearch-index", "challenger").version
    assert challenger != champion

    refused = repo.run(str(BIN / "clipsearch"), "promote", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused" in refused.stderr
    assert "worse by" in refused.stdout
    assert client.get_model_version_by_alias("clipsearch-index", "champion").version == champion
