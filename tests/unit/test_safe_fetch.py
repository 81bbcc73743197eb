"""Image URLs are fetched by rules: http(s), public addresses after DNS (and after redirects), capped, timed out."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from clipsearch.safe_fetch import FetchError, FetchPolicy, SafeFetcher, blocked_reason

PUBLIC = "93.184.216.34"


def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:  # noqa: ARG001
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


def mock_fetcher(handler, table=None, **policy) -> SafeFetcher:
    return SafeFetcher(
        FetchPolicy(**policy),
        resolver=resolver(table or {"img.example": [PUBLIC]}),
        transport=httpx.MockTransport(handler),
    )


def ok(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
    return httpx.Response(200, content=b"JPEGDATA", headers={"content-type": "image/jpeg"})


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", "not a public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
    ],
)
def test_non_public_addresses_are_named(address: str, why: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


def test_public_addresses_pass() -> None:
    assert blocked_reason(ipaddress.ip_address(PUBLIC)) is None
    assert blocked_reason(ipaddress.ip_address("2606:4700::1111")) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://img.example/a.jpg", "only http and https"),
        ("gopher://img.example/", "only http and https"),
        ("http://user:pw@img.example/a.jpg", "user name or password"),
        ("http://127.0.0.1/a.jpg", "loopback"),
        ("http://[::1]:8080/a.jpg", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.5/a.jpg", "private"),
        ("http://internal.example/a.jpg", "resolves to 10.9.8.7, which is a private"),
        ("http://metadata.example/", "resolves to 169.254.169.254"),
        ("http://nowhere.example/", "could not be resolved"),
    ],
)
def test_refused_urls_never_connect(url: str, fragment: str) -> None:
    calls: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return ok(request)

    table = {"img.example": [PUBLIC], "internal.example": ["10.9.8.7"], "metadata.example": ["169.254.169.254"]}
    fetcher = mock_fetcher(record, table)
    with pytest.raises(FetchError) as info:
        fetcher.fetch(url)
    assert fragment in str(info.value)
    assert info.value.status == 422
    assert str(info.value).startswith("image_url: ")
    assert calls == []


def test_any_private_answer_refuses_the_host() -> None:
    """A name answering a public and a private address (a rebinding setup) is refused, not raced."""
    fetcher = mock_fetcher(ok, {"twofaced.example": [PUBLIC, "127.0.0.1"]})
    with pytest.raises(FetchError, match=r"127\.0\.0\.1"):
        fetcher.fetch("http://twofaced.example/a.jpg")


def test_connection_goes_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(request)

    fetched = mock_fetcher(record).fetch("https://img.example:8443/p/a.jpg?w=400")
    assert fetched.data == b"JPEGDATA"
    assert fetched.redirects == 0
    (req,) = seen
    assert req.url.host == PUBLIC
    assert req.url.port == 8443
    assert req.url.path == "/p/a.jpg"
    assert req.headers["host"] == "img.example:8443"
    assert req.extensions["sni_hostname"] == "img.example"
    assert req.headers["accept-encoding"] == "identity"


def test_redirects_are_rechecked_and_capped() -> None:
    def to_metadata(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    with pytest.raises(FetchError, match="link-local"):
        mock_fetcher(to_metadata).fetch("http://img.example/a.jpg")

    def to_private_name(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(301, headers={"location": "http://internal.example/x"})

    with pytest.raises(FetchError, match="private"):
        mock_fetcher(to_private_name, {"img.example": [PUBLIC], "internal.example": ["192.168.0.2"]}).fetch(
            "http://img.example/a.jpg"
        )

    hops: list[str] = []

    def loop(request: httpx.Request) -> httpx.Response:
        hops.append(str(request.url))
        return httpx.Response(302, headers={"location": f"/hop{len(hops)}"})

    with pytest.raises(FetchError, match="more than 2 redirects"):
        mock_fetcher(loop, max_redirects=2).fetch("http://img.example/start")
    assert len(hops) == 3

    def once(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(307, headers={"location": "/final.jpg"})
        return ok(request)

    fetched = mock_fetcher(once).fetch("http://img.example/start")
    assert fetched.redirects == 1
    assert fetched.url.endswith("/final.jpg")


def test_byte_cap_by_header_and_while_streaming() -> None:
    def declared(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, content=b"x" * 2000)  # Content-Length: 2000

    with pytest.raises(FetchError) as info:
        mock_fetcher(declared, max_bytes=1000).fetch("http://img.example/a.jpg")
    assert info.value.status == 413
    assert "2000 bytes" in str(info.value)

    def streamed(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, content=iter([b"x" * 600] * 10))  # chunked: no Content-Length

    with pytest.raises(FetchError) as info:
        mock_fetcher(streamed, max_bytes=1000).fetch("http://img.example/a.jpg")
    assert info.value.status == 413
    assert "more than 1000 bytes" in str(info.value)


def test_errors_and_compressed_bodies_are_refused() -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        mock_fetcher(lambda r: httpx.Response(404, content=b"gone")).fetch("http://img.example/a.jpg")  # noqa: ARG005
    with pytest.raises(FetchError, match="gzip"):
        mock_fetcher(lambda r: httpx.Response(200, content=iter([b".."]), headers={"content-encoding": "gzip"})).fetch(  # noqa: ARG005
            "http://img.example/a.jpg"
        )


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the fetcher gave up first: the point
            self._answer()

    def _answer(self) -> None:
        if self.path == "/slow-headers":
            time.sleep(1.0)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        if self.path == "/trickle":
            time.sleep(1.0)  # then never the rest
        else:
            self.wfile.write(b"x" * 90)


@pytest.fixture
def loopback() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loopback_needs_the_allowlist(loopback: str) -> None:
    with pytest.raises(FetchError, match="loopback"):
        SafeFetcher(FetchPolicy()).fetch(loopback + "/fast")
    for allow in (("127.0.0.1",), ("127.0.0.0/8",)):
        fetched = SafeFetcher(FetchPolicy(allow_hosts=allow)).fetch(loopback + "/fast")
        assert fetched.data == b"x" * 100


def test_read_timeouts_end_slow_servers(loopback: str) -> None:
    fetcher = SafeFetcher(FetchPolicy(allow_hosts=("127.0.0.1",), read_timeout_s=0.2, total_timeout_s=5))
    with pytest.raises(FetchError, match="did not answer in time"):
        fetcher.fetch(loopback + "/slow-headers")
    with pytest.raises(FetchError, match="read timeout"):
        fetcher.fetch(loopback + "/trickle")
