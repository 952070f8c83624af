"""Client behaviour: request bodies and headers, env fallbacks, typed responses, probes, lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import json

import httpx
import pytest
from kava_client import AsyncClient, Client, NotFoundError, SolveResponse

from server.settings import Settings


def test_solve_sends_only_the_given_knobs_and_parses_the_response(twin, server, solve_ok):
    fake = server(solve_ok(latents=[["5", "+"], ["3"]], engine="v2"))
    response = twin.call(
        fake, "solve", "What is 5 + 3?", adapter="gsm8k", max_new_tokens=16, num_iterations=2, return_latents=True
    )
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/solve")
    assert json.loads(request.content) == {
        "question": "What is 5 + 3?",
        "mode": "latent",
        "adapter": "gsm8k",
        "max_new_tokens": 16,
        "num_iterations": 2,
        "return_latents": True,
    }
    assert isinstance(response, SolveResponse)
    assert response.answer == "42" and response.adapter == "gsm8k"
    assert response.usage.forward_passes == 9 and response.timings_ms.total == 10.0
    assert response.kv_cache_bytes == 123456
    assert response.latents == [["5", "+"], ["3"]]
    assert response.model_extra == {"engine": "v2"}  # a newer server's extra field is kept, not an error


def test_minimal_solve_body_and_null_answer(twin, server, solve_ok):
    fake = server(solve_ok(answer=None, mode="cot", kv_cache_bytes=None))
    response = twin.call(fake, "solve", "q", mode="cot")
    assert json.loads(fake.requests[0].content) == {"question": "q", "mode": "cot"}
    assert response.answer is None and response.mode == "cot"


def test_a_request_id_is_sent_per_call(twin, server, solve_ok):
    fake = server(solve_ok())
    twin.call(fake, "solve", "q")
    twin.call(fake, "solve", "q")
    twin.call(fake, "solve", "q", request_id="trace-123")
    generated = fake.request_ids[:2]
    assert all(rid and len(rid) == 32 for rid in generated) and generated[0] != generated[1]
    assert fake.request_ids[2] == "trace-123"


def test_env_fallbacks_for_base_url_and_api_key(twin, server, solve_ok, monkeypatch):
    monkeypatch.setenv("KAVA_BASE_URL", "http://gpu-box:9000/")
    monkeypatch.setenv("KAVA_API_KEY", "sk-env")
    fake = server(solve_ok())
    twin.call(fake, "solve", "q")
    request = fake.requests[0]
    assert str(request.url) == "http://gpu-box:9000/v1/solve"
    assert request.headers["authorization"] == "Bearer sk-env"


def test_arguments_win_over_env(twin, server, solve_ok, monkeypatch):
    monkeypatch.setenv("KAVA_BASE_URL", "http://gpu-box:9000")
    monkeypatch.setenv("KAVA_API_KEY", "sk-env")
    fake = server(solve_ok())
    twin.call(fake, "solve", "q", client={"base_url": "https://kava.example:8443/", "api_key": "sk-arg"})
    assert str(fake.requests[0].url) == "https://kava.example:8443/v1/solve"
    assert fake.requests[0].headers["authorization"] == "Bearer sk-arg"


def test_defaults_without_env(twin, server, solve_ok):
    fake = server(solve_ok())
    twin.call(fake, "solve", "q")
    assert str(fake.requests[0].url) == "http://127.0.0.1:8000/v1/solve"
    assert "authorization" not in fake.requests[0].headers
    assert fake.requests[0].headers["user-agent"].startswith("kava-client/")


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_bad_base_url_is_a_value_error(cls):
    with pytest.raises(ValueError, match="base_url='gpu-box:8000'"):
        cls(base_url="gpu-box:8000")


def test_timeouts_per_client_and_per_call(twin, server, solve_ok):
    fake = server(solve_ok())
    twin.call(fake, "solve", "q")
    twin.call(fake, "solve", "q", client={"timeout": 7})
    twin.call(fake, "solve", "q", client={"timeout": 7}, timeout=2.5)
    twin.call(fake, "solve", "q", client={"timeout": None})
    seen = [r.extensions["timeout"] for r in fake.requests]
    assert seen[0] == {"connect": 5.0, "read": 180.0, "write": 180.0, "pool": 180.0}
    # longer than the server's deadline: a slow solve ends in the server's 504, not in a re-send
    assert seen[0]["read"] > Settings.model_fields["request_timeout_s"].default
    assert seen[1]["read"] == 7.0
    assert seen[2] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert seen[3] == {"connect": None, "read": None, "write": None, "pool": None}


@pytest.mark.parametrize("bad", [0, -1, "10", True])
def test_bad_timeout_is_a_value_error(bad):
    with pytest.raises(ValueError, match="timeout="):
        Client(timeout=bad)


def test_models_parses_base_model_and_adapters(twin, server):
    body = {
        "base_model": {"name": "meta-llama/Llama-3.2-1B-Instruct", "dtype": "bfloat16", "device": "cuda:0"},
        "adapters": [
            {"name": "gsm8k", "num_latents": 24, "num_iterations": 3, "dtype": "bfloat16", "device": "cuda:0"},
            {"name": "tiny", "M": 6, "T": 2, "path": "/models/tiny"},
        ],
    }
    models = twin.call(server(httpx.Response(200, json=body)), "models")
    assert models.base_model.name == "meta-llama/Llama-3.2-1B-Instruct" and models.base_model.device == "cuda:0"
    assert models.adapter_names == ["gsm8k", "tiny"]
    assert (models.adapter("gsm8k").M, models.adapter("gsm8k").T) == (24, 3)
    assert (models.adapter("tiny").num_latents, models.adapter("tiny").num_iterations) == (6, 2)
    assert models.adapter("tiny").model_extra == {"path": "/models/tiny"}
    with pytest.raises(KeyError, match="loaded: \\['gsm8k', 'tiny'\\]"):
        models.adapter("nope")


def test_models_accepts_a_plain_base_model_name(twin, server):
    body = {"base_model": "kava-builtin", "dtype": "float32", "device": "cpu", "adapters": []}
    models = twin.call(server(httpx.Response(200, json=body)), "models")
    assert (models.base_model.name, models.base_model.dtype, models.base_model.device) == (
        "kava-builtin",
        "float32",
        "cpu",
    )


@pytest.mark.parametrize("probe", ["health", "ready"])
def test_probes(twin, server, probe):
    assert twin.call(server(httpx.Response(200, json={"status": "ok"})), probe) is True
    assert twin.call(server(httpx.Response(503, headers={"Retry-After": "5"})), probe) is False
    assert twin.call(server(httpx.ConnectError), probe) is False
    fake = server(httpx.Response(200))
    twin.call(fake, probe)
    assert fake.requests[0].url.path == f"/{probe}"
    with pytest.raises(NotFoundError):  # a wrong base URL is a mistake, not "unhealthy"
        twin.call(server(httpx.Response(404)), probe)


def test_load_and_unload_adapter(twin, server):
    info = {"name": "math v2", "num_latents": 24, "num_iterations": 3, "dtype": "float32", "device": "cpu"}
    fake = server(httpx.Response(201, json=info), httpx.Response(204))
    loaded = twin.call(fake, "load_adapter", "math v2", "/models/adapters/math-v2")
    assert loaded.name == "math v2" and loaded.M == 24
    assert fake.requests[0].url.path == "/v1/adapters"
    assert json.loads(fake.requests[0].content) == {"name": "math v2", "path": "/models/adapters/math-v2"}
    assert twin.call(fake, "unload_adapter", "math v2") is None
    assert fake.requests[1].method == "DELETE"
    assert fake.requests[1].url.raw_path == b"/v1/adapters/math%20v2"


def test_load_adapter_accepts_a_wrapped_answer(twin, server):
    body = {"adapter": {"name": "a", "num_latents": 4, "num_iterations": 1}, "loaded_in_ms": 12}
    assert twin.call(server(httpx.Response(200, json=body)), "load_adapter", "a", "/models/a").T == 1


def test_unknown_adapter_on_unload(twin, server, error):
    with pytest.raises(NotFoundError):
        twin.call(server(error(404, "adapter_not_found", "no adapter 'x'")), "unload_adapter", "x")


def test_context_manager_closes_only_its_own_http_client():
    with Client() as owned:
        pass
    assert owned._http.is_closed
    mine = httpx.Client()
    with Client(http_client=mine):
        pass
    assert not mine.is_closed
    mine.close()


def test_async_context_manager_closes_only_its_own_http_client():
    async def go() -> tuple[bool, bool]:
        async with AsyncClient() as owned:
            pass
        mine = httpx.AsyncClient()
        async with AsyncClient(http_client=mine):
            pass
        still_open = not mine.is_closed
        await mine.aclose()
        return owned._http.is_closed, still_open

    assert asyncio.run(go()) == (True, True)


def test_injected_http_client_is_used(server, solve_ok):
    fake = server(solve_ok())
    with httpx.Client(transport=httpx.MockTransport(fake)) as http, Client(http_client=http) as client:
        assert client.solve("q").answer == "42"
    assert len(fake.requests) == 1


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_http_client_and_transport_are_exclusive(cls):
    http = httpx.Client() if cls is Client else httpx.AsyncClient()
    with pytest.raises(ValueError, match="not both"):
        cls(http_client=http, transport=httpx.MockTransport(lambda r: httpx.Response(200)))


def test_repr_hides_the_api_key():
    assert "sk-secret" not in repr(Client(api_key="sk-secret"))


SYNC_ON_BOTH = {"with_options"}


def test_the_clients_are_twins():
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    sync, async_ = public(Client), public(AsyncClient)
    assert sync.keys() == async_.keys() >= {"solve", "models", "health", "ready", "load_adapter", "unload_adapter"}
    for name in sync:
        assert list(sync[name].parameters) == list(async_[name].parameters), name
        # every call to the server is a coroutine on AsyncClient; copying a client is not a call
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)) == (name not in SYNC_ON_BOTH), name
    assert list(inspect.signature(Client).parameters) == list(inspect.signature(AsyncClient).parameters)


def test_default_headers_go_on_every_request(twin, server, solve_ok):
    fake = server(solve_ok())
    twin.call(fake, "solve", "q", client={"default_headers": {"X-Team": "math", "User-Agent": "mine/1"}})
    headers = fake.requests[0].headers
    assert headers["x-team"] == "math" and headers["user-agent"] == "mine/1"
    assert headers["x-request-id"]  # still one per request


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_with_options_copies_and_shares_the_pool(cls):
    base = cls(base_url="http://a:1", api_key="k", default_headers={"X-A": "1"})
    other = base.with_options(timeout=600, max_retries=0, default_headers={"X-B": "2"}, base_url="http://b:2")
    assert type(other) is cls and other._http is base._http
    assert (other.base_url, other.max_retries, other.timeout.read) == ("http://b:2", 0, 600.0)
    assert other.default_headers == {"X-A": "1", "X-B": "2"} and other.api_key == "k"
    assert (base.base_url, base.max_retries, base.timeout.read, base.default_headers) == (
        "http://a:1",
        2,
        180.0,
        {"X-A": "1"},
    )
    assert base.with_options(timeout=None).timeout.read is None
    with pytest.raises(ValueError, match="base_url"):
        base.with_options(base_url="nope")
    if cls is Client:
        other.close()  # the copy does not own the pool
        assert not base._http.is_closed
        base.close()
        assert base._http.is_closed


def test_with_options_sends_with_the_new_options(twin, server, solve_ok):
    fake = server(solve_ok())
    transport = httpx.MockTransport(fake)
    with Client(transport=transport, api_key="k") as client:
        client.with_options(api_key="other", default_headers={"X-Trace": "t1"}).solve("q", timeout=3)
        client.solve("q")
    first, second = fake.requests
    assert first.headers["authorization"] == "Bearer other" and first.headers["x-trace"] == "t1"
    assert second.headers["authorization"] == "Bearer k" and "x-trace" not in second.headers
