"""DVC stage `download`: Unsplash Lite zip -> typed parquet tables -> verified images.

    python -m training.download                        # settings from params.yaml + CLIPSEARCH_* env vars
    CLIPSEARCH_DATASET__URL=http://127.0.0.1:8765/lite.zip python -m training.download   # a local mirror

Writes (see docs/ARCHITECTURE.md): `<data_dir>/lite/unsplash-lite.zip`, `<data_dir>/lite/<kind>.parquet`,
`<data_dir>/lite/dataset.json`, `<data_dir>/images/<photo_id>.jpg`, and `<reports>/download.json`.

Every step resumes: a zip that was verified before (pinned sha256, or the sha256 recorded in dataset.json
for the same URL) is not fetched again, and an image already on disk that decodes is not fetched again.
Individual images may fail (photos get removed from Unsplash); the stage fails only when the share of
failed images is above `dataset.max_failure_ratio`, and lists every failure in the report either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
from pydantic import ValidationError

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.errors import ConfigError, DownloadError
from clipsearch.fileio import PART_SUFFIX, write_atomic
from clipsearch.images import image_path
from clipsearch.settings import DatasetSettings, Settings, get_settings
from clipsearch.unsplash import LiteTables, list_shards, photo_image_url, read_lite
from training.fetch import ImageBatchResult, ImageJob, RetryPolicy, fetch_images, fetch_zip, sha256_file

log = logging.getLogger("training.download")

ZIP_NAME = "unsplash-lite.zip"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_VERSION_IN_PATH = re.compile(r"(?<![\d.])(\d+\.\d+\.\d+)(?![\d.])")


@dataclass(frozen=True)
class DownloadPaths:
    """Where the stage writes, derived from settings (the layout in docs/ARCHITECTURE.md)."""

    lite_dir: Path
    zip_path: Path
    dataset_json: Path
    images_dir: Path
    report: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadPaths:
        data_dir = settings.dataset.data_dir
        lite_dir = data_dir / "lite"
        return cls(
            lite_dir=lite_dir,
            zip_path=lite_dir / ZIP_NAME,
            dataset_json=lite_dir / "dataset.json",
            images_dir=data_dir / "images",
            report=settings.evaluate.output_dir / "download.json",
        )


@dataclass(frozen=True)
class ZipState:
    sha256: str
    bytes: int
    final_url: str
    reused: bool
    seconds: float


def ensure_zip(dataset: DatasetSettings, paths: DownloadPaths, *, show_progress: bool = True) -> ZipState:
    """A verified zip at `paths.zip_path`: reused when it is known-good, else fetched (and checked if pinned)."""
    started = time.perf_counter()
    pinned = dataset.sha256.strip().lower()
    if pinned and not _SHA256_HEX.fullmatch(pinned):
        raise ConfigError(
            f"dataset.sha256 is {dataset.sha256!r}, not a sha256 (64 hex characters). Copy the checksum of the "
            "release you pin from the CHANGELOG of github.com/unsplash/datasets, or leave it empty."
        )
    if paths.zip_path.is_file():
        actual = sha256_file(paths.zip_path)
        recorded = _read_json(paths.dataset_json)
        known_good = (
            actual == pinned
            if pinned
            else (recorded.get("url") == dataset.url and recorded.get("zip_sha256") == actual)
        )
        if known_good:
            log.info("reusing %s (sha256 %s)", paths.zip_path, actual[:12])
            return ZipState(
                sha256=actual,
                bytes=paths.zip_path.stat().st_size,
                final_url=str(recorded.get("resolved_url") or dataset.url),
                reused=True,
                seconds=time.perf_counter() - started,
            )
        log.info("%s is not the verified zip for %s; fetching it again", paths.zip_path, dataset.url)

    log.info("fetching %s", dataset.url)
    fetched = fetch_zip(
        dataset.url,
        paths.zip_path,
        policy=RetryPolicy(dataset.retries, dataset.backoff_s),
        timeout_s=dataset.timeout_s,
        show_progress=show_progress,
    )
    if pinned and fetched.sha256 != pinned:
        paths.zip_path.unlink(missing_ok=True)  # never leave a wrong zip where the next run would look
        raise DownloadError(
            f"The zip from {dataset.url} has sha256 {fetched.sha256}, but dataset.sha256 expects {pinned}. "
            "Either dataset.sha256 belongs to another release than dataset.url/dataset.version (update one "
            "to match; each release's checksum is in the CHANGELOG of github.com/unsplash/datasets), or the "
            "server/mirror sent a damaged file (fetch it again). The file was deleted."
        )
    return ZipState(
        sha256=fetched.sha256,
        bytes=fetched.bytes,
        final_url=fetched.final_url,
        reused=False,
        seconds=time.perf_counter() - started,
    )


def write_tables(zip_path: Path, paths: DownloadPaths, limit: int | None) -> LiteTables:
    """Parse the zip (photos cut to `limit`, the rest filtered to those photos) and write parquet tables."""
    tables = read_lite(zip_path, limit=limit)
    tables.save_parquet(paths.lite_dir)
    return tables


def image_jobs(photos: pd.DataFrame, images_dir: Path, width: int) -> tuple[list[ImageJob], list[dict[str, str]]]:
    """One job per photo with an image URL; photos without one are returned as failures right away."""
    jobs: list[ImageJob] = []
    missing: list[dict[str, str]] = []
    for photo_id, url in zip(photos["photo_id"], photos["photo_image_url"], strict=True):
        if pd.isna(url) or not str(url).strip():
            missing.append({"photo_id": str(photo_id), "url": "", "error": "no photo_image_url in the data set"})
            continue
        jobs.append(ImageJob(str(photo_id), photo_image_url(str(url), width), image_path(images_dir, str(photo_id))))
    return jobs, missing


def remove_stale_parts(images_dir: Path) -> int:
    """Delete half-written `*.jpg.part` files a killed run left behind; return how many."""
    stale = list(images_dir.glob(f"*{PART_SUFFIX}"))
    for part in stale:
        part.unlink(missing_ok=True)
    return len(stale)


def run_download(settings: Settings, *, show_progress: bool = True) -> dict[str, Any]:
    """Run the whole stage; return the report (also written to `reports/download.json`).

    Raises `DownloadError` / `DataFormatError` with a message for people on anything that stops the stage.
    """
    started = time.perf_counter()
    dataset = settings.dataset
    paths = DownloadPaths.from_settings(settings)

    zip_state = ensure_zip(dataset, paths, show_progress=show_progress)

    t0 = time.perf_counter()
    tables = write_tables(paths.zip_path, paths, dataset.limit)
    tables_s = time.perf_counter() - t0
    record = _dataset_record(dataset, paths, zip_state, tables)
    _write_json(paths.dataset_json, record)
    log.info(
        "Unsplash Lite %s (asked for %s; zip sha256 %s) from %s",
        record["resolved_version"] or "of unknown version",
        dataset.version,
        zip_state.sha256[:12],
        zip_state.final_url,
    )
    log.info("tables: %s", tables.counts())

    paths.images_dir.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_parts(paths.images_dir):
        log.info("removed %d half-written image file(s) from an interrupted run", stale)
    jobs, missing = image_jobs(tables.photos, paths.images_dir, dataset.image_width)
    result = asyncio.run(
        fetch_images(
            jobs,
            concurrency=dataset.concurrency,
            timeout_s=dataset.timeout_s,
            policy=RetryPolicy(dataset.retries, dataset.backoff_s),
            show_progress=show_progress,
        )
    )

    report = _report(dataset, zip_state, tables, result, missing, tables_s, time.perf_counter() - started)
    _write_json(paths.report, report)
    images = report["images"]
    log.info(
        "images: %d fetched, %d already on disk, %d failed of %d (%.1f img/s); report: %s",
        images["fetched"],
        images["skipped_existing"],
        images["failed"],
        images["total"],
        report["images_per_second"],
        paths.report,
    )
    if not report["ok"]:
        raise DownloadError(_too_many_failures(report, result, paths.report))
    return report


def _dataset_record(
    dataset: DatasetSettings, paths: DownloadPaths, zip_state: ZipState, tables: LiteTables
) -> dict[str, Any]:
    match = _VERSION_IN_PATH.search(urlsplit(zip_state.final_url).path) or _VERSION_IN_PATH.search(
        urlsplit(dataset.url).path
    )
    return {
        "url": dataset.url,
        "resolved_url": zip_state.final_url,
        "version": dataset.version,
        "resolved_version": match.group(1) if match else None,
        "zip_sha256": zip_state.sha256,
        "zip_bytes": zip_state.bytes,
        "shards": {kind: [s.member for s in shards] for kind, shards in list_shards(paths.zip_path).items()},
        "limit": dataset.limit,
        "image_width": dataset.image_width,
        "counts": tables.counts(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _report(
    dataset: DatasetSettings,
    zip_state: ZipState,
    tables: LiteTables,
    result: ImageBatchResult,
    missing: list[dict[str, str]],
    tables_s: float,
    total_s: float,
) -> dict[str, Any]:
    failures = missing + [{"photo_id": o.photo_id, "url": o.url, "error": o.error or ""} for o in result.failures]
    total = len(tables.photos)
    ratio = len(failures) / total if total else 0.0
    fetched = result.count("fetched")
    return {
        "url": dataset.url,
        "resolved_url": zip_state.final_url,
        "zip_sha256": zip_state.sha256,
        "zip_reused": zip_state.reused,
        "counts": tables.counts(),
        "image_width": dataset.image_width,
        "images": {
            "total": total,
            "fetched": fetched,
            "skipped_existing": result.count("skipped"),
            "failed": len(failures),
            "bytes_fetched": sum(o.bytes for o in result.outcomes),
            "retried": sum(1 for o in result.outcomes if o.attempts > 1),
        },
        "failure_ratio": round(ratio, 6),
        "max_failure_ratio": dataset.max_failure_ratio,
        "ok": ratio <= dataset.max_failure_ratio,
        "failures": sorted(failures, key=lambda f: f["photo_id"]),
        "images_per_second": round(fetched / result.seconds, 2) if result.seconds > 0 else 0.0,
        "seconds": {
            "zip": round(zip_state.seconds, 3),
            "tables": round(tables_s, 3),
            "images": round(result.seconds, 3),
            "total": round(total_s, 3),
        },
    }


def _too_many_failures(report: dict[str, Any], result: ImageBatchResult, report_path: Path) -> str:
    images = report["images"]
    common = "; ".join(f"{kind} ({n}x)" for kind, n in result.common_errors()) or "see the report"
    hint = ""
    if any(kind in {"ConnectError", "ConnectTimeout"} for kind, _ in result.common_errors()):
        hint = (
            " The image host could not be reached: this machine may be offline; serve the images from a "
            "local mirror whose URLs the zip's photo_image_url points at."
        )
    return (
        f"{images['failed']} of {images['total']} images failed ({report['failure_ratio']:.1%}), above "
        f"dataset.max_failure_ratio={report['max_failure_ratio']:.1%}. Most common errors: {common}. "
        f"Every failure is listed in {report_path}. Run the stage again to retry only the missing images "
        f"(verified ones are kept); raise dataset.max_failure_ratio if those photos are gone for good.{hint}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n", durable=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.download",
        description="Fetch Unsplash Lite (zip, tables, images). Configure with params.yaml or CLIPSEARCH_DATASET__* "
        "environment variables (e.g. CLIPSEARCH_DATASET__URL, CLIPSEARCH_DATASET__LIMIT).",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid settings (params.yaml or CLIPSEARCH_* environment variables): {exc}. Fix the value named above."
        ) from exc
    run_download(settings, show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main, name="training.download")
