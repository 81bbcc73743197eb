"""HTTP for the download stage: the retry policy, the zip fetch and concurrent, resumable image fetches.

Why asyncio + one `httpx.AsyncClient`: fetching 25K small images is waiting on the network, not computing.
One event loop keeps `concurrency` requests in flight over a shared, bounded connection pool, with no thread
per request; cancelling it (Ctrl-C, a killed job) stops every request at once. The CPU part (decoding each
image to verify it, writing the file) runs in the default thread pool via `asyncio.to_thread`, so a decode
never stalls the requests in flight. `concurrency` worker coroutines pull from one queue: memory stays
flat whatever the number of photos.

Retries: timeouts, connection errors, 5xx, 408 and 429 are retried with exponential backoff and jitter (a
`Retry-After` header is honoured up to the cap); other 4xx (a 404 is a photo that is gone) and bytes that
do not decode are final.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
from tqdm import tqdm

from clipsearch import __version__
from clipsearch.errors import DownloadError
from clipsearch.fileio import write_atomic
from clipsearch.images import ImageDecodeError, decode_image, is_valid_image_file

log = logging.getLogger(__name__)

USER_AGENT = f"clipsearch/{__version__} (+https://github.com/unsplash/datasets)"
RETRYABLE_STATUS = frozenset({408, 425, 429})
_CHUNK_BYTES = 1 << 20

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": the delay before retry n is in [b/2, b], b = backoff * 2**n.

    The random half spreads retries of many clients that failed together (a CDN hiccup) so they do not
    come back in lock-step; the fixed half keeps a minimum pause.
    """

    retries: int
    backoff_s: float
    max_backoff_s: float = 30.0

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay_s(self, failed_attempts: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait after `failed_attempts` (1 = the first try failed) before trying again."""
        base = min(self.max_backoff_s, self.backoff_s * (2 ** max(0, failed_attempts - 1)))
        delay = base / 2 + rng.uniform(0, base / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_backoff_s))
        return delay


def is_retryable_status(status: int) -> bool:
    """5xx and 408/425/429 are worth another try; any other status is the final answer."""
    return status >= 500 or status in RETRYABLE_STATUS


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header: a number of seconds or an HTTP date; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def offline_message(url: str, exc: BaseException) -> str:
    """The paragraph a person reads when the data set host cannot be reached."""
    return (
        f"Could not connect to {url} ({type(exc).__name__}: {str(exc) or 'no detail'}). This machine may be offline, "
        "or a firewall/proxy blocks the host. To run without internet, serve a copy of the Unsplash Lite zip "
        "on your network and point the pipeline at it with CLIPSEARCH_DATASET__URL=http://<mirror>/<file>.zip "
        "(or dataset.url in params.yaml). To try the whole loop offline on a generated fixture and a tiny "
        "model, run `make fixture-run`."
    )


# --- the zip ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipDownload:
    path: Path
    sha256: str
    bytes: int
    final_url: str  # after redirects: `latest` resolves to a versioned file name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def fetch_zip(
    url: str,
    dest: Path,
    *,
    policy: RetryPolicy,
    timeout_s: float,
    rng: random.Random | None = None,
    show_progress: bool = True,
) -> ZipDownload:
    """Stream `url` (redirects followed) to `<dest>.part`, hashing as it goes, then rename it to `dest`.

    Transient failures are retried from the start. Raises `DownloadError` with the offline paragraph when
    the host cannot be reached, or with the HTTP status when the server refuses.
    """
    rng = rng or random.Random()  # noqa: S311 (backoff jitter, not security)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: BaseException | None = None
    with httpx.Client(
        follow_redirects=True, timeout=httpx.Timeout(timeout_s), headers={"User-Agent": USER_AGENT}
    ) as client:
        for attempt in range(1, policy.attempts + 1):
            retry_after: float | None = None
            try:
                return _stream_to(client, url, dest, part, show_progress)
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if not is_retryable_status(status):
                    raise DownloadError(
                        f"{url} answered HTTP {status} {exc.response.reason_phrase}. Check dataset.url and "
                        "dataset.version in params.yaml (a pinned version looks like "
                        "https://unsplash.com/data/lite/1.2.1)."
                    ) from exc
                last_error = exc
                retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = exc
            part.unlink(missing_ok=True)
            if attempt < policy.attempts:
                delay = policy.delay_s(attempt, rng, retry_after)
                log.warning(
                    "fetching %s failed (%s); retry %d/%d in %.1fs", url, last_error, attempt, policy.retries, delay
                )
                time.sleep(delay)
    assert last_error is not None
    if isinstance(last_error, httpx.ConnectError | httpx.ConnectTimeout):
        raise DownloadError(offline_message(url, last_error)) from last_error
    raise DownloadError(
        f"Fetching {url} failed {policy.attempts} time(s); last error: {type(last_error).__name__}: "
        f"{last_error}. The server or the network is unstable: run the stage again later (raise "
        "dataset.timeout_s or dataset.retries for a slow link)."
    ) from last_error


def _stream_to(client: httpx.Client, url: str, dest: Path, part: Path, show_progress: bool) -> ZipDownload:
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", url) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length", 0)) or None
        with (
            part.open("wb") as fh,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="zip",
                disable=not show_progress,
                leave=False,
            ) as bar,
        ):
            for block in response.iter_bytes(_CHUNK_BYTES):
                fh.write(block)
                digest.update(block)
                size += len(block)
                bar.update(len(block))
        final_url = str(response.url)
    part.replace(dest)
    return ZipDownload(path=dest, sha256=digest.hexdigest(), bytes=size, final_url=final_url)


# --- images -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    photo_id: str
    url: str
    dest: Path


@dataclass(frozen=True)
class ImageOutcome:
    photo_id: str
    url: str
    status: Literal["fetched", "skipped", "failed"]
    error: str | None = None
    attempts: int = 0
    bytes: int = 0


@dataclass
class ImageBatchResult:
    outcomes: list[ImageOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failures(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def common_errors(self, n: int = 3) -> list[tuple[str, int]]:
        """The most frequent failure reasons (status codes and exception names, not per-URL detail)."""
        return Counter(_error_kind(o.error or "") for o in self.failures).most_common(n)


def _error_kind(error: str) -> str:
    return error.split(":", 1)[0]


async def fetch_image(
    client: httpx.AsyncClient,
    job: ImageJob,
    policy: RetryPolicy,
    rng: random.Random,
    sleep: Sleep = asyncio.sleep,
) -> ImageOutcome:
    """Fetch one image with retries, verify it decodes, write it as JPEG (`.part` then rename)."""
    error = "not attempted"
    for attempt in range(1, policy.attempts + 1):
        retry_after: float | None = None
        try:
            response = await client.get(job.url)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            error = f"{type(exc).__name__}: {str(exc) or 'no detail'}"
        else:
            if response.status_code == 200:
                try:
                    size = await asyncio.to_thread(_verify_and_write, response.content, job.dest)
                except ImageDecodeError as exc:
                    return ImageOutcome(job.photo_id, job.url, "failed", f"undecodable: {exc}", attempt)
                return ImageOutcome(job.photo_id, job.url, "fetched", None, attempt, size)
            error = f"HTTP {response.status_code}: {response.reason_phrase}"
            if not is_retryable_status(response.status_code):
                return ImageOutcome(job.photo_id, job.url, "failed", error, attempt)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if attempt < policy.attempts:
            await sleep(policy.delay_s(attempt, rng, retry_after))
    return ImageOutcome(job.photo_id, job.url, "failed", f"{error} (after {policy.attempts} attempts)", policy.attempts)


def _verify_and_write(data: bytes, dest: Path) -> int:
    decoded = decode_image(data)
    write_atomic(dest, decoded.jpeg, durable=False)
    return len(decoded.jpeg)


async def fetch_images(
    jobs: Sequence[ImageJob],
    *,
    concurrency: int,
    timeout_s: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    show_progress: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImageBatchResult:
    """Fetch every job's image unless a decodable file is already at `job.dest`; never raises per image."""
    rng = rng or random.Random()  # noqa: S311 (backoff jitter, not security)
    queue: asyncio.Queue[ImageJob] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    result = ImageBatchResult()
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    bar = tqdm(total=len(jobs), unit="img", desc="images", disable=not show_progress, smoothing=0.1)
    failed = [0]  # a cell the workers share (one event loop: no lock needed)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if job.dest.exists() and await asyncio.to_thread(is_valid_image_file, job.dest):
                outcome = ImageOutcome(job.photo_id, job.url, "skipped")
            else:
                outcome = await fetch_image(client, job, policy, rng)
            result.outcomes.append(outcome)
            if outcome.status == "failed":
                failed[0] += 1
                bar.set_postfix(failed=failed[0], refresh=False)
            bar.update(1)

    try:
        async with httpx.AsyncClient(
            follow_redirects=True,
            timeout=httpx.Timeout(timeout_s),
            limits=limits,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        ) as client:
            await asyncio.gather(*(worker(client) for _ in range(min(concurrency, max(1, len(jobs))))))
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    return result
