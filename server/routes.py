"""HTTP handlers: thin translations between the wire formats and the engine.

`/v1/*` (solve, adapters, and `server.openai_routes`) needs the API key when one is set
(checked before the body is read, by `server.middleware.GuardMiddleware`; `require_key`
checks again for routers that declare it); `/health`, `/ready` and `/metrics` never do.
`admit_job`, which `/v1/solve` and the OpenAI-compatible routes share, admits (draining, not
ready) before anything is tokenised, checks the request against what is loaded and the
limits, and that prompt + latents + answer fit the model's context (`server.budget`, in
tokens); `solve_job` then hands the job to `server.async_engine` (queue bound, deadline,
disconnect) and counts the outcome. Runtime adapter loading is off unless adapter roots are
set, and loads only from inside them: any path that is not an adapter directory there gets
one and the same 422. Does not own the engine or its bridge to the event loop, the metrics
or the error envelope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam

from kava.adapters import AdapterError, find_adapter_dir, read_manifest
from server.async_engine import Disconnected
from server.batch import BatchKey, Job, JobResult
from server.context import ServerContext
from server.engine import Engine
from server.errors import ApiError, conflict, envelope, forbidden, invalid, not_found, unauthorized, unavailable
from server.middleware import is_admin, key_matches
from server.runner import AdapterConflict, AdapterNotLoaded, Runner
from server.schemas import (
    AdapterCard,
    AdapterDeleted,
    AdapterList,
    AdapterLoadRequest,
    ErrorEnvelope,
    HealthResponse,
    SolveRequest,
    SolveResponse,
    Timings,
    Usage,
)
from server.settings import ADAPTER_NAME, Settings
from server.stats import AdapterInfo

SOLVE_PATH = "/v1/solve"
ERRORS = {code: {"model": ErrorEnvelope} for code in (401, 404, 413, 415, 422, 500, 503, 504)}
ADMIN_ERRORS = {code: {"model": ErrorEnvelope} for code in (403, 409)}


def _ctx(request: Request) -> ServerContext:
    return request.app.state.kava


async def require_key(request: Request) -> None:
    settings = _ctx(request).settings
    admin = is_admin(request.method, request.url.path)
    key = (settings.admin_api_key or settings.api_key) if admin else settings.api_key
    if key is not None and not key_matches(request.headers, key):
        raise unauthorized()


api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERRORS)
probes = APIRouter()


# /v1/solve ---------------------------------------------------------------------------------
def client_gone(request: Request) -> Disconnected:
    """Returns once the client has closed the connection (ASGI's http.disconnect)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return disconnected


def _job(body: SolveRequest, info: AdapterInfo, max_new_tokens: int, request: Request) -> Job:
    latent = body.mode == "latent"
    iterations = body.num_iterations if body.num_iterations is not None else info.num_iterations
    return Job(
        id=request.state.request_id,
        question=body.question,
        key=BatchKey(info.name, body.mode, iterations if latent else None),
        max_new_tokens=max_new_tokens,
        return_latents=body.return_latents,
        arrival=request.state.arrival,
    )


def solve_response(job: Job, body: SolveRequest, jr: JobResult) -> SolveResponse:
    res = jr.result
    extra = {}
    if body.return_latents:
        nearest = res.latent_nearest_tokens
        extra["latents"] = [[token] for token in nearest] if nearest is not None else None
    return SolveResponse(
        id=job.id,
        answer=res.answer,
        text=res.text,
        mode=body.mode,
        adapter=job.key.adapter,
        usage=Usage(
            prompt_tokens=res.prompt_tokens,
            latent_tokens=res.latent_tokens,
            generated_tokens=res.generated_tokens,
            forward_passes=res.forward_passes,
        ),
        timings_ms=Timings(
            queue=round(jr.queue_s * 1e3, 3),
            prefill=round(jr.prefill_s * 1e3, 3),
            latent=round(jr.latent_s * 1e3, 3),
            decode=round(jr.decode_s * 1e3, 3),
            total=round(jr.total_s * 1e3, 3),
        ),
        kv_cache_bytes=res.kv_cache_bytes,
        **extra,
    )


async def _fit_context(ctx: ServerContext, body: SolveRequest, adapter: str) -> int:
    """The answer length to run with, once prompt + latents + answer are known to fit."""
    default = ctx.settings.default_max_new_tokens(body.mode)
    try:
        budget = await ctx.budgets.get(adapter)
    except AdapterNotLoaded as exc:  # unloaded a moment ago
        raise not_found(str(exc), "adapter") from exc
    if budget is None:
        return body.max_new_tokens or default
    tokens = await budget.count(body.question)
    return budget.max_new_tokens(tokens, body.mode, body.max_new_tokens, default)


async def admit_job(body: SolveRequest, request: Request) -> Job:
    """Admit and check one question; the job to run. What every answering route runs first
    (`/v1/solve` and the OpenAI-compatible ones). Raises ApiError."""
    ctx = _ctx(request)
    settings, engine = ctx.settings, ctx.engine
    request.state.mode = body.mode
    # 1. admission, before any tokenisation
    ctx.async_engine.check_open()
    # 2. the request against what is loaded, the server's limits and the model's context (in tokens)
    info = engine.adapter(body.adapter or engine.default_adapter)
    if info is None:
        loaded = sorted(a.name for a in engine.adapters())
        raise not_found(f"adapter {body.adapter!r} is not loaded; loaded adapters: {loaded}", "adapter")
    request.state.adapter = info.name  # a loaded name: the error counter may label by it
    problems = body.problems(settings)
    if problems:
        raise invalid(problems[0][0], "; ".join(message for _, message in problems))
    max_new_tokens = await _fit_context(ctx, body, info.name)
    return _job(body, info, max_new_tokens, request)


async def solve_job(body: SolveRequest, request: Request) -> tuple[Job, JobResult]:
    """Admit, check, queue and await one question (`admit_job`, then the engine until the
    deadline or the client's disconnect). Raises ApiError; counts the outcome."""
    ctx = _ctx(request)
    job = await admit_job(body, request)
    try:
        jr = await ctx.async_engine.solve(job, client_gone(request))
    except asyncio.CancelledError:
        ctx.count_answer(job, "cancelled")
        raise
    ctx.count_answer(job, "ok")
    return job, jr


@api.post("/solve", response_model=SolveResponse, response_model_exclude_unset=True)
async def solve(body: SolveRequest, request: Request) -> SolveResponse:
    job, jr = await solve_job(body, request)
    return solve_response(job, body, jr)


# /v1/adapters (the OpenAI-shaped /v1/models is in server.openai_routes) ----------------------
def _card(info: AdapterInfo, engine: Engine) -> AdapterCard:
    return AdapterCard(**vars(info), default=info.name == engine.default_adapter)


@api.get("/adapters", response_model=AdapterList)
async def adapters(request: Request) -> AdapterList:
    engine = _ctx(request).engine
    default = engine.adapter(engine.default_adapter or "")
    if default is None:
        raise unavailable("unavailable_error", "the model is not loaded yet", _ctx(request).settings.retry_after_s)
    cards = [_card(a, engine) for a in engine.adapters()]
    return AdapterList(base_model=default.base_model, default_adapter=default.name, adapters=cards)


async def _on_engine(request: Request, fn: Callable[[Runner], Any]) -> Any:
    ctx = _ctx(request)
    if ctx.engine.draining:
        raise unavailable("unavailable_error", "the server is draining", ctx.settings.retry_after_s)
    return await ctx.async_engine.call(fn)


def _runtime_adapters_on(settings: Settings) -> None:
    if not settings.runtime_adapters:
        raise forbidden(
            "loading and unloading adapters at run time is off on this server; start it with "
            "--adapter-root DIR (KAVA_ADAPTER_ROOTS) to allow loading adapter directories inside DIR"
        )


def _not_an_adapter(given: str, problems: list[str] | None = None) -> ApiError:
    """The one 422 for a path that is not a loadable adapter. Without `problems` (missing,
    outside the roots, not a directory: indistinguishable on purpose) it says nothing about
    the file system; with them (a directory inside a root) it names each bad file."""
    message = f"path {given!r} is not an adapter directory inside the server's adapter roots"
    if problems:
        message = f"path {given!r} is not a valid adapter: " + "; ".join(problems)
    return invalid("path", message)


def _confined_adapter(given: str, settings: Settings) -> Path:
    """The resolved adapter directory, checked; raises the one 422 otherwise (runs in a thread)."""
    path = find_adapter_dir(given, settings.adapter_roots)
    if path is None:
        raise _not_an_adapter(given)
    try:
        read_manifest(path)
    except AdapterError as exc:
        raise _not_an_adapter(given, [p.replace(str(path), given) for p in exc.problems]) from exc
    return path


@api.post("/adapters", status_code=201, response_model=AdapterCard, responses=ADMIN_ERRORS)
async def load_adapter(body: AdapterLoadRequest, request: Request) -> AdapterCard:
    """Load the adapter directory `path` (inside one of the server's adapter roots) as `name` (admin)."""
    ctx = _ctx(request)
    _runtime_adapters_on(ctx.settings)
    if ctx.engine.adapter(body.name) is not None:
        raise conflict(f"adapter name {body.name!r} is already loaded; DELETE it first or pick another name", "name")
    path = await asyncio.to_thread(_confined_adapter, body.path, ctx.settings)
    try:
        info = await _on_engine(request, lambda runner: runner.add_adapter(body.name, path))
    except AdapterConflict as exc:
        raise conflict(str(exc), "name") from exc
    except AdapterError as exc:
        raise _not_an_adapter(body.path, [p.replace(str(path), body.path) for p in exc.problems]) from exc
    finally:
        ctx.budgets.forget(body.name)
    return _card(info, ctx.engine)


@api.delete("/adapters/{name}", response_model=AdapterDeleted, responses=ADMIN_ERRORS)
async def unload_adapter(
    name: Annotated[str, PathParam(pattern=ADAPTER_NAME, description="a loaded adapter's name")], request: Request
) -> AdapterDeleted:
    """Unload an adapter loaded at run time (admin); the default adapter owns the base and stays."""
    ctx = _ctx(request)
    _runtime_adapters_on(ctx.settings)
    if ctx.engine.adapter(name) is None:
        raise not_found(f"adapter {name!r} is not loaded", "name")
    try:
        await _on_engine(request, lambda runner: runner.remove_adapter(name))
    except AdapterNotLoaded as exc:
        raise not_found(str(exc), "name") from exc
    except AdapterConflict as exc:
        raise conflict(str(exc), "name") from exc
    finally:
        ctx.budgets.forget(name)
    return AdapterDeleted(name=name)


# Probes and metrics ------------------------------------------------------------------------
@probes.get("/health", response_model=HealthResponse, responses={503: {"model": ErrorEnvelope}})
async def health(request: Request):
    engine = _ctx(request).engine
    if engine.alive:
        return HealthResponse(status="ok")
    return envelope(503, "engine_dead", f"the engine thread is not running: {engine.error!r}")


@probes.get("/ready", response_model=HealthResponse, responses={503: {"model": ErrorEnvelope}})
async def ready(request: Request):
    ctx = _ctx(request)
    if ctx.engine.ready:
        return HealthResponse(status="ready")
    state = "draining" if ctx.engine.draining else ctx.engine.snapshot().state
    headers = {"Retry-After": str(ctx.settings.retry_after_s)}
    return envelope(503, "unavailable_error", f"not ready: {state}", None, headers)


@probes.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    ctx = _ctx(request)
    body, content_type = ctx.metrics.render(ctx.engine.snapshot(), ctx.engine.memory(), ctx.engine.adapters())
    return Response(body, media_type=content_type)
