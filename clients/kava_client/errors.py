"""Every exception the SDK raises, and the mapping from an HTTP error response to one of them.

Owns the class hierarchy (one class per status family) and the parsing of the server's error
envelope `{"error": {"type", "message", "param"}}` plus its `X-Request-Id` header. Does not
decide whether a failure is retried; `_retry.py` does.

    KavaError
    ├── APIConnectionError            the server could not be reached, or the connection broke
    │   └── APITimeoutError           no answer within the timeout
    ├── APIResponseValidationError    a 2xx response whose body is not what the contract says
    └── APIStatusError                any non-2xx response (status, error_type, message, ...)
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404
        ├── ConflictError             409
        ├── UnprocessableEntityError  422
        ├── RateLimitError            429
        ├── InternalServerError       500 and any other 5xx
        ├── ServiceUnavailableError   503
        └── GatewayTimeoutError       504
"""

from __future__ import annotations

from typing import Any

import httpx

from kava_client._retry import parse_retry_after

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "GatewayTimeoutError",
    "InternalServerError",
    "KavaError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "make_status_error",
]

REQUEST_ID_HEADER = "X-Request-Id"


class KavaError(Exception):
    """Base class of every error raised by `kava_client`."""

    request_id: str | None = None


class APIConnectionError(KavaError):
    """The request never got an HTTP response: connection refused, reset, DNS failure, ..."""

    def __init__(self, message: str, *, request: httpx.Request | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.request_id = request_id

    def __str__(self) -> str:
        return _with_request_id(self.message, self.request_id)


class APITimeoutError(APIConnectionError):
    """No response within the timeout (connect, read, write or pool)."""


class APIResponseValidationError(KavaError):
    """A successful response whose body does not match the documented shape."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.body = body
        self.status = response.status_code
        self.request_id = request_id

    def __str__(self) -> str:
        return _with_request_id(self.message, self.request_id)


class APIStatusError(KavaError):
    """The server answered with a non-2xx status; the fields come from its error envelope.

    `error_type`, `message` and `param` are the envelope's `type`, `message` and `param`;
    `request_id` is the response's `X-Request-Id`; `body` is the decoded body (dict, text or
    None); `retry_after` is the `Retry-After` header in seconds, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        error_type: str | None = None,
        param: str | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.status = response.status_code
        self.error_type = error_type
        self.param = param
        self.body = body
        self.request_id = request_id
        self.retry_after = parse_retry_after(response.headers.get("retry-after"))

    @property
    def status_code(self) -> int:
        """Alias of `status`, as httpx and openai-python spell it."""
        return self.status

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        param = f" (param: {self.param})" if self.param else ""
        return _with_request_id(f"HTTP {self.status}{kind}: {self.message}{param}", self.request_id)


class BadRequestError(APIStatusError):
    """400: the request could not be understood."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong (set `api_key=` or `KAVA_API_KEY`)."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but may not do this."""


class NotFoundError(APIStatusError):
    """404: unknown route or unknown adapter."""


class ConflictError(APIStatusError):
    """409: the request clashes with the server's state (an adapter name already loaded, or
    unloading the adapter that owns the base model). Not retried: the state has to change first."""


class UnprocessableEntityError(APIStatusError):
    """422: the body failed validation; `param` names the field and `message` the limit."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically, raised once retries run out."""


class InternalServerError(APIStatusError):
    """500 or any 5xx without a class of its own (an engine failure carries the request id)."""


class ServiceUnavailableError(APIStatusError):
    """503: queue full, draining, or not ready; retried automatically, honouring `Retry-After`."""


class GatewayTimeoutError(APIStatusError):
    """504: the request waited past its deadline on the server."""


STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def make_status_error(response: httpx.Response, *, request_id: str | None = None) -> APIStatusError:
    """Build the exception for a non-2xx `response`; `request_id` is the fallback when the server sent none."""
    body = _decode_body(response)
    error_type = param = body_request_id = None
    message: str | None = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        envelope = body["error"]
        error_type = _optional_str(envelope.get("type"))
        message = _optional_str(envelope.get("message"))
        param = _optional_str(envelope.get("param"))
        body_request_id = _optional_str(envelope.get("request_id"))
    elif isinstance(body, dict) and "detail" in body:  # a framework default, not our envelope
        message = str(body["detail"])
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:500]
    if not message:
        message = response.reason_phrase or f"HTTP {response.status_code}"
    cls = STATUS_ERRORS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(
        message,
        response=response,
        error_type=error_type,
        param=param,
        body=body,
        request_id=response.headers.get(REQUEST_ID_HEADER) or body_request_id or request_id,
    )


def _decode_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _with_request_id(message: str, request_id: str | None) -> str:
    return f"{message} [request_id={request_id}]" if request_id else message
