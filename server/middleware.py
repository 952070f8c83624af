"""ASGI middleware: request id and arrival time, the checks that need no body, a last-resort 500.

Pure ASGI (not BaseHTTPMiddleware), so the app's `receive` still reports a client's
disconnect to the solve handler. `RequestIdMiddleware` (outermost) stamps `scope["state"]`
with `request_id` (the client's `X-Request-Id` when it is sane, else a new one) and
`arrival` (`time.perf_counter()`, the start of TTFT and E2E), adds `X-Request-Id` to every
response, and turns an exception nothing else handled into the error envelope with that id.
`GuardMiddleware` (inside it) answers before the app reads the body: 401 for a missing or
wrong key on `/v1/*` (the admin key on POST/DELETE `/v1/adapters` when one is set), 415 for
a `/v1/*` body that is not JSON, 413 for a body over `max_body_bytes` (by `Content-Length`,
or counted while it streams in; the app then gets the body it read).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ApiError, envelope, not_json, too_large, unauthorized

log = logging.getLogger(__name__)

HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), "")
        rid = given if _SANE.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["arrival"] = rid, time.perf_counter()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request id %s)", scope.get("method"), scope.get("path"), rid)
            if started:
                raise
            response = envelope(500, "internal_error", f"internal server error (request id {rid})")
            await response(scope, receive, send_with_id)


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_admin(method: str, path: str) -> bool:
    """The routes that change what is loaded: POST /v1/adapters, DELETE /v1/adapters/{name}."""
    return (method == "POST" and path.rstrip("/") == "/v1/adapters") or (
        method == "DELETE" and path.startswith("/v1/adapters/")
    )


def key_matches(headers: Headers, key: SecretStr) -> bool:
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""
    auth = headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
    return secrets.compare_digest(given.encode(), key.get_secret_value().encode())


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class GuardMiddleware:
    """Key, media type and body size, before anything parses the body. `on_reject(scope,
    status)` counts each rejection."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: SecretStr | None,
        admin_api_key: SecretStr | None,
        max_body_bytes: int,
        on_reject: Callable[[Scope, int], None] | None = None,
    ):
        self.app = app
        self.api_key, self.admin_api_key = api_key, admin_api_key
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    def _head_problem(self, method: str, path: str, headers: Headers) -> ApiError | None:
        if path == "/v1" or path.startswith("/v1/"):
            key = (self.admin_api_key or self.api_key) if is_admin(method, path) else self.api_key
            if key is not None and not key_matches(headers, key):
                return unauthorized()
            content_type = headers.get("content-type")
            if method in BODY_METHODS and content_type is not None and not _is_json(content_type):
                return not_json(content_type)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return too_large(int(length), self.max_body_bytes)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        problem = self._head_problem(method, path, Headers(scope=scope))
        if problem is None and method in BODY_METHODS:
            body, problem = await self._read_body(receive)
            if body is None and problem is None:
                return  # the client went away while sending
            receive = _replay(body, receive)
        if problem is not None:
            if self.on_reject is not None:
                self.on_reject(scope, problem.status)
            response = envelope(problem.status, problem.type, problem.message, problem.param, problem.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, ApiError | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", too_large(None, self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the buffered body over once, then the real one (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
