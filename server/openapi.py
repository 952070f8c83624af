"""The OpenAPI document as the server really behaves: its keys, its limits, its statuses.

FastAPI derives the document from the routes and the pydantic models; this module adds what
only the running settings know, so a fuzzer or a client generator sees the real contract:
the security schemes (Bearer and X-API-Key) on every `/v1/*` operation when a key is set,
the settings-dependent bounds of `POST /v1/solve` (question length, `max_new_tokens`,
`num_iterations`), and the statuses the middleware answers before any route runs (401, 413,
415). Does not own the routes or the checks themselves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.middleware import BODY_METHODS, is_admin
from server.settings import Settings

SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: <key>"},
}
ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ENVELOPE}}}


def _bound(schema: dict[str, Any], **limits: Any) -> None:
    """Set `limits` on the integer branch of `schema` (an `anyOf` with null, or a plain one)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") in ("integer", "string"):
            branch.update(limits)


def _limits(doc: dict[str, Any], settings: Settings) -> None:
    props = doc.get("components", {}).get("schemas", {}).get("SolveRequest", {}).get("properties", {})
    if not props:
        return
    _bound(props["question"], maxLength=settings.max_question_chars)
    _bound(props["max_new_tokens"], maximum=settings.max_new_tokens_limit)
    _bound(props["num_iterations"], maximum=settings.max_num_iterations)
    props["question"]["description"] += (
        f" (at most {settings.max_question_chars} characters; prompt + latents + answer must also fit the "
        "model's context, counted in tokens, else 422 with the numbers)"
    )


def _operations(doc: dict[str, Any]):
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}:
                yield path, method.upper(), op


def openapi_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The app's document (built once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=(
            f"{app.description}\n\nLimits: request bodies up to {settings.max_body_bytes} bytes (413), JSON only "
            "(415); the key, when the server has one, is checked before the body is read (401)."
        ),
        routes=app.routes,
    )
    _limits(doc, settings)
    keyed = False
    for path, method, op in _operations(doc):
        if not path.startswith("/v1/"):
            continue
        responses = op.setdefault("responses", {})
        key = (settings.admin_api_key or settings.api_key) if is_admin(method, path) else settings.api_key
        if key is not None:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            responses.setdefault("401", _error("missing or wrong API key"))
            keyed = True
        else:
            responses.pop("401", None)
        if method in BODY_METHODS:
            responses.setdefault("413", _error(f"request body over {settings.max_body_bytes} bytes"))
            responses.setdefault("415", _error("request body not sent as application/json"))
        else:
            responses.pop("413", None)
            responses.pop("415", None)
    if keyed:
        doc.setdefault("components", {})["securitySchemes"] = SCHEMES
    app.openapi_schema = doc
    return doc
