"""ASGI middleware: request id and arrival time on every request, and a last-resort 500.

Pure ASGI (not BaseHTTPMiddleware), so the app's `receive` still reports a client's
disconnect to the solve handler. It stamps `scope["state"]` with `request_id` (the
client's `X-Request-Id` when it is sane, else a new one) and `arrival`
(`time.perf_counter()`, the start of TTFT and E2E), adds `X-Request-Id` to every response,
and turns an exception nothing else handled into the error envelope with that id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import envelope

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
