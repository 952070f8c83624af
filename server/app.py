"""The app factory: `create_app(settings, engine=None)` wires settings, engine, metrics, routes.

Nothing happens at import time. Without an engine the factory prepares one that loads the
configured adapters (or the built-in model) on its own thread when the app starts; tests
pass a small engine over a tiny model. The lifespan starts the engine and waits for the
model to load (a load error fails start-up, so `kava serve` exits with the reason), and
on shutdown drains it: admission stops, queued and running work finishes within
`drain_timeout_s`, then the thread ends (`server.context.ServerContext`, which the handlers
share). Imports the routes; no route imports it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request

from server.async_engine import AsyncEngine
from server.budget import Budgets
from server.context import ServerContext
from server.engine import Engine
from server.errors import install
from server.metrics import Metrics
from server.middleware import GuardMiddleware, RequestIdMiddleware
from server.openai_routes import OPENAI_SOLVE_PATHS
from server.openai_routes import router as openai_api
from server.openapi import openapi_document
from server.routes import SOLVE_PATH, api, probes
from server.runner import ModelRunner, Runner
from server.settings import Settings, redact

log = logging.getLogger(__name__)


def build_engine(settings: Settings, runner: Runner | None = None) -> Engine:
    """An engine with `settings`' limits over `runner`, or, without one, over the adapters
    `settings` name (the built-in model by default), loaded when the engine starts."""
    load = None
    if runner is None:
        load = partial(
            ModelRunner.load,
            settings.served_adapters(),
            base_model=settings.base_model,
            device=settings.device,
            dtype=settings.dtype,
            graphs=settings.cuda_graphs,
        )
    return Engine(
        runner,
        load=load,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_size=settings.max_queue_size,
        warmup=settings.warmup,
    )


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    engine = engine if engine is not None else build_engine(settings)
    metrics = Metrics()
    engine.observer = metrics
    async_engine = AsyncEngine(
        engine, request_timeout_s=settings.request_timeout_s, retry_after_s=settings.retry_after_s
    )
    answering = frozenset({SOLVE_PATH, *OPENAI_SOLVE_PATHS})
    ctx = ServerContext(settings, engine, async_engine, metrics, Budgets(async_engine), answering)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("starting with settings %s", redact(settings))
        await ctx.start()
        try:
            yield
        finally:
            await ctx.stop()

    app = FastAPI(
        title="kava",
        description="KaVa latent reasoning: one math question in, one answer out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.kava = ctx
    install(app, ctx.count_error)
    app.include_router(api)
    app.include_router(openai_api)
    app.include_router(probes)
    app.openapi = partial(openapi_document, app, settings)
    app.add_middleware(
        GuardMiddleware,
        api_key=settings.api_key,
        admin_api_key=settings.admin_api_key,
        max_body_bytes=settings.max_body_bytes,
        on_reject=lambda scope, status: ctx.count_error(Request(scope), status, None),
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: rejections carry X-Request-Id too
    return app
