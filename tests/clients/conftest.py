"""Fixtures of the SDK tests: a scripted fake server, both client twins, and recorded sleeps.

No server runs here: every client talks to `httpx.MockTransport`. The `twin` fixture runs
each test once with `Client` and once with `AsyncClient` (through `asyncio.run`, so no
pytest-asyncio), which is how the twins are kept method-for-method alike.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
try:  # installed with the project (package-dir mapping) or with `pip install ./clients`
    import kava_client
except ImportError:  # a checkout whose install predates the mapping
    sys.path.insert(0, str(ROOT / "clients"))

import kava_client.async_client  # noqa: E402
import kava_client.client  # noqa: E402
from kava_client import AsyncClient, Client  # noqa: E402

Outcome = httpx.Response | type[httpx.TransportError] | Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Answers requests from a script: each outcome is a Response, a transport-error class to
    raise, or a function of the request. The last outcome repeats. Every request is kept."""

    def __init__(self, *outcomes: Outcome) -> None:
        assert outcomes, "script at least one outcome"
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, type) and issubclass(outcome, httpx.TransportError):
            raise outcome("scripted failure", request=request)
        if callable(outcome) and not isinstance(outcome, httpx.Response):
            return outcome(request)
        return outcome

    @property
    def request_ids(self) -> list[str | None]:
        return [r.headers.get("x-request-id") for r in self.requests]


class Twin:
    """Calls one client method on `Client` or `AsyncClient`, the same way for both."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def call(self, server: FakeServer, method: str, *args: Any, client: dict | None = None, **kwargs: Any) -> Any:
        transport = httpx.MockTransport(server)
        options = client or {}
        if self.kind == "sync":
            with Client(transport=transport, **options) as c:
                return getattr(c, method)(*args, **kwargs)

        async def go() -> Any:
            async with AsyncClient(transport=transport, **options) as c:
                return await getattr(c, method)(*args, **kwargs)

        return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest) -> Twin:
    return Twin(request.param)


@pytest.fixture
def server() -> type[FakeServer]:
    return FakeServer


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every retry wait, recorded instead of slept (both twins)."""
    waited: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(kava_client.client, "_sleep", waited.append)
    monkeypatch.setattr(kava_client.async_client, "_sleep", fake_async_sleep)
    return waited


@pytest.fixture(autouse=True)
def _no_kava_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own KAVA_BASE_URL / KAVA_API_KEY must not leak into the tests."""
    monkeypatch.delenv("KAVA_BASE_URL", raising=False)
    monkeypatch.delenv("KAVA_API_KEY", raising=False)


def solve_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "req-1",
        "answer": "42",
        "text": "The answer is: 42",
        "mode": "latent",
        "adapter": "gsm8k",
        "usage": {"prompt_tokens": 30, "latent_tokens": 24, "generated_tokens": 4, "forward_passes": 9},
        "timings_ms": {"queue": 1.0, "prefill": 2.0, "latent": 3.0, "decode": 4.0, "total": 10.0},
        "kv_cache_bytes": 123456,
    }
    body.update(overrides)
    return body


def error_response(status: int, error_type: str, message: str, *, param: str | None = None, **headers: str):
    return httpx.Response(
        status,
        json={"error": {"type": error_type, "message": message, "param": param}},
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


@pytest.fixture
def solve_ok() -> Callable[..., httpx.Response]:
    return lambda **overrides: httpx.Response(200, json=solve_json(**overrides))


@pytest.fixture
def error() -> Callable[..., httpx.Response]:
    return error_response
