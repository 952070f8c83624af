"""The OpenAPI document as the server really behaves: its keys, its limits, its statuses.

FastAPI derives the document from the routes and the pydantic models; this module adds what
only the running settings know, so a fuzzer or a client generator sees the real contract:
the security schemes (Bearer and X-API-Key) on every `/v1/*` operation when a key is set,
the settings-dependent bounds of `POST /v1/solve` and of the OpenAI-compatible requests
(the question's length, a chat's user messages included; `max_new_tokens` / `max_tokens`;
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


# request fields whose bound is a setting, wherever a request schema has them (the OpenAI
# routes' fields map onto SolveRequest's, so the same settings bound them)
LIMITS = {
    "max_new_tokens": ("maximum", "max_new_tokens_limit"),
    "max_tokens": ("maximum", "max_new_tokens_limit"),
    "max_completion_tokens": ("maximum", "max_new_tokens_limit"),
    "num_iterations": ("maximum", "max_num_iterations"),
}
# where a question's text sits, as (schema, field), bounded by max_question_chars: the chat
# question is a user message's text, a string or one text part; every user message is bounded
# (JSON Schema cannot single out the last one, the question), and the server refuses the same
# (`ChatCompletionRequest.problems`)
QUESTIONS = (("SolveRequest", "question"), ("CompletionRequest", "prompt"), ("UserMessage", "content"))
QUESTION_PARTS = (("QuestionPart", "text"),)


def _bound(schema: dict[str, Any], keyword: str, value: int) -> None:
    """Set `keyword` on the integer or string branches of `schema` (plain, `anyOf`, array items)."""
    for branch in schema.get("anyOf", [schema]):
        kind = branch.get("type")
        if kind == "array" and isinstance(branch.get("items"), dict):
            _bound(branch["items"], keyword, value)
        elif (kind == "integer" and keyword == "maximum") or (kind == "string" and keyword == "maxLength"):
            branch[keyword] = value


def _limits(doc: dict[str, Any], settings: Settings) -> None:
    schemas = doc.get("components", {}).get("schemas", {})
    for name, schema in schemas.items():
        if not name.endswith("Request"):
            continue
        for field, prop in schema.get("properties", {}).items():
            if field in LIMITS:
                keyword, setting = LIMITS[field]
                _bound(prop, keyword, getattr(settings, setting))
    limit = settings.max_question_chars
    for name, field in QUESTIONS + QUESTION_PARTS:
        prop = schemas.get(name, {}).get("properties", {}).get(field)
        if prop is None:
            continue
        _bound(prop, "maxLength", limit)
        if (name, field) in QUESTIONS:
            prop["description"] = prop.get("description", "the question") + (
                f" (at most {limit} characters; prompt + latents + answer must also fit the model's context, "
                "counted in tokens, else 422 with the numbers)"
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
