"""MLflow 3 model registry: register the index artifact, move aliases through a quality gate, pull versions.

Aliases, not stages: `register` creates a version and points `challenger` at it; `promote` moves `champion`
only when the challenger's evaluation metrics are no worse than the champion's (within a tolerance). The
service follows `models:/<name>@champion` and pulls whatever version the alias names.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.errors import RegistryError
from clipsearch.fileio import atomic_directory
from clipsearch.lineage import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from clipsearch.settings import RegistrySettings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

INDEX_ARTIFACT_KEY = "index"  # the key under which the artifact directory is logged with the pyfunc model
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# How MLflow's REST client words a server that is down or unreachable (it wraps requests' errors).
_CONNECTION_FAILURES = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Name or service not known",
    "timed out",
)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str | None
    alias: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """The quality gate's verdict, with one line per metric saying why."""

    passed: bool
    reasons: list[str]
    challenger: RegisteredVersion | None = None
    champion: RegisteredVersion | None = None


def client_for(settings: RegistrySettings) -> MlflowClient:
    """An MlflowClient for the configured tracking server (also used as the registry URI)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def use_experiment(settings: RegistrySettings) -> str:
    """Make the configured experiment active, created as a model-development experiment (not GenAI).

    MLflow 3 opens untagged experiments on its GenAI overview; the `mlflow.experimentKind` tag makes the UI
    show runs, metrics and models. An existing experiment gets the tag too (older stores lack it).
    """
    import mlflow

    experiment = mlflow.set_experiment(settings.experiment)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(experiment.experiment_id)


@contextmanager
def registry_errors(settings: RegistrySettings, action: str) -> Iterator[None]:
    """Turn MLflow's connection and REST errors into one clear `RegistryError`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except MlflowException as exc:
        if any(marker in exc.message for marker in _CONNECTION_FAILURES):
            raise RegistryError(
                f"MLflow at {settings.tracking_uri} is unreachable while trying to {action} (connection failed). "
                "Start the tracking server or point CLIPSEARCH_REGISTRY__TRACKING_URI at it."
            ) from exc
        raise RegistryError(
            f"MLflow could not {action} at {settings.tracking_uri}: {exc.message.splitlines()[0][:300]}. "
            "Check that the tracking server is up and CLIPSEARCH_REGISTRY__TRACKING_URI points at it."
        ) from exc
    except OSError as exc:
        raise RegistryError(
            f"MLflow at {settings.tracking_uri} is unreachable while trying to {action} ({exc}). "
            "Start the server or set CLIPSEARCH_REGISTRY__TRACKING_URI."
        ) from exc


def gate(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metrics: list[str],
    tolerance: float,
) -> tuple[bool, list[str]]:
    """Pass when every gate metric of the challenger is >= the champion's minus `tolerance` (higher is better).

    No champion yet: the first challenger passes. A metric the challenger lacks fails the gate, since an
    unmeasured version must never become champion.
    """
    if champion is None:
        return True, ["no current champion: the first evaluated version becomes champion"]
    passed, reasons = True, []
    for name in metrics:
        if name not in challenger:
            passed = False
            reasons.append(f"{name}: missing from the challenger's evaluation run")
            continue
        if name not in champion:
            reasons.append(f"{name}: champion has no value; challenger {challenger[name]:.4f} accepted")
            continue
        new, old = challenger[name], champion[name]
        ok = new >= old - tolerance
        passed &= ok
        verdict = "ok" if ok else f"worse by {old - new:.4f} (> tolerance {tolerance})"
        reasons.append(f"{name}: challenger {new:.4f} vs champion {old:.4f}: {verdict}")
    return passed, reasons


def _version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _as_registered(mv: ModelVersion, alias: str | None = None) -> RegisteredVersion:
    return RegisteredVersion(name=mv.name, version=str(mv.version), run_id=mv.run_id, alias=alias, tags=dict(mv.tags))


def run_metrics(client: MlflowClient, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    return dict(client.get_run(run_id).data.metrics)


def register_index(
    settings: RegistrySettings,
    index_dir: Path,
    run_id: str,
    tags: Mapping[str, str] | None = None,
    pip_requirements: list[str] | None = None,
) -> RegisteredVersion:
    """Log the artifact as a pyfunc model (its files as `artifacts`) in the evaluation run, register a version,
    and point the challenger alias at it."""
    import mlflow

    client = client_for(settings)
    with registry_errors(settings, "register the index"):
        # The run belongs to the evaluation experiment; a process that set another active experiment earlier
        # (the drift job, a notebook) must not make MLflow refuse to resume it.
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    with registry_errors(settings, "register the index"), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="index",
            python_model=str(MODEL_CODE),
            artifacts={INDEX_ARTIFACT_KEY: str(index_dir)},
            registered_model_name=settings.model_name,
            signature=_signature(),
            pip_requirements=pip_requirements,
            tags=dict(tags or {}),
        )
        version = str(info.registered_model_version)
        for key, value in (tags or {}).items():
            client.set_model_version_tag(settings.model_name, version, key, value)
        client.set_registered_model_alias(settings.model_name, settings.challenger_alias, version)
    log.info("registered %s version %s as @%s", settings.model_name, version, settings.challenger_alias)
    return RegisteredVersion(
        settings.model_name, version, run_id, alias=settings.challenger_alias, tags=dict(tags or {})
    )


