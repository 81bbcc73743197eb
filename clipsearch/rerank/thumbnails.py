"""Small JPEG thumbnails of candidates, for the LLM re-ranker.

Gemini bills images by tile, and a 128 px thumbnail is enough to judge "a red bicycle" against a photo, so
each candidate is sent as one small JPEG. The bytes come from the local image cache (`<dir>/<photo_id>.jpg`,
written by the download stage) when there is one, else from the candidate's `image_url` with Unsplash's
`?w=<px>` resizing. Thumbnails are cached per photo in a bounded LRU, so a popular photo is read once.

A thumbnail that cannot be had within the time budget is reported as missing (None), never as an error:
the re-ranker then sends that candidate by id alone.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError

from clipsearch.images import image_path, is_safe_photo_id
from clipsearch.rerank.lru import LruCache
from clipsearch.settings import RerankSettings
from clipsearch.types import Candidate

log = logging.getLogger(__name__)

THUMBNAIL_JPEG_QUALITY = 80
MAX_SOURCE_BYTES = 10 * 1024 * 1024  # a thumbnail source larger than this is not a thumbnail source
DEFAULT_FETCH_TIMEOUT_S = 2.0
DEFAULT_MAX_WORKERS = 8
# One rule for ids that may name a file, shared with the download stage and the service.
is_valid_photo_id = is_safe_photo_id


class ThumbnailError(ValueError):
    """One candidate's thumbnail could not be made (not found, not an image, fetch failed)."""


def make_thumbnail(data: bytes, max_side: int) -> bytes:
    """Decode `data` and return a JPEG whose longest side is at most `max_side` (never upscaled)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max_side, max_side))  # JPEG: let libjpeg decode at 1/2..1/8 scale, much faster
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"not a decodable image ({type(exc).__name__}: {exc})") from exc
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=THUMBNAIL_JPEG_QUALITY, optimize=True)
    return out.getvalue()


def sized_url(image_url: str, width: int) -> str:
    """`image_url` with `w=<width>` set (Unsplash's imgix resizing), keeping its other query parameters."""
    url = httpx.URL(image_url)
    if url.scheme not in ("http", "https"):
        raise ThumbnailError(f"image_url scheme {url.scheme!r} is not http(s)")
    return str(url.copy_set_param("w", str(width)))


class ThumbnailProvider:
    """Candidate -> small JPEG bytes, from a local images dir or the image URL, cached in a bounded LRU.

    `get_many` fetches a batch concurrently on a bounded thread pool and returns within its timeout; work
    still running then carries on in the background and fills the cache for the next query. Concurrent
    requests for the same photo share one fetch.
    """

    def __init__(
        self,
        *,
        thumbnail_px: int,
        cache_size: int,
        images_dir: Path | None = None,
        http_client: httpx.Client | None = None,
        fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        self.thumbnail_px = thumbnail_px
        self.images_dir = images_dir
        self.fetch_timeout_s = fetch_timeout_s
        self._cache: LruCache[str, bytes] = LruCache(cache_size)
        self._owns_client = http_client is None
        self._http = http_client or httpx.Client(timeout=fetch_timeout_s, follow_redirects=True)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="thumbnail")
        self._in_flight: dict[str, Future[bytes]] = {}
        self._lock = threading.RLock()  # a done-callback may run inline while _submit holds it

    @classmethod
    def from_settings(cls, settings: RerankSettings, images_dir: Path | None = None) -> ThumbnailProvider:
        return cls(
            thumbnail_px=settings.thumbnail_px,
            cache_size=settings.thumbnail_cache_size,
            images_dir=images_dir,
        )

    @property
    def cache(self) -> LruCache[str, bytes]:
        return self._cache

    def get(self, candidate: Candidate) -> bytes:
        """The thumbnail of one candidate (cached). Raises ThumbnailError when it cannot be made."""
        if not is_valid_photo_id(candidate.photo_id):
            raise ThumbnailError(f"photo_id {candidate.photo_id!r} is not a valid photo id")
        cached = self._cache.get(candidate.photo_id)
        if cached is not None:
            return cached
        thumb = make_thumbnail(self._source_bytes(candidate), self.thumbnail_px)
        self._cache.put(candidate.photo_id, thumb)
        return thumb

    def get_many(self, candidates: Sequence[Candidate], timeout_s: float) -> dict[str, bytes | None]:
        """Thumbnails by photo_id for `candidates`, waiting at most `timeout_s`; None where none was had."""
        out: dict[str, bytes | None] = {}
        futures: dict[str, Future[bytes]] = {}
        for cand in candidates:
            if cand.photo_id in out or cand.photo_id in futures:
                continue
            if not is_valid_photo_id(cand.photo_id):
                out[cand.photo_id] = None
                continue
            cached = self._cache.get(cand.photo_id)
            if cached is not None:
                out[cand.photo_id] = cached
            else:
                futures[cand.photo_id] = self._submit(cand)
        if futures:
            wait(futures.values(), timeout=max(0.0, timeout_s), return_when=ALL_COMPLETED)
        for photo_id, fut in futures.items():
            if not fut.done():
                log.debug(
                    "thumbnail for %s not ready within %.3fs; sending the candidate without it", photo_id, timeout_s
                )
                out[photo_id] = None
                continue
            exc = fut.exception()
            if exc is not None:
                log.debug("no thumbnail for %s: %s", photo_id, exc)
                out[photo_id] = None
            else:
                out[photo_id] = fut.result()
        return out

    def _submit(self, candidate: Candidate) -> Future[bytes]:
        with self._lock:
            fut = self._in_flight.get(candidate.photo_id)
            if fut is None:
                fut = self._pool.submit(self.get, candidate)
                self._in_flight[candidate.photo_id] = fut
                fut.add_done_callback(functools.partial(self._forget, candidate.photo_id))
            return fut

    def _forget(self, photo_id: str, _done: Future[bytes]) -> None:
        with self._lock:
            self._in_flight.pop(photo_id, None)

    def _source_bytes(self, candidate: Candidate) -> bytes:
        if self.images_dir is not None:
            path = image_path(self.images_dir, candidate.photo_id)
            try:
                return path.read_bytes()
            except FileNotFoundError:
                pass  # not downloaded (yet): fall through to the URL
            except OSError as exc:
                log.debug("cannot read %s: %s", path, exc)
        if not candidate.image_url:
            raise ThumbnailError(f"photo {candidate.photo_id} has no local image and no image_url")
        return self._fetch(sized_url(candidate.image_url, self.thumbnail_px))

    def _fetch(self, url: str) -> bytes:
        try:
            with self._http.stream("GET", url, timeout=self.fetch_timeout_s) as resp:
                if resp.status_code != 200:
                    raise ThumbnailError(f"GET {url} answered HTTP {resp.status_code}")
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_SOURCE_BYTES:
                        raise ThumbnailError(f"GET {url} is larger than {MAX_SOURCE_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ThumbnailError(f"GET {url} failed ({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        """Stop the fetch pool (without waiting for stragglers) and close the HTTP client we created."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_client:
            self._http.close()
