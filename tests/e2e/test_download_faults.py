"""The real download stage (`python -m training.download`, a subprocess) against the local fixture server.

Each test runs in its own working directory with settings from CLIPSEARCH_* env vars only, and asserts
on what a person sees (exit code, stderr), on the files written, and on the server's request counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clipsearch.images import is_valid_image_file
from clipsearch_devtools.http_server import ZIP_PATH, Faults
from tests.conftest import ServedFixture

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _env(url: str, **dataset: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    env["PYTHONPATH"] = str(REPO)
    env["CLIPSEARCH_PARAMS"] = "no-params.yaml"  # defaults + env only
    settings: dict[str, object] = {
        "url": url,
        "concurrency": 8,
        "retries": 2,
        "backoff_s": 0.01,
        "timeout_s": 10,
        "image_width": 96,
        **dataset,
    }
    for key, value in settings.items():
        env[f"CLIPSEARCH_DATASET__{key.upper()}"] = str(value)
    return env


def _cmd() -> list[str]:
    return [sys.executable, "-m", "training.download", "--no-progress"]


def _run(workdir: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(), cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def _report(workdir: Path) -> dict:
    return json.loads((workdir / "reports" / "download.json").read_text())


def test_happy_path_then_rerun_fetches_nothing(fixture_server: ServedFixture, tmp_path: Path) -> None:
    info, server = fixture_server.info, fixture_server.server
    pinned = hashlib.sha256(info.zip_path.read_bytes()).hexdigest()
    env = _env(server.redirect_url, limit=120, sha256=pinned)  # `latest` redirects, like unsplash.com

    done = _run(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert server.count(ZIP_PATH) == 1
    assert server.total_photo_requests() == 120

    lite = tmp_path / "data" / "lite"
    photos = pd.read_parquet(lite / "photos.parquet")
    assert photos["photo_id"].tolist() == info.photo_ids[:120]
    conversions = pd.read_parquet(lite / "conversions.parquet")
    assert set(conversions["photo_id"]) <= set(info.photo_ids[:120])
    assert len(conversions) > 0
    assert str(conversions["converted_at"].dtype) == "datetime64[ns, UTC]"
    dataset = json.loads((lite / "dataset.json").read_text())
    assert dataset["zip_sha256"] == pinned
    assert dataset["counts"]["photos"] == 120
    assert dataset["resolved_url"] == server.zip_url

    images = sorted((tmp_path / "data" / "images").iterdir())
    assert [p.stem for p in images] == sorted(info.photo_ids[:120])
    for path in images[:10]:
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.width == 96
    report = _report(tmp_path)
    assert report["ok"]
    assert report["images"]["fetched"] == 120
    assert report["failures"] == []

    server.requests.clear()
    again = _run(tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert server.count(ZIP_PATH) == 0
    assert server.total_photo_requests() == 0
    assert _report(tmp_path)["images"]["skipped_existing"] == 120


def test_killed_midway_resumes_without_refetching(fixture_server: ServedFixture, tmp_path: Path) -> None:
    info, server = fixture_server.info, fixture_server.server
    images_dir = tmp_path / "data" / "images"
    server.set_faults(Faults(image_delay_s=0.05))
    env = _env(server.zip_url, concurrency=4)
    proc = subprocess.Popen(_cmd(), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(images_dir.glob("*.jpg"))) < 40:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = sorted(p.stem for p in images_dir.glob("*.jpg"))
    assert 40 <= len(kept) < info.n_photos, "the kill should land mid-download"
    assert all(is_valid_image_file(images_dir / f"{pid}.jpg") for pid in kept)  # never a half-written .jpg
    broken = kept[0]
    (images_dir / f"{broken}.jpg").write_bytes(b"\xff\xd8\xff garbage")  # a damaged file must be refetched

    server.reset()
    done = _run(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert server.count(ZIP_PATH) == 0  # the zip recorded in dataset.json is reused
    assert server.photo_requests(broken) == 1
    assert all(server.photo_requests(pid) == 0 for pid in kept[1:])
    assert server.total_photo_requests() == info.n_photos - len(kept) + 1
    report = _report(tmp_path)
    assert report["images"]["skipped_existing"] == len(kept) - 1
    assert report["images"]["fetched"] == info.n_photos - len(kept) + 1
    assert not list(images_dir.glob("*.part"))
    assert len(list(images_dir.glob("*.jpg"))) == info.n_photos


def test_bad_images_are_reported_not_fatal(fixture_server: ServedFixture, tmp_path: Path) -> None:
    info, server = fixture_server.info, fixture_server.server
    corrupt, gone, flaky = info.photo_ids[3], info.photo_ids[7], info.photo_ids[11]
    server.set_faults(Faults(corrupt={corrupt}, not_found={gone}, transient={flaky: 2}))
    done = _run(tmp_path, _env(server.zip_url, limit=60, max_failure_ratio=0.05))
    assert done.returncode == 0, done.stderr

    report = _report(tmp_path)
    errors = {f["photo_id"]: f["error"] for f in report["failures"]}
    assert set(errors) == {corrupt, gone}
    assert errors[corrupt].startswith("undecodable")
    assert errors[gone].startswith("HTTP 404")
    assert all(f["url"].endswith("?w=96") for f in report["failures"])
    assert report["images"] == {**report["images"], "fetched": 58, "failed": 2, "retried": 1}
    assert server.photo_requests(gone) == 1  # a 404 is not retried
    assert server.photo_requests(flaky) == 3  # two 500s, then the image
    images_dir = tmp_path / "data" / "images"
    assert is_valid_image_file(images_dir / f"{flaky}.jpg")
    assert not (images_dir / f"{corrupt}.jpg").exists()


def test_too_many_failures_fail_the_stage(fixture_server: ServedFixture, tmp_path: Path) -> None:
    info, server = fixture_server.info, fixture_server.server
    server.set_faults(Faults(not_found=set(info.photo_ids[:5])))
    done = _run(tmp_path, _env(server.zip_url, limit=50, max_failure_ratio=0.02))
    assert done.returncode == 2
    assert "5 of 50 images failed (10.0%), above dataset.max_failure_ratio=2.0%" in done.stderr
    assert "HTTP 404 (5x)" in done.stderr
    assert "download.json" in done.stderr
    assert "Traceback" not in done.stderr
    report = _report(tmp_path)
    assert report["ok"] is False
    assert len(report["failures"]) == 5


def test_truncated_zip_stops_with_a_clear_message(fixture_server: ServedFixture, tmp_path: Path) -> None:
    server = fixture_server.server
    data = fixture_server.info.zip_path.read_bytes()
    server.set_faults(Faults(zip_bytes=data[: len(data) // 2]))
    done = _run(tmp_path, _env(server.zip_url))
    assert done.returncode == 2
    assert "unsplash-lite.zip is not a readable zip" in done.stderr
    assert "truncated or corrupt" in done.stderr
    assert "Traceback" not in done.stderr
    assert server.total_photo_requests() == 0

    server.reset()  # the mirror is fixed: the next run fetches the zip again (it was never verified)
    again = _run(tmp_path, _env(server.zip_url, limit=10))
    assert again.returncode == 0, again.stderr
    assert server.count(ZIP_PATH) == 1


def test_wrong_sha256_stops_and_deletes_the_zip(fixture_server: ServedFixture, tmp_path: Path) -> None:
    server = fixture_server.server
    actual = hashlib.sha256(fixture_server.info.zip_path.read_bytes()).hexdigest()
    done = _run(tmp_path, _env(server.zip_url, sha256="0" * 64))
    assert done.returncode == 2
    assert f"has sha256 {actual}, but dataset.sha256 expects {'0' * 64}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "lite" / "unsplash-lite.zip").exists()


def test_unreachable_host_gives_the_offline_message(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/lite.zip"
    done = _run(tmp_path, _env(url, retries=1))
    assert done.returncode == 2
    assert f"Could not connect to {url}" in done.stderr
    assert "may be offline" in done.stderr
    assert "CLIPSEARCH_DATASET__URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_http_error_for_the_zip_names_the_status(fixture_server: ServedFixture, tmp_path: Path) -> None:
    url = fixture_server.server.base_url + "/data/lite/9.9.9"
    done = _run(tmp_path, _env(url))
    assert done.returncode == 2
    assert f"{url} answered HTTP 404" in done.stderr
    assert "Traceback" not in done.stderr
