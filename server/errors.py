"""The one error envelope, `{"error": {"type", "message", "param"}}`, for every failure.

Owns `ApiError` (what handlers raise), the exception handlers that render it, and the
replacement of FastAPI's validation handler so a 422 says which field broke which limit.
Status codes follow SERVING.md: 422 invalid, 401 key, 403 runtime adapter loading off, 404
unknown adapter, 409 name taken, 413 body too large, 415 not JSON, 503 + Retry-After
overloaded / draining / not ready, 504 deadline, 500 engine failure (with the request id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from server.schemas import ErrorBody, ErrorEnvelope

# outcome label of kava_requests_total for a failed /v1/solve, by status
OUTCOME_BY_STATUS = {
    401: "invalid",
    403: "invalid",
    404: "invalid",
    413: "invalid",
    415: "invalid",
    422: "invalid",
    499: "cancelled",
    503: "overloaded",
    504: "timeout",
}


BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 when its JSON parser raises


class ApiError(Exception):
    def __init__(
        self, status: int, type: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param
        self.headers = headers or {}


def invalid(param: str | None, message: str) -> ApiError:
    return ApiError(422, "invalid_request_error", message, param)


def not_found(message: str, param: str | None = None) -> ApiError:
    return ApiError(404, "not_found_error", message, param)


def unauthorized() -> ApiError:
    message = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    return ApiError(401, "authentication_error", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str, param: str | None = None) -> ApiError:
    return ApiError(403, "permission_error", message, param)


def too_large(size: int | None, limit: int) -> ApiError:
    got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return ApiError(413, "request_too_large", f"the request body is {got}; the limit is {limit} (KAVA_MAX_BODY_BYTES)")


def not_json(content_type: str) -> ApiError:
    message = f"the request body must be JSON sent with 'Content-Type: application/json' (got {content_type!r})"
    return ApiError(415, "unsupported_media_type", message)


def unavailable(type: str, message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, type, message, headers={"Retry-After": str(retry_after_s)})


def conflict(message: str, param: str | None = None) -> ApiError:
    return ApiError(409, "conflict_error", message, param)


def envelope(status: int, type: str, message: str, param: str | None = None, headers=None) -> JSONResponse:
    body = ErrorEnvelope(error=ErrorBody(type=type, message=message, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
    """(first bad field, one message naming each field, its problem and the limit)."""
    params, parts = [], []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "cannot be parsed")
            params.append(None)
            parts.append(f"malformed JSON body: {detail} (at character {loc[0] if loc else '?'})")
            continue
        param = ".".join(loc) or None
        params.append(param)
        if param is None:
            problem = "the request body is missing" if kind == "missing" else "the request body must be a JSON object"
            parts.append(problem)
            continue
        problem = "is required" if kind == "missing" else err.get("msg", "is invalid")
        shown = err.get("input")
        got = ""
        if isinstance(shown, str) and kind == "string_too_long":
            got = f" (got {len(shown)} characters)"
        elif isinstance(shown, (int, float, bool)) or (isinstance(shown, str) and len(shown) <= 40):
            got = f" (got {shown!r})" if kind != "missing" else ""
        parts.append(f"{param}: {problem}{got}")
    return (params[0] if params else None), "; ".join(parts)


def _allowed_methods(request: Request) -> str:
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.methods and compile_path(route.path)[0].match(request.url.path):
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


def install(app: FastAPI, on_error: Callable[[Request, int, object], None]) -> None:
    """Render every error as the envelope; `on_error(request, status, mode)` counts it
    (`mode` is whatever the request said, possibly nothing valid)."""

    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        on_error(request, exc.status, getattr(request.state, "mode", None))
        return envelope(exc.status, exc.type, exc.message, exc.param, exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = exc.body if isinstance(exc.body, dict) else {}
        on_error(request, 422, body.get("mode", "latent"))
        param, message = describe_validation(list(exc.errors()))
        return envelope(422, "invalid_request_error", message, param)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:  # e.g. JSON nested past the parser's depth
            on_error(request, 422, None)
            message = "malformed JSON body: it cannot be parsed (nested too deeply, or not text)"
            return envelope(422, "invalid_request_error", message, None)
        if exc.status_code == 405:  # Starlette names only the first route's methods; give the path's
            allow = _allowed_methods(request)
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allow}"
            return envelope(405, "method_not_allowed", message, None, {"Allow": allow})
        kind = "not_found_error" if exc.status_code == 404 else "http_error"
        return envelope(exc.status_code, kind, str(exc.detail), None, getattr(exc, "headers", None))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
