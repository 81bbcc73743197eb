"""Batch drift check (a Kubernetes CronJob): recent queries vs the champion's reference queries, logged to MLflow.

    python -m services.search.drift_job --service-url http://clipsearch:8000 --fail-on-drift
    python -m services.search.drift_job --reference ref.npy --current window.npy --no-mlflow

Reference: `reference_queries.npy` of the registered version the alias names (default @champion), checked
against its manifest's sha256, or `--reference FILE.npy`. Current window: `--current FILE.npy`, or a running
service's `GET /admin/drift-window` (an .npy body; `Authorization: Bearer <token>` from `--admin-token` or
CLIPSEARCH_SERVICE__ADMIN_TOKEN). The computation is `clipsearch.drift.compute_drift`, the same one the
service runs, so a job and the service agree on the same inputs.

MLflow (settings.registry.tracking_uri, experiment `<experiment>-drift`): metrics drift_score, drift_detected,
n_current, n_reference (and top-1 summaries when known), the HTML report and the result JSON as artifacts,
tags naming the model version. Prints one summary line on stdout. Exit codes: 0; 1 with `--fail-on-drift`
when drift is detected; 2 for an expected failure (the message says what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.drift import DEFAULT_MAX_ROWS, DriftResult, compute_drift
from clipsearch.errors import ArtifactError, ConfigError, DataFormatError, DownloadError
from clipsearch.settings import Settings, get_settings

log = logging.getLogger("services.search.drift_job")

EXIT_DRIFT = 1
WINDOW_PATH = "/admin/drift-window"
REPORT_ARTIFACT = "drift_report.html"
RESULT_ARTIFACT = "drift_result.json"


@dataclass
class Loaded:
    """An embedding matrix and where it came from (MLflow tags)."""

    array: np.ndarray
    tags: dict[str, str] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m services.search.drift_job", description="Batch embedding drift check, logged to MLflow."
    )
    ref = p.add_argument_group("reference (default: reference_queries.npy of the registered @champion)")
    ref.add_argument("--reference", type=Path, help="reference embeddings, an .npy file of shape (n, dim)")
    ref.add_argument("--alias", help="registry alias to take the reference from (default: champion)")
    ref.add_argument("--cache-dir", type=Path, help="where registered versions are downloaded")
    cur = p.add_argument_group("current window (one of)").add_mutually_exclusive_group(required=True)
    cur.add_argument("--current", type=Path, help="recent query embeddings, an .npy file of shape (n, dim)")
    cur.add_argument("--service-url", help=f"a running service; its {WINDOW_PATH} is fetched")
    p.add_argument("--admin-token", help="bearer token for the service (default: CLIPSEARCH_SERVICE__ADMIN_TOKEN)")
    p.add_argument("--method", default="model", choices=["model", "mmd", "distance"], help="Evidently drift method")
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows sampled per side (fixed seed)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads for the report's t-SNE")
    p.add_argument("--html-out", type=Path, help="also write the HTML report to this file")
    p.add_argument("--no-html", action="store_true", help="skip the HTML report (saves the t-SNE, seconds)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is detected")
    p.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout for the service")
    args = p.parse_args(argv)
    if args.reference is not None and args.alias is not None:
        p.error("--reference and --alias are alternatives: give one")
    if args.max_rows < 1 or args.threads < 1:
        p.error("--max-rows and --threads must be positive")
    return args


# --------------------------------------------------------------------------------------------- inputs


def load_npy(path: Path, what: str) -> np.ndarray:
    """An .npy file as a float32 matrix, with a message that says which file and what to do."""
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist; pass an existing .npy file of shape (n, dim)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(
            f"{what} file {path} is not a readable .npy array ({exc}); write it with np.save"
        ) from exc
    return _matrix(array, f"{what} file {path}")


def reference_from_registry(settings: Settings, alias: str | None, cache_dir: Path | None) -> Loaded:
    """`reference_queries.npy` of the version `alias` names, verified against the artifact's manifest."""
    from clipsearch.index.artifact import REFERENCE_QUERIES, read_manifest
    from clipsearch.registry import download_index, resolve_alias

    version = resolve_alias(settings.registry, alias)
    index_dir = download_index(settings.registry, version.version, cache_dir or settings.service.cache_dir / "indexes")
    manifest = read_manifest(index_dir)
    expected = manifest.files.get(REFERENCE_QUERIES)
    path = index_dir / REFERENCE_QUERIES
    if expected is None or not path.is_file():
        raise ArtifactError(
            f"version {version.version} of '{version.name}' ships no {REFERENCE_QUERIES}, so there is nothing to "
            "compare queries with; register a new version with `python -m training.register` (it adds them), "
            "or pass --reference FILE.npy"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise ArtifactError(
            f"{path} does not match its manifest sha256; delete {index_dir.parent} and run the job again to re-pull"
        )
    array = _matrix(np.load(io.BytesIO(data), allow_pickle=False), f"{path}")
    if array.shape[1] != manifest.dim:
        raise ArtifactError(f"{path} has dimension {array.shape[1]} but the index has {manifest.dim}")
    tags = {
        "model_name": version.name,
        "model_version": version.version,
        "model_alias": version.alias or "",
        "index_version": manifest.version,
        "model": manifest.model.describe(),
        "reference_source": f"models:/{version.name}@{version.alias}",
    }
    return Loaded(array, tags)


def window_from_service(url: str, token: str | None, timeout_s: float) -> Loaded:
    """The service's current drift window (`GET /admin/drift-window`, an np.save body)."""
    import httpx

    endpoint = url.rstrip("/") + WINDOW_PATH
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(endpoint, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DownloadError(f"the service at {endpoint} is unreachable ({exc}); check --service-url") from exc
    if response.status_code in (401, 403):
        raise ConfigError(
            f"{endpoint} refused the request ({response.status_code}: {_detail(response)}); pass the service's "
            "admin token with --admin-token or CLIPSEARCH_SERVICE__ADMIN_TOKEN"
        )
    if response.status_code != 200:
        raise DownloadError(f"{endpoint} answered {response.status_code}: {_detail(response)}")
    try:
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(
            f"{endpoint} did not return an .npy body ({exc}); is {url} a clipsearch service?"
        ) from exc
    return Loaded(_matrix(array, f"the window from {endpoint}"), {"current_source": endpoint})


def _detail(response: object) -> str:
    text = getattr(response, "text", "")
    return str(text)[:200].strip() or "no body"


def _matrix(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 2:
        raise DataFormatError(f"{what} has shape {array.shape}; expected (n, dim) embeddings")
    if array.shape[0] == 0:
        raise DataFormatError(f"{what} has no rows: no queries were recorded yet; run the job after some traffic")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataFormatError(f"{what} has dtype {array.dtype}; expected float embeddings")
    return np.asarray(array, dtype=np.float32)


# --------------------------------------------------------------------------------------------- MLflow


def log_to_mlflow(
    settings: Settings, result: DriftResult, html: str | None, tags: dict[str, str], params: dict[str, str]
) -> str:
    """One run in `<experiment>-drift` with the metrics, tags, the HTML report and the result JSON; its run id."""
    import mlflow

    from clipsearch.registry import client_for, registry_errors

    experiment = f"{settings.registry.experiment}-drift"
    client_for(settings.registry)  # points mlflow at the configured tracking server
    # MLflow prints "View run ... at URL" on stdout when a run ends; stdout is reserved for the summary line.
    with (
        contextlib.redirect_stdout(sys.stderr),
        registry_errors(settings.registry, f"log the drift run to experiment '{experiment}'"),
    ):
        mlflow.set_experiment(experiment)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        with mlflow.start_run(run_name=f"drift-{stamp}") as run:
            metrics = {
                "drift_score": result.drift_score,
                "drift_detected": float(result.drift_detected),
                "n_current": float(result.n_current),
                "n_reference": float(result.n_reference),
                "duration_s": result.duration_s,
            }
            if result.top1_mean is not None and result.top1_p50 is not None:
                metrics |= {"top1_mean": result.top1_mean, "top1_p50": result.top1_p50}
            mlflow.log_metrics(metrics)
            mlflow.log_params(params)
            mlflow.set_tags({**tags, "drift_detected": str(result.drift_detected).lower()})
            mlflow.log_dict(result.to_dict(), RESULT_ARTIFACT)
            if html is not None:
                mlflow.log_text(html, REPORT_ARTIFACT)
            return str(run.info.run_id)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    settings = get_settings()

    if args.reference is not None:
        reference = Loaded(load_npy(args.reference, "reference"), {"reference_source": str(args.reference)})
    else:
        reference = reference_from_registry(settings, args.alias, args.cache_dir)
    if args.current is not None:
        current = Loaded(load_npy(args.current, "current"), {"current_source": str(args.current)})
    else:
        token = args.admin_token or settings.service.admin_token
        current = window_from_service(args.service_url, token, args.timeout_s)
    log.info("reference %s, current %s", reference.array.shape, current.array.shape)

    want_html = not args.no_html
    result, html = compute_drift(
        reference.array,
        current.array,
        method=args.method,
        html=want_html,
        max_rows=args.max_rows,
        index_version=reference.tags.get("index_version"),
        threads=args.threads,
    )
    if html is not None and args.html_out is not None:
        args.html_out.parent.mkdir(parents=True, exist_ok=True)
        args.html_out.write_text(html, encoding="utf-8")

    run_note = ""
    if not args.no_mlflow:
        params = {"method": result.method, "max_rows": str(args.max_rows), "window_size": str(result.window_size)}
        run_id = log_to_mlflow(settings, result, html, {**reference.tags, **current.tags}, params)
        run_note = f" mlflow_run={run_id}"
    print(f"drift_job: {result.summary()}{run_note}", flush=True)
    return EXIT_DRIFT if args.fail_on_drift and result.drift_detected else 0


if __name__ == "__main__":
    run_cli(main, name="drift_job")
