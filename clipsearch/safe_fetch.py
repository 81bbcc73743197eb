"""Fetch a query image from a URL a user typed, without letting that URL reach inside our network (SSRF).

Rules, each a refusal with a reason (`FetchError`: 422, or 413 for a body over the byte cap):

- http(s) only, no user:password@ in the URL;
- the host is resolved here and *every* address it resolves to must be public: loopback, private (RFC 1918,
  unique-local), link-local (169.254.0.0/16 holds the cloud metadata service), carrier-grade NAT, multicast,
  reserved and unspecified addresses are refused, IPv4-mapped IPv6 included - unless `inputs.fetch_allow_hosts`
  names the host, the address or a network holding it (tests allow 127.0.0.1 for the loopback fixture server);
- the connection goes to the address that was checked (the URL's host is replaced by it, the Host header and TLS
  SNI/certificate check keep the name), so a second DNS answer cannot swap in another address (DNS rebinding);
- redirects are followed by hand, at most `fetch_max_redirects`, each Location checked by the same rules;
- connect and read timeouts per operation, and a total deadline over the whole fetch (a server that trickles
  one byte per read timeout is cut off too);
- the body is streamed and counted: a Content-Length over the cap is refused before reading, and reading stops
  the moment the count passes it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import httpx

from clipsearch.errors import ClipsearchError
from clipsearch.settings import InputSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

USER_AGENT = "clipsearch-image-fetch/1 (+query by example image)"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_resolver_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")


class FetchError(ClipsearchError):
    """An image URL that was not (or could not be) fetched; `status` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 422, field: str = "image_url") -> None:
        super().__init__(f"{field}: {message}")
        self.reason = message
        self.status = status
        self.field = field

    def for_field(self, field: str) -> FetchError:
        return FetchError(self.reason, status=self.status, field=field)


@dataclass(frozen=True)
class FetchPolicy:
    """How an image URL may be fetched (from `InputSettings`)."""

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    total_timeout_s: float = 10.0
    max_redirects: int = 3
    max_bytes: int = 10 * 1024 * 1024
    allow_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: InputSettings) -> FetchPolicy:
        return cls(
            connect_timeout_s=settings.fetch_connect_timeout_s,
            read_timeout_s=settings.fetch_read_timeout_s,
            total_timeout_s=settings.fetch_total_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            max_bytes=settings.max_image_bytes,
            allow_hosts=tuple(settings.fetch_allow_hosts),
        )

    def allowlist(self) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in self.allow_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return frozenset(names), tuple(networks)


@dataclass(frozen=True)
class Fetched:
    """The body of a successful fetch and where it finally came from."""

    data: bytes
    url: str  # the final URL (after redirects)
    content_type: str | None
    redirects: int


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA), via the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address a user's URL may reach, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


