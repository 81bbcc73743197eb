"""The outermost ASGI layer: what every response carries, and request bodies capped before anything parses them.

- `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and a `Content-Security-Policy` with
  `frame-ancestors 'none'` on every response (a page that sets its own policy keeps it, with `frame-ancestors`
  added if it lacks one), error responses from the server-error handler included.
- A body larger than `service.max_body_bytes` is refused with 413 and a JSON reason: by its `Content-Length`
  before a byte is read, or (chunked, no length) as soon as the bytes received pass the cap. Nothing downstream
  (JSON parsing, validation) ever sees it.
- Image uploads: a `multipart/form-data` POST to a path in `upload_paths` (`/search`: query images) may be as
  large as `upload_bytes` (every term an image at `inputs.max_image_bytes`); the route's own streamed cap then
  refuses a too-large file part with 413 and its reason. JSON bodies (base64 images included) keep
  `max_body_bytes`.
- While the service drains after SIGTERM, responses say `Connection: close`, so clients open their next request
  on a fresh connection (which the load balancer sends to another pod) instead of reusing this one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FRAME_ANCESTORS = "frame-ancestors 'none'"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class SurfaceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        draining: Callable[[], bool] = lambda: False,
        on_refused: Callable[[int], None] = lambda status: None,  # noqa: ARG005
        upload_paths: frozenset[str] = frozenset(),
        upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_paths = upload_paths
        self.upload_bytes = upload_bytes
        self.draining = draining
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(raw=message["headers"])
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                policy = headers.get("content-security-policy")
                if policy is None:
                    headers["Content-Security-Policy"] = FRAME_ANCESTORS
                elif "frame-ancestors" not in policy:
                    headers["Content-Security-Policy"] = f"{policy}; {FRAME_ANCESTORS}"
                if self.draining():
                    headers["Connection"] = "close"
            await send(message)

        request_headers = Headers(scope=scope)
        cap = self._cap(scope, request_headers)
        length = request_headers.get("content-length")
        if length is not None:
            if length.strip().isdigit() and int(length) > cap:
                await self._refuse(scope, send_with_headers, f"the request body is {int(length)} bytes", cap)
                return
            await self.app(scope, receive, send_with_headers)  # the server delivers no more than Content-Length
            return
        if "chunked" not in request_headers.get("transfer-encoding", "").lower():
            await self.app(scope, receive, send_with_headers)
            return
        # Chunked: read up to the cap first, then replay what was read to the app.
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > cap:
                await self._refuse(scope, send_with_headers, f"the request body passed {cap} bytes", cap)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send_with_headers)

    def _cap(self, scope: Scope, headers: Headers) -> int:
        """The body cap of this request: `upload_bytes` for a multipart upload to an upload path, else the rest's."""
        if (
            self.upload_bytes > self.max_body_bytes
            and scope.get("method") == "POST"
            and scope.get("path") in self.upload_paths
            and headers.get("content-type", "").lower().startswith("multipart/form-data")
        ):
            return self.upload_bytes
        return self.max_body_bytes

    async def _refuse(self, scope: Scope, send: Send, what: str, cap: int) -> None:
        self.on_refused(413)
        rid = Headers(scope=scope).get("x-request-id", "")
        rid = rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex[:16]
        body = json.dumps(
            {"detail": f"request body too large: {what}; the limit is {cap} bytes", "request_id": rid}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", rid.encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
