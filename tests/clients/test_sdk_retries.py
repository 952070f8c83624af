"""Retries: which outcomes are retried, how long the client waits, and what is raised at the end."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from kava_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Client,
    RetryPolicy,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from kava_client._retry import is_retryable_status, parse_retry_after


def test_503_with_retry_after_is_retried_then_succeeds(twin, server, solve_ok, error, sleeps):
    fake = server(error(503, "overloaded", "queue full (64 waiting)", Retry_After="3"), solve_ok())
    response = twin.call(fake, "solve", "What is 6 * 7?")
    assert response.answer == "42"
    assert sleeps == [3.0]  # exactly the server's Retry-After, not a jittered backoff
    assert len(fake.requests) == 2
    assert fake.request_ids[0] == fake.request_ids[1]  # one logical request, one id across retries


def test_422_is_not_retried(twin, server, error, sleeps):
    fake = server(error(422, "invalid_request", "question: must not be empty", param="question"))
    with pytest.raises(UnprocessableEntityError) as info:
        twin.call(fake, "solve", " ")
    assert len(fake.requests) == 1 and sleeps == []
    assert info.value.param == "question"


def test_retries_exhausted_raise_service_unavailable(twin, server, error, sleeps):
    fake = server(error(503, "draining", "server is draining", Retry_After="1"))
    with pytest.raises(ServiceUnavailableError) as info:
        twin.call(fake, "solve", "q")
    assert len(fake.requests) == 3  # the call and its default 2 retries
    assert sleeps == [1.0, 1.0]
    assert info.value.status == 503 and info.value.retry_after == 1.0
    assert info.value.error_type == "draining"


def test_connection_error_is_retried_then_raises_api_connection_error(twin, server, sleeps):
    fake = server(httpx.ConnectError)
    with pytest.raises(APIConnectionError) as info:
        twin.call(fake, "solve", "q", request_id="rid-7")
    assert not isinstance(info.value, APITimeoutError)
    assert len(fake.requests) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0  # full jitter under the doubling cap
    assert info.value.request_id == "rid-7"
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_connection_error_then_success(twin, server, solve_ok, sleeps):
    fake = server(httpx.ConnectError, httpx.RemoteProtocolError, solve_ok())
    assert twin.call(fake, "solve", "q").answer == "42"
    assert len(fake.requests) == 3 and len(sleeps) == 2


def test_timeout_is_retried_then_raises_api_timeout_error(twin, server):
    fake = server(httpx.ReadTimeout)
    with pytest.raises(APITimeoutError):
        twin.call(fake, "solve", "q", client={"max_retries": 1})
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses_are_retried(twin, server, solve_ok, error, status):
    fake = server(error(status, "x", "try again"), solve_ok())
    assert twin.call(fake, "solve", "q").answer == "42"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501])
def test_other_statuses_are_not_retried(twin, server, error, status):
    fake = server(error(status, "x", "no"))
    with pytest.raises(Exception):  # noqa: B017 - the class per status is checked in test_sdk_errors
        twin.call(fake, "solve", "q")
    assert len(fake.requests) == 1


def test_max_retries_zero_sends_once(twin, server, error, sleeps):
    fake = server(error(503, "overloaded", "busy"))
    with pytest.raises(ServiceUnavailableError):
        twin.call(fake, "solve", "q", client={"max_retries": 0})
    assert len(fake.requests) == 1 and sleeps == []


def test_huge_retry_after_is_capped(twin, server, solve_ok, error, sleeps):
    fake = server(error(429, "rate_limited", "slow down", Retry_After="3600"), solve_ok())
    twin.call(fake, "solve", "q")
    assert sleeps == [60.0]


def test_probes_are_never_retried(twin, server, sleeps):
    fake = server(httpx.ConnectError)
    assert twin.call(fake, "health") is False
    assert len(fake.requests) == 1 and sleeps == []


def test_backoff_is_exponential_with_full_jitter():
    top = RetryPolicy(rand=lambda: 1.0)
    assert [top.backoff(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert RetryPolicy(rand=lambda: 0.0).backoff(3) == 0.0
    assert top.delay(0, retry_after=2.5) == 2.5


def test_negative_max_retries_is_rejected():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


def test_retryable_status_table():
    assert [s for s in range(400, 600) if is_retryable_status(s)] == [408, 429] + [
        s for s in range(500, 600) if s != 501
    ]


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(10.0)


def test_retries_over_a_real_socket(twin):
    """The same request object is re-sent over a real connection after a 503 (no mock transport)."""
    seen: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append((self.headers["X-Request-Id"], self.rfile.read(int(self.headers["Content-Length"]))))
            if len(seen) == 1:
                payload, status, extra = b'{"error": {"type": "overloaded", "message": "busy"}}', 503, "Retry-After"
            else:
                payload, status, extra = json.dumps({"id": "r", "answer": "8", "text": "8"}).encode(), 200, None
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if extra:
                self.send_header(extra, "0")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
        if twin.kind == "sync":
            with Client(base_url=base_url, timeout=5) as client:
                answer = client.solve("3 + 5?").answer
        else:

            async def go() -> str | None:
                async with AsyncClient(base_url=base_url, timeout=5) as client:
                    return (await client.solve("3 + 5?")).answer

            answer = asyncio.run(go())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert answer == "8"
    assert len(seen) == 2 and seen[0] == seen[1]  # same id, same body
