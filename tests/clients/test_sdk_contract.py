"""The SDK agrees with the server's OpenAPI schema: routes, request bodies, response types, errors.

`create_app(settings).openapi()` is the server's word on the wire (nothing loads until the
lifespan runs, so no model is needed). Each SDK method is sent through `httpx.MockTransport`:
its route and body must be ones the server declares, and the server's declared success body
(every field, and only the required ones) must parse into the SDK's pydantic type with no field
left over in `model_extra`. Field by field, the server's response schemas and the SDK's types
must name the same fields with compatible types. A failure lists every mismatch at once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import typing
from typing import Any

import httpx
import kava_client
import pytest
from kava_client import APIStatusError, AsyncClient, Client, Mode
from kava_client._base import solve_body
from kava_client.errors import STATUS_ERRORS, make_status_error
from pydantic import AliasChoices, BaseModel, ValidationError

from server.app import create_app
from server.settings import Settings

Schema = dict[str, Any]

# One call per public SDK method: (method, args, kwargs). Knobs are set so every optional field is sent.
CALLS: list[tuple[str, tuple, dict[str, Any]]] = [
    ("solve", ("What is 2 + 3?",), dict(adapter="tiny", max_new_tokens=4, num_iterations=0, return_latents=True)),
    ("models", (), {}),
    ("load_adapter", ("other", "/adapters/other"), {}),
    ("unload_adapter", ("other",), {}),
    ("health", (), {}),
    ("ready", (), {}),
]
PER_CALL = {"timeout", "request_id"}  # SDK-side arguments, never part of a body


@pytest.fixture(scope="module")
def spec() -> Schema:
    # never loaded: no lifespan runs; a key, so the document declares the 401 as well
    settings = Settings(adapters=["tiny=/nowhere/tiny"], warmup=False, api_key="k")
    return create_app(settings).openapi()


# -- a small reader of the server's JSON schema -------------------------------------------------


def resolve(spec: Schema, schema: Schema) -> Schema:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def branches(spec: Schema, schema: Schema) -> list[Schema]:
    """The alternatives of a property: its anyOf/oneOf branches, else itself (resolved)."""
    schema = resolve(spec, schema)
    alts = schema.get("anyOf") or schema.get("oneOf")
    return [resolve(spec, s) for s in alts] if alts else [schema]


def describe(spec: Schema, schema: Schema) -> str:
    parts = []
    for s in branches(spec, schema):
        if "enum" in s:
            parts.append("enum" + json.dumps(s["enum"]))
        elif s.get("type") == "array":
            parts.append(f"array[{describe(spec, s.get('items', {}))}]")
        else:
            parts.append(s.get("title") if s.get("type") == "object" else s.get("type", "any"))
    return " | ".join(str(p) for p in parts)


def examples(spec: Schema, schema: Schema) -> list[Any]:
    """One value per alternative the schema allows (each enum member, null when nullable)."""
    out: list[Any] = []
    for s in branches(spec, schema):
        if "enum" in s:
            out += list(s["enum"])
        elif "const" in s:
            out.append(s["const"])
        elif s.get("type") == "array":
            out.append([example(spec, s.get("items", {}))])
        elif s.get("type") == "object":
            out.append(example(spec, s))
        else:
            scalars = {"string": "x-string", "integer": 7, "number": 7.5, "boolean": True, "null": None}
            out.append(scalars.get(s.get("type"), "x-any"))
    return out


def example(spec: Schema, schema: Schema, *, required_only: bool = False) -> Any:
    """A value the schema accepts: an object gets every property (or only the required ones)."""
    schema = resolve(spec, schema)
    if schema.get("type") == "object" and "properties" in schema:
        required = set(schema.get("required", ()))
        return {
            name: example(spec, prop, required_only=required_only)
            for name, prop in schema["properties"].items()
            if name in required or not required_only
        }
    values = examples(spec, schema)
    non_null = [v for v in values if v is not None]
    if required_only and None in values:
        return None
    return non_null[0] if non_null else None


def accepts(spec: Schema, schema: Schema, value: Any) -> bool:
    """Enough JSON Schema to check the bodies the SDK sends (types, enums, bounds, properties)."""
    for s in branches(spec, schema):
        kind = s.get("type")
        if "enum" in s and value not in s["enum"]:
            continue
        if kind == "null" and value is not None:
            continue
        if kind == "string" and not (
            isinstance(value, str)
            and len(value) >= s.get("minLength", 0)
            and (not s.get("pattern") or re.search(s["pattern"], value))
        ):
            continue
        if kind == "boolean" and not isinstance(value, bool):
            continue
        if kind in ("integer", "number"):
            numeric = int if kind == "integer" else int | float
            if not isinstance(value, numeric) or isinstance(value, bool):
                continue
            if value < s.get("minimum", value) or value > s.get("maximum", value):
                continue
        if kind == "array" and not (isinstance(value, list) and all(accepts(spec, s["items"], v) for v in value)):
            continue
        if kind == "object" and not (isinstance(value, dict) and not object_problems(spec, s, value, "")):
            continue
        return True
    return False


def object_problems(spec: Schema, schema: Schema, body: dict[str, Any], where: str) -> list[str]:
    props, required = schema.get("properties", {}), set(schema.get("required", ()))
    out = [f"{where}: the SDK omits required field {name!r}" for name in sorted(required - set(body))]
    for name, value in body.items():
        if name not in props:
            if schema.get("additionalProperties", True) is False:
                out.append(f"{where}: the SDK sends {name!r}, which the server does not know (it answers 422)")
        elif not accepts(spec, props[name], value):
            out.append(f"{where}: the SDK sends {name}={value!r}; the server expects {describe(spec, props[name])}")
    return out


# -- the SDK's side --------------------------------------------------------------------------


def field_names(model: type[BaseModel]) -> dict[str, set[str]]:
    """SDK field -> every JSON name it reads (the field name and its validation aliases)."""
    out = {}
    for name, info in model.model_fields.items():
        names = {name}
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        out[name] = names
    return out


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def leftovers(value: Any, where: str = "") -> list[str]:
    """Paths of fields that landed in `model_extra` anywhere inside a parsed response."""
    out = []
    if isinstance(value, BaseModel):
        out += [f"{where}.{k}" if where else k for k in (value.model_extra or {})]
        for name in type(value).model_fields:
            out += leftovers(getattr(value, name), f"{where}.{name}" if where else name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += leftovers(item, f"{where}[{i}]")
    return out


def model_problems(spec: Schema, schema: Schema, model: type[BaseModel], where: str) -> list[str]:
    """Field-by-field diff of a server response schema and the SDK type that parses it."""
    schema = resolve(spec, schema)
    label = f"{where} (server {schema.get('title')} vs SDK {model.__name__})"
    props, required = schema.get("properties", {}), set(schema.get("required", ()))
    sdk = field_names(model)
    full = example(spec, schema)
    out = []
    for prop, prop_schema in props.items():
        owner = next((field for field, names in sdk.items() if prop in names), None)
        kind = "required" if prop in required else "optional"
        if owner is None:
            out.append(
                f"{label}: server field {prop!r} ({kind}, {describe(spec, prop_schema)}) has no SDK field "
                "(it would land in model_extra)"
            )
            continue
        for value in examples(spec, prop_schema):
            try:
                model.model_validate({**full, prop: value})
            except ValidationError as e:
                problem = "; ".join(err["msg"] for err in e.errors())
                out.append(
                    f"{label}: server sends {prop}={value!r} ({describe(spec, prop_schema)}); "
                    f"SDK field {owner!r} ({model.model_fields[owner].annotation}) rejects it: {problem}"
                )
        inner = nested_model(model.model_fields[owner].annotation)
        for alt in branches(spec, prop_schema):
            target = resolve(spec, alt.get("items", {})) if alt.get("type") == "array" else alt
            if inner is not None and target.get("type") == "object" and "properties" in target:
                out += model_problems(spec, target, inner, f"{where}.{prop}")
    for field, names in sdk.items():
        if not names & set(props):
            out.append(f"{label}: SDK field {field!r} matches nothing the server sends (renamed or removed?)")
        elif model.model_fields[field].is_required() and not names & required:
            out.append(f"{label}: SDK field {field!r} is required but the server may omit it")
    return out


# -- one SDK call through a mock server ------------------------------------------------------


class Recorder:
    """Answers every request with `respond(request)`, keeping the requests."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def operation(spec: Schema, request: httpx.Request) -> tuple[str, Schema] | None:
    """The server's (path template, operation) that `request` would reach, if any."""
    for template, ops in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path) and request.method.lower() in ops:
            return template, ops[request.method.lower()]
    return None