class SafeFetcher:
    """Fetches image URLs by the rules in the module docstring. Thread-safe; one per process is enough."""

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or FetchPolicy()
        self._names, self._networks = self.policy.allowlist()
        self._resolver = resolver
        self._clock = clock
        self._client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would connect elsewhere than the checked address
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "image/jpeg, image/png, image/webp, image/gif",
                "Accept-Encoding": "identity",  # bytes counted on the wire are the bytes decoded: no gzip bombs
            },
        )

    def close(self) -> None:
        self._client.close()

    # -- checks -----------------------------------------------------------------------------------------
    def _allowed(self, host: str, ip: IPAddress) -> bool:
        return host.rstrip(".").lower() in self._names or any(ip in net for net in self._networks)

    def _resolve(self, host: str, port: int, deadline: float) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        wait = max(0.01, min(self.policy.connect_timeout_s, deadline - self._clock()))
        try:
            found = _resolver_pool.submit(self._resolver, host, port).result(timeout=wait)
        except FutureTimeout:
            raise FetchError(f"resolving {host} took longer than {wait:.1f} s") from None
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"the host {host} could not be resolved ({exc})") from None
        addresses = []
        for raw in found:
            try:
                addresses.append(ipaddress.ip_address(raw.split("%", 1)[0]))
            except ValueError:
                continue
        if not addresses:
            raise FetchError(f"the host {host} resolves to no address")
        return addresses

    def check_url(self, url: str, deadline: float | None = None) -> tuple[httpx.URL, IPAddress]:
        """Parse and vet one URL; return it and the (checked) address to connect to."""
        deadline = deadline if deadline is not None else self._clock() + self.policy.total_timeout_s
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise FetchError(f"not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https"):
            raise FetchError(f"only http and https URLs are fetched, not {parsed.scheme or 'a relative URL'}")
        if parsed.userinfo:
            raise FetchError("URLs with a user name or password are not fetched")
        host = parsed.host
        if not host:
            raise FetchError("the URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = self._resolve(host, port, deadline)
        for ip in addresses:
            if self._allowed(host, ip):
                continue
            why = blocked_reason(ip)
            if why is not None:
                shown = host if str(ip) == host.strip("[]") else f"{host} resolves to {ip}, which is"
                raise FetchError(
                    f"{shown} {why}; image URLs must point to the public internet "
                    "(an operator can allow a host with inputs.fetch_allow_hosts)"
                )
        return parsed, addresses[0]

    # -- fetching ---------------------------------------------------------------------------------------
    def fetch(self, url: str) -> Fetched:
        """The body of `url` (after at most `max_redirects` checked redirects), or a `FetchError`."""
        policy = self.policy
        deadline = self._clock() + policy.total_timeout_s
        current = url
        for hop in range(policy.max_redirects + 1):
            parsed, ip = self.check_url(current, deadline)
            response = self._open(parsed, ip, deadline)
            try:
                if response.status_code in REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(f"the server answered {response.status_code} without a Location")
                    current = str(parsed.join(location))
                    continue
                if response.status_code != 200:
                    raise FetchError(f"the server answered HTTP {response.status_code}, not an image")
                data = self._read(response, deadline)
                return Fetched(
                    data=data, url=str(parsed), content_type=response.headers.get("content-type"), redirects=hop
                )
            finally:
                response.close()
        raise FetchError(f"more than {policy.max_redirects} redirects; not followed further")

    def _open(self, url: httpx.URL, ip: IPAddress, deadline: float) -> httpx.Response:
        left = deadline - self._clock()
        if left <= 0:
            raise FetchError(f"took longer than {self.policy.total_timeout_s:g} s in all")
        host_header = url.netloc.decode("ascii")
        target = url.copy_with(host=str(ip))
        extensions: dict[str, Any] = {}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host  # TLS: the name is verified against the certificate
        timeout = httpx.Timeout(
            connect=min(self.policy.connect_timeout_s, left),
            read=min(self.policy.read_timeout_s, left),
            write=min(self.policy.read_timeout_s, left),
            pool=min(self.policy.connect_timeout_s, left),
        )
        request = self._client.build_request(
            "GET", target, headers={"Host": host_header}, timeout=timeout, extensions=extensions
        )
        try:
            return self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise FetchError(f"{url.host} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"could not fetch from {url.host} ({type(exc).__name__}: {exc})") from None

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        cap = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise FetchError(f"the image is {declared} bytes; the limit is {cap} bytes", status=413)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchError(f"the server sent a {encoding}-encoded body; images are fetched uncompressed")
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_bytes(64 * 1024):  # identity only (checked above): bytes as sent
                total += len(chunk)
                if total > cap:
                    raise FetchError(f"the image is more than {cap} bytes; the limit is {cap} bytes", status=413)
                if self._clock() > deadline:
                    raise FetchError(f"took longer than {self.policy.total_timeout_s:g} s in all")
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise FetchError("the server stopped sending before the image was complete (read timeout)") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"the download broke off ({type(exc).__name__}: {exc})") from None
        return b"".join(chunks)
