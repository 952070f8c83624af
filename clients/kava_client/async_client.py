"""`AsyncClient`: the asyncio twin of `Client` over `httpx.AsyncClient`.

Same methods, same arguments, same return types and exceptions as `Client`; only sending and
sleeping are awaited. Settings, bodies, parsing, error mapping and the retry policy come from
`_base.py` and `_retry.py`.

    from kava_client import AsyncClient
    async with AsyncClient() as client:
        response = await client.solve("Tom has 3 apples and buys 4 more. How many apples does he have?")
"""

from __future__ import annotations

import asyncio
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

__all__ = ["AsyncClient"]


async def _sleep(seconds: float) -> None:  # module-level so tests can replace it
    await asyncio.sleep(seconds)


class AsyncClient(BaseClient):
    """Asynchronous client of a KaVa server; see `Client` for the arguments."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
        *,
        default_headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, default_headers)
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both (give the transport to your http_client)")
        self._owns_http = http_client is None
        self._http = (
            http_client if http_client is not None else httpx.AsyncClient(transport=transport, timeout=self.timeout)
        )

    # -- routes -------------------------------------------------------------------------------

    async def solve(
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
        return await self._request(
            "POST", "/v1/solve", SolveResponse, body=body, timeout=timeout, request_id=request_id
        )

    async def models(self, *, timeout: TimeoutTypes | None = None, request_id: str | None = None) -> ModelsResponse:
        """The base model and the adapters loaded, with their M, T, dtype and device."""
        return await self._request("GET", "/v1/adapters", ModelsResponse, timeout=timeout, request_id=request_id)

    async def health(self, *, timeout: TimeoutTypes | None = None) -> bool:
        """Liveness: True on 200; False on 5xx or when the server cannot be reached. Never retried."""
        return await self._probe("/health", timeout)

    async def ready(self, *, timeout: TimeoutTypes | None = None) -> bool:
        """Readiness: True once the model is loaded and warm; False while loading, draining or down."""
        return await self._probe("/ready", timeout)

    async def load_adapter(
        self, name: str, path: str, *, timeout: TimeoutTypes | None = None, request_id: str | None = None
    ) -> AdapterInfo:
        """Load the adapter saved at `path` (a path on the server) under `name` (admin)."""
        body = {"name": name, "path": str(path)}
        return await self._request(
            "POST", "/v1/adapters", AdapterInfo, body=body, timeout=timeout, request_id=request_id, unwrap="adapter"
        )

    async def unload_adapter(
        self, name: str, *, timeout: TimeoutTypes | None = None, request_id: str | None = None
    ) -> None:
        """Unload the adapter called `name` (admin)."""
        rid = self._new_request_id(request_id)
        self._check(await self._send("DELETE", adapter_path(name), timeout=timeout, request_id=rid), rid)

    # -- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool, unless it belongs to an `http_client` you passed in."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- transport ----------------------------------------------------------------------------

    async def _request(
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
        response = await self._send(method, path, body=body, timeout=timeout, request_id=rid)
        return self._parse(response, model, rid, unwrap=unwrap)

    async def _probe(self, path: str, timeout: TimeoutTypes | None) -> bool:
        rid = self._new_request_id(None)
        try:
            response = await self._send("GET", path, timeout=timeout, request_id=rid, max_retries=0)
        except APIConnectionError:
            return False
        return self._probe_result(response, rid)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        timeout: TimeoutTypes | None,
        request_id: str,
        max_retries: int | None = None,
    ) -> httpx.Response:
        """Send with retries; the loop mirrors `Client._send` line for line."""
        request = self._build_request(self._http, method, path, body=body, timeout=timeout, request_id=request_id)
        retry = self._retry.start(max_retries=max_retries)
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as error:
                wait = retry.after_error(error)
                if wait is None:
                    raise self._connection_error(error, request, request_id) from error
            else:
                wait = retry.after_response(response)
                if wait is None:
                    return response
                await response.aclose()
            await _sleep(wait)
