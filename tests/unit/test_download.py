"""Retry/backoff policy, per-image fetch with retries (over httpx.MockTransport), resume checks, run_cli."""

from __future__ import annotations

import asyncio
import io
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from PIL import Image

from clipsearch.cli_support import EXIT_ERROR, run_cli
from clipsearch.errors import ConfigError, DownloadError
from clipsearch.images import ImageDecodeError, decode_image, image_path, is_valid_image_file
from clipsearch.settings import Settings
from training.download import DownloadPaths, ensure_zip, image_jobs, remove_stale_parts
from training.fetch import (
    ImageJob,
    RetryPolicy,
    fetch_image,
    fetch_images,
    is_retryable_status,
    offline_message,
    parse_retry_after,
)


def _jpeg(width: int = 32, height: int = 24, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="JPEG")
    return out.getvalue()


class Recorder:
    """A fake `sleep` that records delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _run_fetch(handler, dest: Path, policy: RetryPolicy, sleep: Recorder | None = None):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            job = ImageJob("abcdefghijk", "http://img.test/photos/abcdefghijk.jpg?w=64", dest)
            return await fetch_image(client, job, policy, random.Random(0), sleep or Recorder())

    return asyncio.run(go())


# --- policy -----------------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(retries=6, backoff_s=0.5, max_backoff_s=4.0)
    rng = random.Random(1)
    for failed in range(1, 7):
        base = min(4.0, 0.5 * 2 ** (failed - 1))
        delays = [policy.delay_s(failed, rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base / 4  # jitter actually spreads retries


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=3, backoff_s=0.1, max_backoff_s=5.0)
    rng = random.Random(0)
    assert policy.delay_s(1, rng, retry_after_s=2.0) == 2.0
    assert policy.delay_s(1, rng, retry_after_s=600.0) == 5.0


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (500, True),
        (502, True),
        (503, True),
        (429, True),
        (408, True),
        (404, False),
        (403, False),
        (400, False),
        (410, False),
    ],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_offline_message_says_what_to_do() -> None:
    msg = offline_message("https://unsplash.com/data/lite/latest", httpx.ConnectError("Name or service not known"))
    assert "https://unsplash.com/data/lite/latest" in msg
    assert "offline" in msg
    assert "CLIPSEARCH_DATASET__URL" in msg


# --- one image --------------------------------------------------------------------------------------------


def test_transient_5xx_is_retried_then_written(tmp_path: Path) -> None:
    answers = iter([httpx.Response(500), httpx.Response(503), httpx.Response(200, content=_jpeg())])
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return next(answers)

    sleep = Recorder()
    dest = tmp_path / "abcdefghijk.jpg"
    outcome = _run_fetch(handler, dest, RetryPolicy(retries=4, backoff_s=1.0), sleep)
    assert outcome.status == "fetched"
    assert outcome.attempts == 3
    assert len(calls) == 3
    assert calls[0].endswith("?w=64")
    assert len(sleep.delays) == 2
    assert 0.5 <= sleep.delays[0] <= 1.0
    assert 1.0 <= sleep.delays[1] <= 2.0
    assert is_valid_image_file(dest)
    assert not dest.with_name(dest.name + ".part").exists()


def test_timeouts_are_retried(tmp_path: Path) -> None:
    state = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        state["n"] += 1
        if state["n"] == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, content=_jpeg())

    outcome = _run_fetch(handler, tmp_path / "a.jpg", RetryPolicy(retries=2, backoff_s=0.1))
    assert outcome.status == "fetched"
    assert outcome.attempts == 2


def test_404_is_final_without_retry(tmp_path: Path) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(404)

    sleep = Recorder()
    outcome = _run_fetch(handler, tmp_path / "a.jpg", RetryPolicy(retries=4, backoff_s=1.0), sleep)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith("HTTP 404")
    assert len(calls) == 1
    assert sleep.delays == []
    assert not (tmp_path / "a.jpg").exists()


def test_429_uses_retry_after(tmp_path: Path) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, content=_jpeg())])
    sleep = Recorder()
    outcome = _run_fetch(lambda _r: next(answers), tmp_path / "a.jpg", RetryPolicy(retries=2, backoff_s=0.1), sleep)
    assert outcome.status == "fetched"
    assert sleep.delays == [3.0]


def test_retries_exhausted_reports_last_error(tmp_path: Path) -> None:
    sleep = Recorder()
    outcome = _run_fetch(
        lambda _r: httpx.Response(502), tmp_path / "a.jpg", RetryPolicy(retries=2, backoff_s=0.1), sleep
    )
    assert outcome.status == "failed"
    assert outcome.attempts == 3
    assert outcome.error == "HTTP 502: Bad Gateway (after 3 attempts)"
    assert len(sleep.delays) == 2


def test_undecodable_body_fails_and_writes_nothing(tmp_path: Path) -> None:
    body = _jpeg()[:40]  # a JPEG header and nothing else
    outcome = _run_fetch(
        lambda _r: httpx.Response(200, content=body), tmp_path / "a.jpg", RetryPolicy(retries=3, backoff_s=0.1)
    )
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith("undecodable")
    assert list(tmp_path.iterdir()) == []


# --- a batch: resume ---------------------------------------------------------------------------------------


def test_batch_skips_valid_files_and_refetches_broken_ones(tmp_path: Path) -> None:
    ids = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"]
    (tmp_path / "aaaaaaaaaaa.jpg").write_bytes(_jpeg(color="blue"))  # verified: kept
    (tmp_path / "bbbbbbbbbbb.jpg").write_bytes(_jpeg()[:100])  # truncated: refetched
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(request.url.path)
        return httpx.Response(200, content=_jpeg(color="green"))

    jobs = [ImageJob(i, f"http://img.test/{i}.jpg", image_path(tmp_path, i)) for i in ids]
    result = asyncio.run(
        fetch_images(
            jobs,
            concurrency=2,
            timeout_s=5,
            policy=RetryPolicy(1, 0.01),
            show_progress=False,
            transport=httpx.MockTransport(handler),
        )
    )
    assert sorted(requested) == ["/bbbbbbbbbbb.jpg", "/ccccccccccc.jpg"]
    assert result.count("skipped") == 1
    assert result.count("fetched") == 2
    assert result.failures == []
    assert all(is_valid_image_file(image_path(tmp_path, i)) for i in ids)


def test_image_jobs_resize_and_flag_missing_urls(tmp_path: Path) -> None:
    photos = pd.DataFrame(
        {"photo_id": ["aaaaaaaaaaa", "bbbbbbbbbbb"], "photo_image_url": ["https://i.test/p?ixid=1", pd.NA]}
    ).astype("string")
    jobs, missing = image_jobs(photos, tmp_path, 320)
    assert [(j.photo_id, j.url, j.dest.name) for j in jobs] == [
        ("aaaaaaaaaaa", "https://i.test/p?ixid=1&w=320", "aaaaaaaaaaa.jpg")
    ]
    assert missing == [{"photo_id": "bbbbbbbbbbb", "url": "", "error": "no photo_image_url in the data set"}]


def test_remove_stale_parts(tmp_path: Path) -> None:
    (tmp_path / "a.jpg.part").write_bytes(b"half")
    (tmp_path / "b.jpg").write_bytes(_jpeg())
    assert remove_stale_parts(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b.jpg"]


# --- image helpers -----------------------------------------------------------------------------------------


def test_decode_image_keeps_jpeg_and_converts_other_formats() -> None:
    jpeg = _jpeg()
    assert decode_image(jpeg).jpeg == jpeg
    png = io.BytesIO()
    Image.new("RGBA", (10, 8), (0, 255, 0, 128)).save(png, format="PNG")
    decoded = decode_image(png.getvalue())
    assert decoded.source_format == "PNG"
    assert (decoded.width, decoded.height) == (10, 8)
    assert Image.open(io.BytesIO(decoded.jpeg)).format == "JPEG"
    with pytest.raises(ImageDecodeError):
        decode_image(b"")
    with pytest.raises(ImageDecodeError):
        decode_image(b"<html>rate limited</html>")


def test_image_path_refuses_unsafe_ids(tmp_path: Path) -> None:
    assert image_path(tmp_path, "Ab_-9xYz012") == tmp_path / "Ab_-9xYz012.jpg"
    for bad in ("../x", "a/b", "", "a.b"):
        with pytest.raises(ValueError, match="safe file name"):
            image_path(tmp_path, bad)


# --- run_cli -----------------------------------------------------------------------------------------------


def test_run_cli_turns_expected_errors_into_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def boom() -> int:
        raise DownloadError("the host is unreachable; set CLIPSEARCH_DATASET__URL")

    with pytest.raises(SystemExit) as exc:
        run_cli(boom, name="training.download")
    assert exc.value.code == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.strip() == "training.download: error: the host is unreachable; set CLIPSEARCH_DATASET__URL"


def test_run_cli_passes_the_return_code_and_lets_bugs_raise() -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: 3)
    assert exc.value.code == 3

    def bug() -> int:
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_cli(bug)


def test_a_malformed_pinned_sha256_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(dataset={"url": "http://127.0.0.1:9/lite.zip", "sha256": "abc", "data_dir": tmp_path})
    with pytest.raises(ConfigError, match="not a sha256"):
        ensure_zip(settings.dataset, DownloadPaths.from_settings(settings), show_progress=False)