def success(op: Schema) -> tuple[int, Schema | None]:
    status = min(int(code) for code in op["responses"] if code.startswith("2"))
    content = op["responses"][str(status)].get("content", {}).get("application/json", {})
    return status, content.get("schema")


def call_sdk(kind: str, recorder: Recorder, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    transport = httpx.MockTransport(recorder)
    if kind == "sync":
        with Client(base_url="http://kava", transport=transport, max_retries=0) as c:
            return getattr(c, method)(*args, **kwargs)

    async def go() -> Any:
        async with AsyncClient(base_url="http://kava", transport=transport, max_retries=0) as c:
            return await getattr(c, method)(*args, **kwargs)

    return asyncio.run(go())


def route_problems(spec: Schema, kind: str, method: str, args: tuple, kwargs: dict[str, Any]) -> list[str]:
    """Send one SDK call against the server's declared success responses (full, then minimal)."""
    out: list[str] = []
    for required_only in (False, True):

        def respond(request: httpx.Request, required_only: bool = required_only) -> httpx.Response:
            found = operation(spec, request)
            if found is None:
                return httpx.Response(404)
            status, schema = success(found[1])
            body = None if schema is None else example(spec, schema, required_only=required_only)
            return httpx.Response(status, json=body)

        recorder = Recorder(respond)
        where = f"{kind} {method}()" + (" [only required fields]" if required_only else "")
        try:
            result = call_sdk(kind, recorder, method, args, kwargs)
        except kava_client.KavaError as e:
            result = e
        request = recorder.requests[-1]
        found = operation(spec, request)
        if found is None:
            out.append(f"{where}: {request.method} {request.url.path} is not a route of the server")
            continue
        if isinstance(result, kava_client.KavaError):
            out.append(f"{where}: the SDK failed on the server's declared response: {result}")
            continue
        template, op = found
        body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        body = json.loads(request.content) if request.content else None
        if body_schema is not None and not required_only:
            if body is None:
                out.append(f"{where}: {request.method} {template} needs a JSON body; the SDK sent none")
            else:
                out += object_problems(spec, resolve(spec, body_schema), body, f"{where} body")
        elif body is not None and body_schema is None:
            out.append(f"{where}: the SDK sends a body to {request.method} {template}, which takes none")
        if isinstance(result, BaseModel):
            out += [f"{where}: server field {path!r} has no SDK field" for path in leftovers(result)]
    return out


# -- the tests -------------------------------------------------------------------------------


def test_every_public_sdk_method_is_checked():
    public = {n for n, v in vars(Client).items() if not n.startswith("_") and inspect.isfunction(v)} - {"close"}
    assert public == {method for method, _, _ in CALLS}, "add the new SDK method to CALLS"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sdk_routes_and_bodies_match_the_servers_openapi(spec, kind):
    problems = [p for method, args, kwargs in CALLS for p in route_problems(spec, kind, method, args, kwargs)]
    assert not problems, "SDK vs server OpenAPI:\n  " + "\n  ".join(problems)


def test_every_solve_knob_of_the_sdk_is_a_field_of_the_servers_request(spec):
    request = resolve(spec, spec["paths"]["/v1/solve"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    props, required = request["properties"], set(request["required"])
    knobs = [p for p in inspect.signature(Client.solve).parameters if p not in {"self", *PER_CALL}]
    assert knobs == [p for p in inspect.signature(AsyncClient.solve).parameters if p not in {"self", *PER_CALL}]
    problems = []
    for mode in typing.get_args(Mode):
        full = solve_body("q", adapter="a", mode=mode, max_new_tokens=1, num_iterations=0, return_latents=True)
        minimal = solve_body(
            "q", adapter=None, mode=mode, max_new_tokens=None, num_iterations=None, return_latents=False
        )
        if sorted(full) != sorted(knobs):
            problems.append(f"solve() arguments {sorted(knobs)} but a full body sends {sorted(full)}")
        problems += object_problems(spec, request, full, f"solve body (mode={mode})")
        problems += object_problems(spec, request, minimal, f"minimal solve body (mode={mode})")
    problems += [
        f"server request field {p!r} ({describe(spec, props[p])}) has no solve() argument"
        for p in props
        if p not in knobs
    ]
    problems += [f"the server requires {p!r}, which solve() can omit" for p in required if p != "question"]
    server_modes = next(s["enum"] for s in branches(spec, props["mode"]) if "enum" in s)
    if sorted(typing.get_args(Mode)) != sorted(server_modes):
        problems.append(f"SDK Mode {typing.get_args(Mode)} != server mode enum {server_modes}")
    assert not problems, "solve() vs the server's SolveRequest:\n  " + "\n  ".join(problems)


def _success_schema(spec: Schema, path: str, method: str) -> Schema:
    schema = success(spec["paths"][path][method])[1]
    assert schema is not None, f"{method.upper()} {path} declares no JSON success body"
    return schema


@pytest.mark.parametrize(
    ("path", "method", "model"),
    [
        ("/v1/solve", "post", kava_client.SolveResponse),
        ("/v1/adapters", "get", kava_client.ModelsResponse),
        ("/v1/adapters", "post", kava_client.AdapterInfo),
    ],
)
def test_response_types_match_field_by_field(spec, path, method, model):
    problems = model_problems(spec, _success_schema(spec, path, method), model, f"{method.upper()} {path}")
    assert not problems, "server response schema vs SDK type:\n  " + "\n  ".join(problems)


def error_responses(spec: Schema) -> list[tuple[str, int, Schema | None]]:
    """(route, status, JSON body schema) of every 4xx/5xx the server declares."""
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if code[0] in "45":
                    schema = response.get("content", {}).get("application/json", {}).get("schema")
                    out.append((f"{method.upper()} {path}", int(code), schema))
    return out


# what `kava_client.errors.make_status_error` reads from `{"error": {...}}`, as JSON types
SDK_ENVELOPE = {"type": ["string"], "message": ["string"], "param": ["null", "string"]}


def test_every_error_response_is_the_envelope_the_sdk_reads(spec):
    problems = []
    for route, status, schema in error_responses(spec):
        if schema is None:
            problems.append(f"{route} {status}: no JSON error body declared")
            continue
        envelope = resolve(spec, schema)
        error = resolve(spec, envelope.get("properties", {}).get("error", {}))
        fields = {
            k: sorted(b.get("type", "?") for b in branches(spec, v)) for k, v in error.get("properties", {}).items()
        }
        if "error" not in envelope.get("required", ()):
            problems.append(f"{route} {status}: {envelope.get('title')}.error is not required")
        if fields != SDK_ENVELOPE:
            problems.append(f"{route} {status}: the server's error fields are {fields}; the SDK reads {SDK_ENVELOPE}")
        if not {"type", "message"} <= set(error.get("required", ())):
            problems.append(f"{route} {status}: error.type and error.message must always be sent")
    assert {status for _, status, _ in error_responses(spec)} >= {401, 404, 422, 503}
    assert not problems, "error envelope, server vs SDK:\n  " + "\n  ".join(problems)


def test_each_declared_error_status_becomes_an_sdk_exception_with_the_envelope(spec):
    problems = []
    for status, schema in sorted({(status, json.dumps(schema)) for _, status, schema in error_responses(spec)}):
        for required_only in (False, True):
            body = example(spec, json.loads(schema), required_only=required_only)
            request = httpx.Request("POST", "http://kava/v1/solve")
            response = httpx.Response(status, json=body, headers={"X-Request-Id": "srv-1"}, request=request)
            e = make_status_error(response, request_id="sent-1")
            cls = STATUS_ERRORS.get(status, kava_client.InternalServerError if status >= 500 else APIStatusError)
            got = (type(e).__name__, e.status, e.error_type, e.message, e.param, e.request_id)
            error = body["error"]
            want = (cls.__name__, status, error["type"], error["message"], error.get("param"), "srv-1")
            if got != want:
                problems.append(f"HTTP {status} {body}: the SDK raised {got}, expected {want}")
    assert not problems, "error responses the SDK misreads:\n  " + "\n  ".join(problems)


def test_the_checker_finds_mismatches(spec):
    """The diff is not vacuous: a renamed, a narrowed and an invented field are all reported."""

    class Renamed(BaseModel):
        identifier: str
        answer: int | None = None
        text: str = ""

    problems = "\n".join(model_problems(spec, _success_schema(spec, "/v1/solve", "post"), Renamed, "solve"))
    assert "server field 'id' (required, string) has no SDK field" in problems
    assert "server field 'kv_cache_bytes'" in problems
    assert "server sends answer='x-string'" in problems and "SDK field 'answer'" in problems
    assert "SDK field 'identifier' matches nothing the server sends" in problems
    request = resolve(spec, spec["paths"]["/v1/solve"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    bad = object_problems(spec, request, {"question": "q", "mode": "fast", "temperature": 0.1}, "body")
    assert any("mode='fast'" in p for p in bad) and any("'temperature'" in p for p in bad)


def test_the_sdk_speaks_the_servers_modes(spec):
    """One vocabulary: kava.config.MODES on the server, the SDK's Mode, the OpenAPI enum."""
    from typing import get_args

    from kava.config import MODES

    assert get_args(kava_client.Mode) == MODES
    mode = resolve(spec, spec["components"]["schemas"]["SolveRequest"]["properties"]["mode"])
    assert tuple(mode["enum"]) == MODES
