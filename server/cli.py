"""`kava serve`: run the inference server under uvicorn, with a draining shutdown.

Flags map one-to-one onto `server.settings.Settings` fields; a flag that is not given
leaves the field to its `KAVA_*` variable or default. With no adapter it serves the
built-in model, or exits with how to build it. The first SIGTERM (or Ctrl+C) drains:
/ready and new requests turn 503 + Retry-After while queued and running requests finish
(at most `drain_timeout_s`), then uvicorn closes and the process exits 0. A second
signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from types import FrameType

import uvicorn
from pydantic import ValidationError

from kava.adapters import AdapterError, read_adapter_config
from server.app import ServerContext, create_app
from server.settings import AdapterSpec, BuiltinMissing, Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--adapter", dest="adapters", action="append", metavar="NAME=PATH",
        help="adapter to serve (repeatable; the first is the default). Default: the built-in model")  # fmt: skip
    add("--base-model", help="base model id or directory, overriding the one the adapter records")
    add("--device", help="auto (default), cpu, cuda, cuda:N")
    add("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    add("--host", help="interface to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port (default 8000)")
    add("--max-batch-size", type=int, help="requests per batch at most (default 32)")
    add("--max-wait-ms", type=float, help="how long the oldest request waits for a fuller batch (default 10)")
    add("--max-queue-size", type=int, help="waiting requests before 503 (default 256)")
    add("--request-timeout-s", type=float, help="deadline per request before 504 (default 120)")
    add("--drain-timeout-s", type=float, help="grace period for queued work on SIGTERM (default 60)")
    add("--max-question-chars", type=int, help="longest question accepted (default 2000)")
    add("--max-new-tokens-limit", type=int, help="largest max_new_tokens a request may ask (default 1024)")
    add("--max-num-iterations", type=int, help="largest num_iterations (T) a request may ask (default 32)")
    add("--api-key", help="require this key on /v1/* (prefer the KAVA_API_KEY variable)")
    add("--no-warmup", dest="warmup", action="store_const", const=False, help="skip the warm-up solve")
    add("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields}
    return Settings(**given)


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


def _check_adapters(adapters: Sequence[AdapterSpec]) -> list[str]:
    """Every adapter directory's problems, before anything is loaded."""
    problems = []
    for spec in adapters:
        try:
            read_adapter_config(spec.path)
        except AdapterError as exc:
            problems.append(f"{spec.name}: {exc}")
    return problems


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        problems = _check_adapters(settings.served_adapters())
    except ValidationError as exc:
        log.error("invalid server settings (flags or KAVA_* variables):\n%s", exc)
        return 2
    except BuiltinMissing as exc:
        log.error("%s", exc)
        return 2
    if problems:
        log.error("cannot serve:\n%s", "\n".join(problems))
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    server = DrainingServer(config, app.state.kava)
    server.run()
    if not server.started:
        log.error("the server did not start (see the error above)")
        return 1
    return 0
