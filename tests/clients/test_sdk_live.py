"""The SDK, both twins, against a live server: uvicorn on 127.0.0.1 serving a tiny adapter from disk.

The server is the real one (`create_app` loading the saved adapter, under uvicorn in a thread,
from `tests/server/server_harness.py`); the client is the real SDK over real sockets. Each
test runs once with `Client` and once with `AsyncClient`. Every response's `X-Request-Id` is
recorded next to the one the SDK sent, so the tests can check the server echoed it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from kava_client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)
from tiny import make_model

from kava.adapters import load_adapter, save_adapter
from kava.generate import solve_batch

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "server"))  # the server tests' harness
from server_harness import QUESTIONS, live_server, settings

from server.app import create_app

QUESTION_LIMIT = 200  # max_question_chars of the live servers
API_KEY = "sk-live-test"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from a second thread on a shared CPU
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adapter_dir(tiny_bases, tmp_path_factory) -> Path:
    return save_adapter(make_model(tiny_bases["llama"], seed=1), tmp_path_factory.mktemp("live") / "tiny")


@pytest.fixture(scope="module")
def other_adapter_dir(tiny_bases, tmp_path_factory) -> Path:
    return save_adapter(make_model(tiny_bases["llama"], seed=2), tmp_path_factory.mktemp("live") / "other")


def _serve(adapter_dir: Path, **overrides: Any) -> Iterator[str]:
    app = create_app(settings(adapters=[f"tiny={adapter_dir}"], max_question_chars=QUESTION_LIMIT, **overrides))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def base_url(adapter_dir, other_adapter_dir) -> Iterator[str]:
    yield from _serve(adapter_dir, adapter_roots=[other_adapter_dir.parent])


@pytest.fixture(scope="module")
def keyed_url(adapter_dir) -> Iterator[str]:
    yield from _serve(adapter_dir, api_key=API_KEY)


@dataclass
class Live:
    """Calls one SDK method with a fresh `Client` or `AsyncClient`; records (sent id, echoed id)."""

    kind: str
    base_url: str
    ids: list[tuple[str, str | None]] = field(default_factory=list)

    def _record(self, response: httpx.Response) -> None:
        self.ids.append((response.request.headers["x-request-id"], response.headers.get("x-request-id")))

    def __call__(self, method: str, *args: Any, api_key: str | None = None, **kwargs: Any) -> Any:
        options = dict(base_url=self.base_url, api_key=api_key, max_retries=0)
        if self.kind == "sync":
            with (
                httpx.Client(event_hooks={"response": [self._record]}) as http,
                Client(http_client=http, **options) as c,
            ):
                return getattr(c, method)(*args, **kwargs)

        async def record(response: httpx.Response) -> None:
            self._record(response)

        async def go() -> Any:
            async with httpx.AsyncClient(event_hooks={"response": [record]}) as http:
                async with AsyncClient(http_client=http, **options) as c:
                    return await getattr(c, method)(*args, **kwargs)

        return asyncio.run(go())

    @property
    def last_id(self) -> str:
        sent, echoed = self.ids[-1]
        assert sent == echoed, f"the server answered X-Request-Id {echoed!r} to {sent!r}"
        return sent


@pytest.fixture(params=["sync", "async"])
def sdk(request, base_url) -> Live:
    return Live(request.param, base_url)


def test_probes_and_models(sdk):
    assert sdk("health") is True and sdk("ready") is True
    models = sdk("models")
    assert models.model_extra == {} and all(a.model_extra == {} for a in models.adapters)
    assert models.default_adapter == "tiny" and models.adapter_names == ["tiny"]
    tiny = models.adapter("tiny")
    assert (tiny.M, tiny.T, tiny.dtype, tiny.device, tiny.default) == (3, 3, "float32", "cpu", True)
    assert models.base_model is not None and models.base_model.name == tiny.base_model


def test_solve_latent_with_latents(sdk, adapter_dir):
    r = sdk("solve", QUESTIONS[0], return_latents=True)
    assert r.id == sdk.last_id and r.model_extra == {}
    assert (r.mode, r.adapter) == ("latent", "tiny")
    assert r.usage.latent_tokens == 3 and r.usage.generated_tokens >= 1
    assert r.usage.forward_passes == 1 + 3 + r.usage.generated_tokens - 1  # prefill + init, T (+ <eot> P), rest
    assert r.latents is not None and len(r.latents) == 3 and all(len(slot) == 1 for slot in r.latents)
    assert r.kv_cache_bytes > 0 and r.timings_ms.total >= r.timings_ms.latent > 0
    alone = solve_batch(load_adapter(adapter_dir), [QUESTIONS[0]], max_new_tokens=6).results[0]
    assert (r.text, r.answer) == (alone.text, alone.answer)  # the server answers what the library does


def test_solve_cot(sdk):
    r = sdk("solve", QUESTIONS[1], mode="cot", max_new_tokens=4, return_latents=True)
    assert (r.mode, r.adapter, r.latents) == ("cot", "tiny", None)
    assert r.usage.latent_tokens == 0 and r.usage.generated_tokens == 4 and r.timings_ms.latent == 0


def test_load_solve_with_it_unload_then_not_found(sdk, other_adapter_dir):
    name = f"other-{sdk.kind}"
    info = sdk("load_adapter", name, str(other_adapter_dir))
    try:
        assert (info.name, info.M, info.T, info.default) == (name, 3, 3, False) and info.model_extra == {}
        assert sdk("models").adapter_names == ["tiny", name]
        r = sdk("solve", QUESTIONS[2], adapter=name)
        assert r.adapter == name and r.usage.latent_tokens == 3
    finally:
        assert sdk("unload_adapter", name) is None
    assert sdk("models").adapter_names == ["tiny"]
    with pytest.raises(NotFoundError) as info:
        sdk("solve", QUESTIONS[2], adapter=name, request_id=f"gone-{sdk.kind}")
    assert info.value.status == 404 and info.value.param == "adapter" and name in info.value.message
    assert info.value.request_id == sdk.last_id == f"gone-{sdk.kind}"
    with pytest.raises(NotFoundError):
        sdk("unload_adapter", name)


def test_a_taken_name_is_a_conflict_error(sdk, other_adapter_dir):
    with pytest.raises(ConflictError) as info:
        sdk("load_adapter", "tiny", str(other_adapter_dir))
    assert info.value.status == 409 and info.value.param == "name"
    with pytest.raises(ConflictError, match="owns the base"):
        sdk("unload_adapter", "tiny")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_loading_is_refused_without_an_adapter_root(kind, keyed_url, other_adapter_dir):
    sdk = Live(kind, keyed_url)
    with pytest.raises(PermissionDeniedError) as info:
        sdk("load_adapter", "x", str(other_adapter_dir), api_key=API_KEY)
    assert info.value.status == 403 and "--adapter-root" in info.value.message


def test_oversized_question_is_a_422_naming_the_field_and_limit(sdk):
    with pytest.raises(UnprocessableEntityError) as info:
        sdk("solve", "9" * (QUESTION_LIMIT + 1))
    e = info.value
    assert (e.status, e.error_type, e.param) == (422, "invalid_request_error", "question")
    assert f"{QUESTION_LIMIT + 1} characters" in e.message and f"limit is {QUESTION_LIMIT}" in e.message
    assert e.request_id == sdk.last_id


def test_request_id_is_echoed(sdk):
    r = sdk("solve", QUESTIONS[3], request_id=f"trace-{sdk.kind}-1")
    assert r.id == sdk.last_id == f"trace-{sdk.kind}-1"
    r = sdk("solve", QUESTIONS[3])  # the SDK makes one up; the server keeps it
    assert r.id == sdk.last_id and len(r.id) == 32


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_api_key_is_required_on_v1_when_set(kind, keyed_url, other_adapter_dir):
    sdk = Live(kind, keyed_url)
    for key in (None, "sk-wrong"):
        for method, args in [("solve", (QUESTIONS[0],)), ("models", ()), ("load_adapter", ("x", other_adapter_dir))]:
            with pytest.raises(AuthenticationError) as info:
                sdk(method, *args, api_key=key)
            assert info.value.status == 401 and info.value.error_type == "authentication_error"
            assert info.value.request_id == sdk.last_id
    assert sdk("solve", QUESTIONS[0], api_key=API_KEY).adapter == "tiny"
    assert sdk("health") is True and sdk("ready") is True  # probes never need the key


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_server_that_is_gone_is_a_connection_error(kind):
    dead = Live(kind, "http://127.0.0.1:9")  # the discard port: nothing listens on loopback
    assert dead("health") is False
    with pytest.raises(APIConnectionError, match="failed"):
        dead("solve", "q")
