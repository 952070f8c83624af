"""The app factory: `create_app(settings, engine=None)` wires settings, engine, metrics, routes.

Nothing happens at import time. Without an engine the factory prepares one that loads the
configured adapters (or the built-in model) on its own thread when the app starts; tests
pass a small engine over a tiny model. The lifespan starts the engine and waits for the
model to load (a load error fails start-up, so `kava serve` exits with the reason), and
on shutdown drains it: admission stops, queued and running work finishes within
`drain_timeout_s`, then the thread ends. `ServerContext.drain` is also what `kava serve`
runs on SIGTERM before it lets uvicorn close (see `server.draining`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI, Request

from kava.config import MODES
from server.budget import Budgets
from server.engine import Engine
from server.errors import OUTCOME_BY_STATUS, install
from server.metrics import Metrics
from server.middleware import GuardMiddleware, RequestIdMiddleware
from server.openai_routes import OPENAI_SOLVE_PATHS
from server.openai_routes import router as openai_api
from server.openapi import openapi_document
from server.routes import SOLVE_PATH, api, probes
from server.runner import ModelRunner, Runner
from server.settings import Settings, redact

log = logging.getLogger(__name__)


@dataclass
class ServerContext:
    """What the handlers share: `app.state.kava`."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    budgets: Budgets  # each adapter's context budget (server.budget)

    async def start(self) -> None:
        self.engine.start()
        await asyncio.to_thread(self.engine.wait_loaded)

    async def drain(self) -> bool:
        """Stop admitting, then wait (at most drain_timeout_s) for the engine to go idle."""
        if not self.engine.draining:
            log.info("draining: no new requests; finishing the queued and running ones")
        self.engine.begin_drain()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while not self.engine.idle() and self.engine.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        drained = self.engine.idle()
        if not drained:
            log.warning("drain timed out after %.1f s with work left", self.settings.drain_timeout_s)
        return drained

    async def stop(self) -> None:
        drained = await self.drain()
        await asyncio.to_thread(self.engine.stop, 5.0 if drained else 0.1)

    def count_error(self, request: Request, status: int, mode: object) -> None:
        if request.url.path in (SOLVE_PATH, *OPENAI_SOLVE_PATHS):
            label = mode if mode in MODES else "unknown"
            # the handler sets request.state.adapter once the name resolved to a loaded adapter
            adapter = getattr(request.state, "adapter", "")
            self.metrics.record_outcome(OUTCOME_BY_STATUS.get(status, "error"), label, adapter)


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
    ctx = ServerContext(settings, engine, metrics, Budgets(engine))

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
