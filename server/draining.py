"""`DrainingServer`: the uvicorn server `kava serve` runs, whose first exit signal drains.

The first SIGTERM (or Ctrl+C) drains: /ready and new requests turn 503 + Retry-After while
queued and running requests finish (at most `drain_timeout_s`), then uvicorn closes and the
process exits 0. A second signal exits at once. Does not own the drain itself
(`server.context.ServerContext.drain`) nor the command line (`server.cli`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from server.context import ServerContext

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the engine before closing."""

    def __init__(self, config: uvicorn.Config, ctx: ServerContext):
        super().__init__(config)
        self.ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None
        self._signalled = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or still starting: exit now
            return
        self._signalled = True
        log.info("%s received: draining before exit (again to exit at once)", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self.ctx.drain()
        self.should_exit = True
