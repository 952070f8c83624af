"""`Client`: the blocking SDK over `httpx.Client`.

Owns the synchronous transport and the send-and-sleep loop around `RetryState`. Everything
else (settings, bodies, parsing, error mapping, retry policy) is shared with `AsyncClient`
through `_base.py` and `_retry.py`, so the two stay method-for-method twins.

    from kava_client import Client
    with Client() as client:                       # KAVA_BASE_URL, KAVA_API_KEY
        print(client.solve("Tom has 3 apples and buys 4 more. How many apples does he have?").answer)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from kava_client._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    BaseClient,
    M,
    TimeoutTypes,
    adapter_path,
    solve_body,
)
from kava_client.errors import APIConnectionError
from kava_client.types import AdapterInfo, Mode, ModelsResponse, SolveResponse

__all__ = ["Client"]

_sleep = time.sleep  # module-level so tests can replace it


class Client(BaseClient):
    """Blocking client of a KaVa server.

    `base_url` defaults to `$KAVA_BASE_URL` then http://127.0.0.1:8000; `api_key` to
    `$KAVA_API_KEY` (sent as `Authorization: Bearer`). `timeout` (seconds or `httpx.Timeout`;
    None = none; default 180 s, past the server's 120 s deadline) applies per attempt and can be
    overridden on each call; `max_retries` retries connection errors, timeouts, 408, 429 and 5xx
    (not 501). `default_headers` go on every request. `with_options(...)` returns a copy with
    some of these changed that shares the connection pool. Pass `http_client` (which you then
    close) or `transport` (e.g. `httpx.MockTransport`) to control the connection.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
        *,
        default_headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, default_headers)
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both (give the transport to your http_client)")
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(transport=transport, timeout=self.timeout)

    # -- routes -------------------------------------------------------------------------------

    def solve(
        self,
        question: str,
        *,
        adapter: str | None = None,
        mode: Mode = "latent",
        max_new_tokens: int | None = None,
        num_iterations: int | None = None,
        return_latents: bool = False,
        timeout: TimeoutTypes | None = None,
        request_id: str | None = None,
    ) -> SolveResponse:
        """Ask one math question; `.answer` is the number as a string (None when none was found)."""
        body = solve_body(
            question,
            adapter=adapter,
            mode=mode,
            max_new_tokens=max_new_tokens,
            num_iterations=num_iterations,
            return_latents=return_latents,
        )
        return self._request("POST", "/v1/solve", SolveResponse, body=body, timeout=timeout, request_id=request_id)

    def models(self, *, timeout: TimeoutTypes | None = None, request_id: str | None = None) -> ModelsResponse:
        """The base model and the adapters loaded, with their M, T, dtype and device."""
        return self._request("GET", "/v1/adapters", ModelsResponse, timeout=timeout, request_id=request_id)

    def health(self, *, timeout: TimeoutTypes | None = None) -> bool:
        """Liveness: True on 200; False on 5xx or when the server cannot be reached. Never retried."""
        return self._probe("/health", timeout)

    def ready(self, *, timeout: TimeoutTypes | None = None) -> bool:
        """Readiness: True once the model is loaded and warm; False while loading, draining or down."""
        return self._probe("/ready", timeout)

    def load_adapter(
        self, name: str, path: str, *, timeout: TimeoutTypes | None = None, request_id: str | None = None
    ) -> AdapterInfo:
        """Load the adapter saved at `path` (a path on the server) under `name` (admin)."""
        body = {"name": name, "path": str(path)}
        return self._request(
            "POST", "/v1/adapters", AdapterInfo, body=body, timeout=timeout, request_id=request_id, unwrap="adapter"
        )

    def unload_adapter(self, name: str, *, timeout: TimeoutTypes | None = None, request_id: str | None = None) -> None:
        """Unload the adapter called `name` (admin)."""
        rid = self._new_request_id(request_id)
        self._check(self._send("DELETE", adapter_path(name), timeout=timeout, request_id=rid), rid)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool, unless it belongs to an `http_client` you passed in."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: dict[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        request_id: str | None = None,
        unwrap: str | None = None,
    ) -> M:
        rid = self._new_request_id(request_id)
        response = self._send(method, path, body=body, timeout=timeout, request_id=rid)
        return self._parse(response, model, rid, unwrap=unwrap)

    def _probe(self, path: str, timeout: TimeoutTypes | None) -> bool:
        rid = self._new_request_id(None)
        try:
            response = self._send("GET", path, timeout=timeout, request_id=rid, max_retries=0)
        except APIConnectionError:
            return False
        return self._probe_result(response, rid)

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        timeout: TimeoutTypes | None,
        request_id: str,
        max_retries: int | None = None,
    ) -> httpx.Response:
        """Send with retries; returns the last response (any status) or raises APIConnectionError."""
        request = self._build_request(self._http, method, path, body=body, timeout=timeout, request_id=request_id)
        retry = self._retry.start(max_retries=max_retries)
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as error:
                wait = retry.after_error(error)
                if wait is None:
                    raise self._connection_error(error, request, request_id) from error
            else:
                wait = retry.after_response(response)
                if wait is None:
                    return response
                response.close()
            _sleep(wait)