def _signature() -> Any:
    """Input: a `query` column; output: one row per result; param `k` (results per query, default 4)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "query")]),
        outputs=Schema(
            [
                ColSpec("string", "query"),
                ColSpec("long", "rank"),
                ColSpec("string", "photo_id"),
                ColSpec("double", "score"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", 4)]),
    )


def promote(settings: RegistrySettings, version: str | None = None) -> GateDecision:
    """Move the champion alias to `version` (default: the current challenger) if the quality gate passes."""
    client = client_for(settings)
    with registry_errors(settings, "read the registry"):
        if version is None:
            mv = _version(client, settings.model_name, settings.challenger_alias)
            if mv is None:
                raise RegistryError(
                    f"Model '{settings.model_name}' has no @{settings.challenger_alias} version to promote. "
                    "Run `dvc repro register` (or `python -m training.register`) first."
                )
        else:
            mv = client.get_model_version(settings.model_name, version)
        challenger = _as_registered(mv, settings.challenger_alias)
        champion_mv = _version(client, settings.model_name, settings.champion_alias)
        champion = _as_registered(champion_mv, settings.champion_alias) if champion_mv else None
        if champion is not None and champion.version == challenger.version:
            return GateDecision(
                False, [f"version {challenger.version} is already @{settings.champion_alias}"], challenger, champion
            )
        passed, reasons = gate(
            run_metrics(client, challenger.run_id),
            run_metrics(client, champion.run_id) if champion else None,
            settings.gate_metrics,
            settings.gate_tolerance,
        )
        if passed:
            client.set_registered_model_alias(settings.model_name, settings.champion_alias, challenger.version)
            client.set_model_version_tag(
                settings.model_name, challenger.version, "promoted_from", champion.version if champion else "none"
            )
        return GateDecision(passed, reasons, challenger, champion)


def resolve_alias(settings: RegistrySettings, alias: str | None = None) -> RegisteredVersion:
    """The version an alias (default champion) names now; `RegistryError` if it names none."""
    alias = alias or settings.champion_alias
    client = client_for(settings)
    with registry_errors(settings, f"resolve @{alias}"):
        mv = _version(client, settings.model_name, alias)
    if mv is None:
        raise RegistryError(
            f"Model '{settings.model_name}' has no version with alias @{alias} on {settings.tracking_uri}. "
            f"Register one (`python -m training.register`) and promote it (`clipsearch promote`)."
        )
    return _as_registered(mv, alias)


def download_index(settings: RegistrySettings, version: str, dest_dir: Path) -> Path:
    """Download a registered version's index artifact into `dest_dir/<version>` (atomically) and return it.

    The caller verifies it (`load_artifact`) before serving; a half-finished download never sits at the
    final path because files land in a temporary sibling that is renamed at the end.
    """
    import mlflow.artifacts

    final = dest_dir / f"v{version}"
    if final.is_dir():
        return final / INDEX_ARTIFACT_KEY
    with atomic_directory(final, durable=False, replace=False) as tmp:
        with registry_errors(settings, f"download version {version}"):
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{settings.model_name}/{version}",
                    dst_path=str(tmp),
                    tracking_uri=settings.tracking_uri,
                    registry_uri=settings.tracking_uri,
                )
            )
        index = _index_dir_of(local)
        if index is None:
            raise RegistryError(
                f"Version {version} of '{settings.model_name}' holds no '{INDEX_ARTIFACT_KEY}' artifact; "
                "it was not registered by clipsearch. Register a new version with `python -m training.register`."
            )
        staged = tmp / INDEX_ARTIFACT_KEY
        shutil.move(str(index), staged)
        for leftover in tmp.iterdir():
            if leftover != staged:
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
    return final / INDEX_ARTIFACT_KEY


def _index_dir_of(model_dir: Path) -> Path | None:
    """Where the pyfunc model keeps the artifact logged under INDEX_ARTIFACT_KEY (MLflow stores it under the
    source directory's name, which need not be `index`), read from the MLmodel file."""
    import yaml

    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        relative = mlmodel["flavors"]["python_function"]["artifacts"][INDEX_ARTIFACT_KEY]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    path = (model_dir / relative).resolve()
    if not path.is_dir() or not path.is_relative_to(model_dir.resolve()):
        return None
    return path


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested settings into MLflow params (`index.kind` = `exact`), values cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out
