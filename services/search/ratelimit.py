"""Per-client rate limits on search (429 + Retry-After + a JSON reason), with the maintained `limits` library.

Two limits: every search counts against `service.rate_limit_search`; a search that will be re-ranked (a paid
Gemini call) also counts against the lower `service.rate_limit_rerank`. Counters live in a `limits` storage
(`service.rate_limit_storage_uri`, memory:// by default, so per replica) under a moving window.

Who the client is: the socket peer. Only when that peer is one of `service.trusted_proxies` is
`X-Forwarded-For` read, right to left, skipping trusted hops: the first untrusted address is the one our own
proxy saw connect. Entries further left were written by the client and are never believed, so nobody can
pick their own bucket by sending the header. (uvicorn must run with `--no-proxy-headers`, or it rewrites the
peer from the header itself before the app sees it.)
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Sequence

from fastapi import HTTPException, Request
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from clipsearch.settings import ServiceSettings
from services.search.telemetry import Metrics

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[IpNetwork]) -> str:
    """The client's address: the peer, or (behind a trusted proxy) the first untrusted X-Forwarded-For hop."""
    peer = peer or "unknown"
    peer_ip = _ip(peer)
    if not trusted or not forwarded_for or peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return peer  # our proxy wrote something that is not an address: do not guess
        if not any(hop_ip in net for net in trusted):
            return str(hop_ip)
    return peer  # every hop is one of ours


class RateLimited(HTTPException):
    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(429, detail=detail, headers={"Retry-After": str(retry_after_s)})


class RequestLimiter:
    """Checks (and counts) one search against the client's limits; raises `RateLimited` past one."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.enabled = settings.rate_limit_enabled
        self.search = parse(settings.rate_limit_search)
        self.rerank = parse(settings.rate_limit_rerank)
        self.trusted: list[IpNetwork] = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
        self._limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage_uri))
        self._metrics = metrics

    def client_of(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.trusted)

    def _retry_after(self, item: RateLimitItem, client: str, name: str) -> int:
        stats = self._limiter.get_window_stats(item, name, client)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def check(self, request: Request, *, reranked: bool) -> None:
        if not self.enabled:
            return
        client = self.client_of(request)
        if not self._limiter.hit(self.search, "search", client):
            self._metrics.rate_limited.labels(limit="search").inc()
            raise RateLimited(
                f"rate limit: at most {self.search} searches per client; retry later",
                self._retry_after(self.search, client, "search"),
            )
        if reranked and not self._limiter.hit(self.rerank, "rerank", client):
            self._metrics.rate_limited.labels(limit="rerank").inc()
            raise RateLimited(
                f"rate limit: at most {self.rerank} re-ranked searches per client; retry later, "
                "or search with rerank=off (CLIP order)",
                self._retry_after(self.rerank, client, "rerank"),
            )
