"""What `Client` and `AsyncClient` share: settings, request building and response decoding.

Owns the `KAVA_BASE_URL` / `KAVA_API_KEY` fallbacks, headers (auth, `X-Request-Id`, user
agent, the caller's `default_headers`), per-call timeouts, `with_options` (a copy with some
options changed that shares the connection pool, as in openai-python), the request bodies of
each route, and turning an `httpx.Response` into a typed value or a typed exception. Does not
do I/O (the twins send and sleep) and does not decide retries (`_retry.py`).
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from kava_client._retry import RetryPolicy
from kava_client.errors import (
    REQUEST_ID_HEADER,
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    make_status_error,
)
from kava_client.types import Mode

__version__ = "0.1.0"

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Longer than the server's default deadline (KAVA_REQUEST_TIMEOUT_S = 120 s): a slow solve ends
# with the server's 504, instead of the client giving up while the server still works on it and
# sending it again. Connecting should not take long.
DEFAULT_TIMEOUT = httpx.Timeout(180.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
BASE_URL_ENV = "KAVA_BASE_URL"
API_KEY_ENV = "KAVA_API_KEY"

TimeoutTypes = float | httpx.Timeout
M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", bound="BaseClient")
NOT_GIVEN: Any = object()  # with_options: "keep this option" (None means "no timeout")


class BaseClient:
    """Settings and pure helpers of both clients; subclasses add the transport."""

    _owns_http: bool

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: TimeoutTypes | None,
        max_retries: int,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = _base_url(base_url)
        self.api_key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        self.timeout = _as_timeout(timeout)
        self._retry = RetryPolicy(max_retries=max_retries)
        self.default_headers: dict[str, str] = dict(default_headers or {})

    def with_options(
        self: C,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes | None = NOT_GIVEN,
        max_retries: int | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> C:
        """A copy of this client with the given options changed; it shares this client's
        connection pool (closing the copy leaves the pool open). `default_headers` are merged
        over the current ones.

            client.with_options(timeout=600, max_retries=0).solve("...")
        """
        clone = copy.copy(self)
        clone._owns_http = False
        if base_url is not None:
            clone.base_url = _base_url(base_url)
        if api_key is not None:
            clone.api_key = api_key
        if timeout is not NOT_GIVEN:
            clone.timeout = _as_timeout(timeout)
        if max_retries is not None:
            clone._retry = RetryPolicy(max_retries=max_retries)
        clone.default_headers = {**self.default_headers, **(default_headers or {})}
        return clone

    @property
    def max_retries(self) -> int:
        return self._retry.max_retries

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, max_retries={self.max_retries})"

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"kava-client/{__version__} python-httpx/{httpx.__version__}",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.default_headers)
        headers[REQUEST_ID_HEADER] = request_id
        return headers

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None,
        timeout: TimeoutTypes | None,
        request_id: str,
    ) -> httpx.Request:
        return http.build_request(
            method,
            self.base_url + path,
            json=body,
            headers=self._headers(request_id),
            timeout=self.timeout if timeout is None else _as_timeout(timeout),
        )

    @staticmethod
    def _new_request_id(request_id: str | None) -> str:
        return request_id or uuid.uuid4().hex

    @staticmethod
    def _connection_error(error: httpx.TransportError, request: httpx.Request, request_id: str) -> APIConnectionError:
        if isinstance(error, httpx.TimeoutException):
            return APITimeoutError(
                f"{request.method} {request.url} timed out ({type(error).__name__})",
                request=request,
                request_id=request_id,
            )
        return APIConnectionError(
            f"{request.method} {request.url} failed: {error or type(error).__name__}",
            request=request,
            request_id=request_id,
        )

    @staticmethod
    def _parse(response: httpx.Response, model: type[M], request_id: str, *, unwrap: str | None = None) -> M:
        """The typed body of a response; non-2xx raises the status's exception."""
        if not response.is_success:
            raise make_status_error(response, request_id=request_id)
        rid = response.headers.get(REQUEST_ID_HEADER) or request_id
        try:
            data = response.json()
        except ValueError as e:
            raise APIResponseValidationError(
                f"HTTP {response.status_code} body is not JSON: {response.text[:200]!r}",
                response=response,
                body=response.text,
                request_id=rid,
            ) from e
        if unwrap and isinstance(data, dict) and isinstance(data.get(unwrap), dict):
            data = data[unwrap]
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise APIResponseValidationError(
                f"HTTP {response.status_code} body does not match {model.__name__}: {e}",
                response=response,
                body=data,
                request_id=rid,
            ) from e

    @staticmethod
    def _check(response: httpx.Response, request_id: str) -> None:
        if not response.is_success:
            raise make_status_error(response, request_id=request_id)

    @staticmethod
    def _probe_result(response: httpx.Response, request_id: str) -> bool:
        """/health and /ready: 2xx is True, 5xx (not ready, draining, engine dead) is False, else raise."""
        if response.is_success:
            return True
        if response.status_code >= 500:
            return False
        raise make_status_error(response, request_id=request_id)


def solve_body(
    question: str,
    *,
    adapter: str | None,
    mode: Mode,
    max_new_tokens: int | None,
    num_iterations: int | None,
    return_latents: bool,
) -> dict[str, Any]:
    """JSON body of `POST /v1/solve`; knobs left as None are omitted so the server's defaults apply."""
    body: dict[str, Any] = {"question": question, "mode": mode}
    if adapter is not None:
        body["adapter"] = adapter
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    if num_iterations is not None:
        body["num_iterations"] = num_iterations
    if return_latents:
        body["return_latents"] = True
    return body


def adapter_path(name: str) -> str:
    """URL path of one adapter, with the name percent-encoded."""
    if not name:
        raise ValueError("adapter name is empty: pass the name shown by models()")
    return "/v1/adapters/" + quote(name, safe="")


def _base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url={url!r}: must start with http:// or https:// (pass base_url= or set {BASE_URL_ENV})"
        )
    return url.rstrip("/")


def _as_timeout(timeout: TimeoutTypes | None) -> httpx.Timeout:
    if timeout is None:  # on the client: no timeout at all, as in httpx
        return httpx.Timeout(None)
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds or an httpx.Timeout")
    return httpx.Timeout(float(timeout))
