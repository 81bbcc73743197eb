"""Thumbnails for the re-ranker: local dir or URL with ?w=, resized JPEG, bounded LRU, never a path from a bad id."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clipsearch.rerank.lru import LruCache
from clipsearch.rerank.thumbnails import ThumbnailError, ThumbnailProvider, make_thumbnail, sized_url
from clipsearch.types import Candidate


def jpeg(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


def cand(photo_id: str, url: str = "https://images.example.test/photo-1?ixid=abc") -> Candidate:
    return Candidate(photo_id=photo_id, score=0.3, rank=1, image_url=url)


class FakeImageHost:
    """httpx MockTransport handler: serves a JPEG per path, records requests, can be slow or fail."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.delay_s = 0.0
        self.status = 200
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.status != 200:
            return httpx.Response(self.status, content=b"nope")
        return httpx.Response(200, content=jpeg(640, 480), headers={"Content-Type": "image/jpeg"})


@pytest.fixture
def host() -> FakeImageHost:
    return FakeImageHost()


@pytest.fixture
def provider(tmp_path: Path, host: FakeImageHost) -> Iterator[ThumbnailProvider]:
    p = ThumbnailProvider(
        thumbnail_px=128,
        cache_size=8,
        images_dir=tmp_path,
        http_client=httpx.Client(transport=httpx.MockTransport(host)),
        fetch_timeout_s=1.0,
    )
    yield p
    p.close()


def test_local_image_is_resized_to_a_small_jpeg_and_cached(
    provider: ThumbnailProvider, tmp_path: Path, host: FakeImageHost
) -> None:
    (tmp_path / "abcDEF_12-x.jpg").write_bytes(jpeg(800, 600))
    thumb = provider.get(cand("abcDEF_12-x"))
    with Image.open(io.BytesIO(thumb)) as img:
        assert img.format == "JPEG"
        assert img.size == (128, 96)
    (tmp_path / "abcDEF_12-x.jpg").unlink()
    assert provider.get(cand("abcDEF_12-x")) == thumb  # from the cache
    assert host.requests == []  # the local file was used, never the URL


def test_url_fetch_sets_width_and_keeps_other_params(provider: ThumbnailProvider, host: FakeImageHost) -> None:
    thumb = provider.get(cand("remote1"))
    assert max(Image.open(io.BytesIO(thumb)).size) == 128
    (request,) = host.requests
    assert request.url.params["w"] == "128"
    assert request.url.params["ixid"] == "abc"


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "a/b", "..", "", "x" * 65, "id with space", "é", "abc\n"])
def test_unsafe_photo_id_is_never_used(provider: ThumbnailProvider, host: FakeImageHost, bad_id: str) -> None:
    with pytest.raises(ThumbnailError):
        provider.get(cand(bad_id))
    assert provider.get_many([cand(bad_id)], timeout_s=0.5) == {bad_id: None}
    assert host.requests == []


def test_failed_fetch_is_reported_as_missing(provider: ThumbnailProvider, host: FakeImageHost) -> None:
    host.status = 404
    with pytest.raises(ThumbnailError, match="404"):
        provider.get(cand("gone1"))
    assert provider.get_many([cand("gone2")], timeout_s=0.5) == {"gone2": None}


def test_not_an_image_is_a_thumbnail_error() -> None:
    with pytest.raises(ThumbnailError, match="not a decodable image"):
        make_thumbnail(b"<html>rate limited</html>", 64)


def test_png_source_becomes_jpeg_and_small_images_are_not_upscaled() -> None:
    thumb = make_thumbnail(jpeg(50, 20, fmt="PNG"), 128)
    with Image.open(io.BytesIO(thumb)) as img:
        assert (img.format, img.size) == ("JPEG", (50, 20))


def test_get_many_returns_within_its_timeout_and_fills_the_cache_later(
    provider: ThumbnailProvider, host: FakeImageHost, tmp_path: Path
) -> None:
    (tmp_path / "local1.jpg").write_bytes(jpeg(300, 300))
    host.delay_s = 0.4
    t0 = time.monotonic()
    got = provider.get_many([cand("local1"), cand("slow1"), cand("slow2")], timeout_s=0.1)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.3
    assert got["local1"] is not None
    assert got["slow1"] is None
    assert got["slow2"] is None
    deadline = time.monotonic() + 3
    while ("slow1" not in provider.cache or "slow2" not in provider.cache) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "slow1" in provider.cache
    assert "slow2" in provider.cache


def test_concurrent_requests_for_one_photo_share_one_fetch(provider: ThumbnailProvider, host: FakeImageHost) -> None:
    host.delay_s = 0.2
    results: list[dict[str, bytes | None]] = []

    def worker() -> None:
        results.append(provider.get_many([cand("shared1")], timeout_s=2.0))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r["shared1"] for r in results)
    assert len(host.requests) == 1


def test_thumbnail_cache_is_bounded(host: FakeImageHost) -> None:
    p = ThumbnailProvider(thumbnail_px=64, cache_size=2, http_client=httpx.Client(transport=httpx.MockTransport(host)))
    try:
        for i in range(3):
            p.get(cand(f"p{i}"))
        assert len(p.cache) == 2
        assert "p0" not in p.cache
    finally:
        p.close()


def test_sized_url_rejects_non_http_schemes() -> None:
    assert sized_url("https://h.test/a?w=1000&q=80", 64) == "https://h.test/a?w=64&q=80"
    with pytest.raises(ThumbnailError):
        sized_url("file:///etc/passwd", 64)


def test_lru_cache_evicts_least_recently_used_and_zero_disables() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    assert (cache.hits, cache.misses) == (3, 0)
    off: LruCache[str, int] = LruCache(0)
    off.put("a", 1)
    assert off.get("a") is None
    assert len(off) == 0
    with pytest.raises(ValueError, match="max_size must be >= 0"):
        LruCache(-1)
