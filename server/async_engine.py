"""`AsyncEngine`: the engine as the event loop sees it, and the one bridge between the two.

A handler hands it a `Job` and awaits the outcome (`solve`) or the answer's text as it is
decoded (`stream`), or runs a function on the engine thread between passes (`call`); the
event loop never blocks on the engine and never runs tensor code. The engine thread hands
each outcome and each token's text back through `loop.call_soon_threadsafe`.

Every job carries its deadline (arrival + `request_timeout_s`) into the engine, which drops
it at its next pass boundary, from the queue or from the running batch, and frees its cache
rows; the waiter stops waiting at the same moment and answers 504 without waiting for that
pass. A job whose waiter is cancelled or whose client disconnects is dropped the same way.
Failures leave as `ApiError`s with SERVING.md's statuses: 503 + Retry-After (queue full,
draining, not ready, engine stopped), 504 (deadline), 404 (the adapter was unloaded
meanwhile), 499 (the client went away), 500 naming the request id (the batch failed).
Does not own the request's checks and limits, the wire formats or the metrics
(`server.routes`), nor the engine itself (`server.engine`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from server.batch import Job, JobResult
from server.engine import (
    Cancelled,
    DeadlineExceeded,
    Draining,
    Engine,
    EngineDead,
    EngineFailure,
    NotReady,
    QueueFull,
)
from server.errors import ApiError, not_found, unavailable
from server.runner import AdapterNotLoaded, Runner

# returns once the client has gone away (e.g. it waits for ASGI's http.disconnect)
Disconnected = Callable[[], Awaitable[object]]


class AsyncEngine:
    """`engine`'s jobs and calls, awaited from the event loop."""

    def __init__(self, engine: Engine, *, request_timeout_s: float, retry_after_s: int) -> None:
        self.engine = engine
        self.request_timeout_s = request_timeout_s
        self.retry_after_s = retry_after_s

    def check_open(self) -> None:
        """Raise the 503 a draining or not yet ready engine gives, before any work is done."""
        if self.engine.draining:
            raise self._unavailable("the server is draining (shutting down); retry elsewhere")
        if not self.engine.ready:
            raise self._unavailable("the model is not ready yet (loading or warming up)")

    async def solve(self, job: Job, disconnected: Disconnected | None = None) -> JobResult:
        """Queue `job` with its deadline and await its result (see the module docstring)."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future = loop.create_future()
        job.done = partial(_hand_back, loop, outcome)
        job.deadline = job.arrival + self.request_timeout_s
        try:
            self.engine.submit(job)
        except QueueFull as exc:
            raise unavailable("overloaded_error", f"the server is at capacity: {exc}", self.retry_after_s) from exc
        except (Draining, NotReady, EngineDead) as exc:
            raise self._unavailable(str(exc)) from exc
        return await self._wait(job, outcome, disconnected)

    async def stream(self, job: Job, disconnected: Disconnected | None = None) -> AsyncIterator[str | JobResult]:
        """`solve`, with the answer's text as the engine decodes it: one piece per answer token
        (possibly empty; the pieces join to the answer before `strip()`), then the JobResult.
        Raises what `solve` raises; closing the iterator early drops the job."""
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue[str] = asyncio.Queue()
        job.on_token = lambda token_id, text: loop.call_soon_threadsafe(texts.put_nowait, text)  # engine thread
        answer = asyncio.ensure_future(self.solve(job, disconnected))
        # the job's outcome is handed over after its last token's text (one engine thread, one
        # FIFO of call_soon_threadsafe callbacks), so once `answer` is done every text is queued
        get = None
        try:
            while True:
                get = asyncio.ensure_future(texts.get())
                done, _ = await asyncio.wait({get, answer}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    break
                yield get.result()
            yield answer.result()  # raises what failed the job
        finally:
            if get is not None:
                get.cancel()
            answer.cancel()  # the consumer went away first: drop the job (no-op once it is done)

    async def call(self, fn: Callable[[Runner], Any]) -> Any:
        """`fn(runner)` on the engine thread, between passes; 503 when the engine is not running."""
        try:
            future: Future = self.engine.call(fn)
            return await asyncio.wrap_future(future)
        except EngineDead as exc:
            raise self._unavailable(str(exc)) from exc

    async def _wait(self, job: Job, outcome: asyncio.Future, disconnected: Disconnected | None) -> JobResult:
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        waiting = {outcome} if watcher is None else {outcome, watcher}
        timeout = max(job.deadline - time.perf_counter(), 0.0)
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.engine.cancel(job)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if outcome in done:
            result = outcome.result()
            if isinstance(result, JobResult):
                return result
            raise self._failure(result, job.id)
        self.engine.cancel(job)  # the engine would drop it at the deadline anyway; a disconnect is news to it
        if watcher is not None and watcher in done:
            raise _client_gone()
        raise self._timeout()

    def _failure(self, exc: BaseException, request_id: str) -> ApiError:
        if isinstance(exc, AdapterNotLoaded):
            return not_found(str(exc), "adapter")
        if isinstance(exc, DeadlineExceeded):  # the engine reached the deadline before the waiter did
            return self._timeout()
        if isinstance(exc, Cancelled):
            return _client_gone()
        reason = "the engine failed on this request's batch" if isinstance(exc, EngineFailure) else "the engine stopped"
        return ApiError(500, "engine_error", f"{reason} (request id {request_id}): {exc}")

    def _timeout(self) -> ApiError:
        limit = self.request_timeout_s
        return ApiError(
            504, "timeout_error", f"the request waited past its deadline of {limit:g} s (KAVA_REQUEST_TIMEOUT_S)"
        )

    def _unavailable(self, message: str) -> ApiError:
        return unavailable("unavailable_error", message, self.retry_after_s)


def _hand_back(loop: asyncio.AbstractEventLoop, outcome: asyncio.Future, value: JobResult | BaseException) -> None:
    """Engine thread -> event loop. Exceptions travel as values: nobody may be awaiting."""
    loop.call_soon_threadsafe(lambda: outcome.done() or outcome.set_result(value))


def _client_gone() -> ApiError:
    return ApiError(499, "cancelled_error", "the client closed the connection; the request was dropped")
