"""Test helpers: settings, an app over a given runner, clients in-process and on loopback,
runners that misbehave on purpose, and /metrics parsing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from server.app import build_engine, create_app
from server.settings import Settings

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 12 pens and 5 are red. How many are not red?",
    "Sara reads 6 pages a day for 5 days. How many pages?",
    "There are 20 cookies shared by 4 kids. How many does each get?",
    "A farmer has 7 cows and buys 8 more. How many cows now?",
    "Ann had 15 stickers and gave 6 away. How many are left?",
    "Each of 3 boxes holds 9 eggs. How many eggs in all?",
    "Ben saves 4 dollars a week for 6 weeks. How much does he save?",
]


def settings(**overrides) -> Settings:
    base = dict(warmup=False, max_wait_ms=50.0, max_new_tokens_latent=6, max_new_tokens_cot=6)
    return Settings(**{**base, **overrides})


def app_over(runner, **overrides):
    s = settings(**overrides)
    return create_app(s, build_engine(s, runner))


@asynccontextmanager
async def client_for(app, **kwargs) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan (engine start, drain on exit) and an in-process client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kava", **kwargs) as client:
            yield client


def run(coro):
    return asyncio.run(coro)


@contextmanager
def live_server(app) -> Iterator[str]:
    """The app under a real uvicorn on a loopback port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


class HookedRunner:
    """A runner that calls `hook(batch)` before each step; all else is the inner runner's."""

    def __init__(self, inner, hook: Callable):
        self.inner, self.hook = inner, hook
        self.default = inner.default
        self.seen: list[str] = []
        self.outputs: list = []

    def step(self, batch):
        self.seen += batch.questions
        self.hook(batch)
        out = self.inner.step(batch)
        self.outputs.append(out)
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def gated(inner) -> tuple[HookedRunner, threading.Event]:
    """A runner whose steps block until the returned event is set."""
    gate = threading.Event()
    return HookedRunner(inner, lambda batch: gate.wait(30)), gate


def metric_samples(text: str) -> dict[str, list]:
    """Family name -> samples, from the exposition text (also proves it parses)."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def sample_value(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)
