"""A client that goes away has its request dropped and counted, under a real uvicorn:
from the queue before it runs, and from a running batch at the next decode step."""

from __future__ import annotations

import asyncio
import threading

import httpx
from server_harness import QUESTIONS, HookedRunner, app_over, live_server, metric_samples, run, sample_value, wait_until


def test_client_disconnect_drops_the_request_and_counts_it(runner):
    release = threading.Event()
    hooked = HookedRunner(runner, lambda batch: release.wait(30) if batch.questions[0] == QUESTIONS[0] else None)
    app = app_over(hooked, max_batch_size=1, max_wait_ms=0)
    engine = app.state.kava.engine

    async def cancelled(client) -> float:
        samples = metric_samples((await client.get("/metrics")).text)["kava_requests"]
        return sample_value(samples, "kava_requests_total", outcome="cancelled", mode="latent")

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = asyncio.ensure_future(client.post("/v1/solve", json={"question": QUESTIONS[0]}))
            await wait_until(lambda: engine.snapshot().running == 1)
            # 1. waiting in the queue behind the blocked batch, then the client leaves
            queued = asyncio.ensure_future(client.post("/v1/solve", json={"question": QUESTIONS[1]}))
            await wait_until(lambda: engine.snapshot().waiting == 1)
            queued.cancel()
            await wait_until(lambda: engine.snapshot().waiting == 0)
            release.set()
            assert (await first).status_code == 200
            # 2. inside a running batch: a long answer, abandoned mid-decode
            long = {"question": QUESTIONS[2], "max_new_tokens": 200}
            running = asyncio.ensure_future(client.post("/v1/solve", json=long))
            await wait_until(lambda: engine.snapshot().running == 1)
            await asyncio.sleep(0.05)
            running.cancel()
            await wait_until(lambda: engine.idle())
            await asyncio.sleep(0.05)
            return await cancelled(client)

    with live_server(app) as url:
        count = run(scenario(url))
    assert count == 2
    assert QUESTIONS[1] not in hooked.seen, "the queued request must never run"
    (dropped,) = hooked.outputs[-1].results
    assert dropped.finish_reason == "cancelled" and dropped.generated_tokens < 200
