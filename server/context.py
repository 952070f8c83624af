"""`ServerContext`: what the handlers share, as `app.state.kava`, and the server's lifecycle.

Holds the settings, the engine and its event-loop face (`server.async_engine`), the metrics
and each adapter's context budget; starts the engine and waits for the model, drains (admit
nothing new, let queued and running work finish within `drain_timeout_s`) and stops. Counts
the outcome of every request to an answering route. `ServerContext.drain` is also what
`kava serve` runs on SIGTERM before it lets uvicorn close (see `server.draining`). Does not
own the routes (which import it) nor the app's wiring (`server.app`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import Request

from kava.config import MODES
from server.async_engine import AsyncEngine
from server.batch import Job
from server.budget import Budgets
from server.engine import Engine
from server.errors import OUTCOME_BY_STATUS
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServerContext:
    settings: Settings
    engine: Engine
    async_engine: AsyncEngine  # the same engine, awaited from the event loop
    metrics: Metrics
    budgets: Budgets  # each adapter's context budget (server.budget)
    answering_paths: frozenset[str] = frozenset()  # the routes counted in kava_requests_total

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
        """A request to an answering route that failed with `status`."""
        if request.url.path in self.answering_paths:
            label = mode if mode in MODES else "unknown"
            # the handler sets request.state.adapter once the name resolved to a loaded adapter
            adapter = getattr(request.state, "adapter", "")
            self.metrics.record_outcome(OUTCOME_BY_STATUS.get(status, "error"), label, adapter)

    def count_answer(self, job: Job, outcome: str) -> None:
        """A job that reached the engine and was answered ("ok", with its E2E latency) or
        dropped because its caller gave up ("cancelled")."""
        self.metrics.record_outcome(outcome, job.key.mode, job.key.adapter)
        if outcome == "ok":
            self.metrics.record_e2e(job.key.mode, job.key.adapter, time.perf_counter() - job.arrival)
