"""When to try a request again and how long to wait: the one retry policy of both clients.

Owns which outcomes are retried (connection errors and timeouts; 408, 429, 503 and every
other 5xx except 501), exponential backoff with full jitter, and `Retry-After`. `Client` and
`AsyncClient` run the same tiny loop around a `RetryState` and differ only in how they send
and sleep. Does not own the exceptions raised once retries run out (see `errors.py`).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

logger = logging.getLogger("kava_client")

# 501 Not Implemented will not change on a second try; every other 5xx may.
_RETRYABLE_4XX = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    """True for 408, 429 and 5xx other than 501."""
    return status in _RETRYABLE_4XX or (500 <= status < 600 and status != 501)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, overridden by the server's `Retry-After`.

    Wait before retry n (0-based): `Retry-After` when the response has one (capped at
    `max_retry_after`), otherwise uniform(0, min(max_delay, initial_delay * 2**n)).
    """

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries!r}: must be an integer >= 0 (0 disables retries)")

    def backoff(self, retry: int) -> float:
        """Full-jitter delay before retry number `retry` (0-based)."""
        return self.rand() * min(self.max_delay, self.initial_delay * 2**retry)

    def delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(retry)

    def start(self, *, max_retries: int | None = None) -> RetryState:
        """Bookkeeping for one call; `max_retries` overrides the policy's for that call."""
        return RetryState(self, self.max_retries if max_retries is None else max_retries)


class RetryState:
    """One call's retries. After each attempt the client asks: wait this long and retry, or stop (None)."""

    def __init__(self, policy: RetryPolicy, max_retries: int) -> None:
        self.policy = policy
        self.max_retries = max_retries
        self.retries = 0  # retries already scheduled

    def after_response(self, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying this response, or None to hand it back as it is."""
        if not is_retryable_status(response.status_code):
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return self._schedule(f"HTTP {response.status_code}", retry_after, response.request)

    def after_error(self, error: httpx.TransportError) -> float | None:
        """Seconds to wait before retrying after a transport error, or None when retries are spent."""
        return self._schedule(type(error).__name__, None, _request_of(error))

    def _schedule(self, reason: str, retry_after: float | None, request: httpx.Request | None) -> float | None:
        if self.retries >= self.max_retries:
            return None
        wait = self.policy.delay(self.retries, retry_after)
        self.retries += 1
        target = f"{request.method} {request.url.path}" if request is not None else "request"
        logger.info(
            "retrying %s in %.2fs after %s (retry %d of %d)", target, wait, reason, self.retries, self.max_retries
        )
        return wait


def _request_of(error: httpx.TransportError) -> httpx.Request | None:
    try:
        return error.request
    except RuntimeError:  # httpx raises when the error was created without a request
        return None
