"""The OpenAI-compatible routes with the real `openai` package against a live server.

uvicorn serves the tiny Llama KaVa model on a loopback port (`server_harness.live_server`);
`openai.OpenAI` and `openai.AsyncOpenAI` talk to it over real sockets: chat and completions,
whole and streamed, both modes, the `kava` costs object, `/v1/models`, and every refusal
surfacing through the openai package's exceptions with the server's message and field.
Each answer is checked against `solve_batch` on the same model alone. Streams come from the
engine's per-token hook: a runner held after the first token shows the stream has begun,
and a client that hangs up mid-stream has its job dropped and counted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from server_harness import QUESTIONS, HookedRunner, app_over, live_server, metric_samples, sample_value

import server.openai_routes
from kava.generate import solve_batch
from server.errors import ApiError

QUESTION_LIMIT = 200  # max_question_chars of the live server
MAX_TOKENS_LIMIT = 64  # max_new_tokens_limit of the live server
API_KEY = "sk-openai-test"
QUESTION_BODY = {"model": "tiny", "messages": [{"role": "user", "content": QUESTIONS[0]}]}


@pytest.fixture(scope="module")
def base_url(runner):
    app = app_over(runner, max_question_chars=QUESTION_LIMIT, max_new_tokens_limit=MAX_TOKENS_LIMIT)
    with live_server(app) as url:
        yield url


@pytest.fixture
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def alone(model, question: str, mode: str = "latent", max_new_tokens: int = 6, **kw):
    return solve_batch(model, [question], mode=mode, max_new_tokens=max_new_tokens, **kw).results[0]


def kava_of(response) -> dict:
    costs = response.model_extra["kava"]
    assert set(costs) == {
        "request_id",
        "mode",
        "answer",
        "latent_tokens",
        "forward_passes",
        "kv_cache_bytes",
        "timings_ms",
        "latents",
    }
    return costs


# /v1/models ----------------------------------------------------------------------------------
def test_models_list_and_retrieve_in_openai_shape(client, base_url):
    page = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in page.data] == [("tiny", "model", "kava")]
    assert page.data[0].created > 1_600_000_000 and page.data[0].model_extra == {}
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.param == "model" and "'nope' is not loaded" in info.value.message
    raw = httpx.get(f"{base_url}/v1/models").json()
    assert raw["object"] == "list" and set(raw["data"][0]) == {"id", "object", "created", "owned_by"}
    # M, T, dtype and device live on at /v1/adapters
    adapters = httpx.get(f"{base_url}/v1/adapters").json()
    assert adapters["default_adapter"] == "tiny" and adapters["adapters"][0]["num_latents"] == 3


# chat ----------------------------------------------------------------------------------------
def test_chat_latent_matches_solving_alone(client, tiny_model):
    messages = [
        {"role": "system", "content": "You are a careful tutor."},  # read and ignored
        {"role": "user", "content": "An earlier question?"},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": QUESTIONS[0]},
        {"role": "assistant", "content": "The answer"},  # after the question: ignored too, not continued
    ]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6.0)  # JSON Schema's integer
    want = alone(tiny_model, QUESTIONS[0])
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, want.generated_tokens)
    assert r.usage.total_tokens == want.prompt_tokens + want.generated_tokens
    costs = kava_of(r)
    assert r.id == f"chatcmpl-{costs['request_id']}"
    assert (costs["mode"], costs["answer"], costs["latents"]) == ("latent", want.answer, None)
    assert (costs["latent_tokens"], costs["forward_passes"]) == (3, want.forward_passes)
    assert costs["kv_cache_bytes"] == want.kv_cache_bytes > 0
    assert set(costs["timings_ms"]) == {"queue", "prefill", "latent", "decode", "total"}
    assert costs["timings_ms"]["latent"] > 0


def test_chat_kava_knobs_through_extra_body(client, tiny_model):
    cot = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTIONS[1]}]}],
        max_completion_tokens=4,
        temperature=0,
        extra_body={"mode": "cot", "return_latents": True},
    )
    want = alone(tiny_model, QUESTIONS[1], mode="cot", max_new_tokens=4)
    assert cot.choices[0].message.content == want.text and cot.choices[0].finish_reason == "length"
    assert cot.usage.completion_tokens == 4
    costs = kava_of(cot)
    assert (costs["mode"], costs["latent_tokens"], costs["latents"]) == ("cot", 0, None)
    assert costs["forward_passes"] == want.forward_passes

    latents = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": QUESTIONS[2]}],
        extra_body={"num_iterations": 0, "return_latents": True},
    )
    want = alone(tiny_model, QUESTIONS[2], num_iterations=0)
    costs = kava_of(latents)
    assert latents.choices[0].message.content == want.text and costs["forward_passes"] == want.forward_passes
    assert len(costs["latents"]) == 3 and all(len(slot) == 1 for slot in costs["latents"])


# completions ---------------------------------------------------------------------------------
def test_completions_both_modes(client, tiny_model):
    r = client.completions.create(model="tiny", prompt=QUESTIONS[3])
    want = alone(tiny_model, QUESTIONS[3])
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == want.text and r.usage.completion_tokens == want.generated_tokens
    assert kava_of(r)["forward_passes"] == want.forward_passes

    r = client.completions.create(model="tiny", prompt=[QUESTIONS[4]], max_tokens=5, extra_body={"mode": "cot"})
    want = alone(tiny_model, QUESTIONS[4], mode="cot", max_new_tokens=5)
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == want.prompt_tokens and kava_of(r)["latent_tokens"] == 0


def test_stream_options_without_stream_is_a_plain_response(base_url):
    body = {**QUESTION_BODY, "stream_options": {"include_usage": True}}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["object"] == "chat.completion"


# streaming -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["latent", "cot"])
def test_chat_stream_with_usage(client, tiny_model, mode):
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": QUESTIONS[5]}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mode": mode},
    )
    chunks = list(stream)
    want = alone(tiny_model, QUESTIONS[5], mode=mode)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    *body, finish, last = chunks
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in body)
    assert finish.choices[0].finish_reason in ("stop", "length") and kava_of(finish)["mode"] == mode
    assert kava_of(finish)["forward_passes"] == want.forward_passes
    assert last.choices == [] and last.usage.completion_tokens == want.generated_tokens
    assert last.usage.prompt_tokens == want.prompt_tokens


def test_completion_stream_without_usage(client, tiny_model):
    chunks = list(client.completions.create(model="tiny", prompt=QUESTIONS[6], stream=True))
    want = alone(tiny_model, QUESTIONS[6])
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert [c.choices[0].finish_reason is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.usage is None for c in chunks) and "kava" in chunks[-1].model_extra


def test_raw_sse_framing(base_url):
    body = {"model": "tiny", "prompt": QUESTIONS[7], "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all("usage" in c for c in chunks) and chunks[-1]["choices"] == []
    assert [c["usage"] is None for c in chunks] == [True] * (len(chunks) - 1) + [False]


def test_an_error_after_the_first_chunk_is_an_error_event(client, monkeypatch):
    """A failure after the first token (deadline, engine) cannot change the status: it ends
    the stream as an error event, which the openai package raises."""

    async def failing(solve, request):
        async def pieces():
            yield "The"
            raise ApiError(500, "engine_error", "the engine failed on this request's batch (request id x)")

        return pieces()

    monkeypatch.setattr(server.openai_routes, "open_answer_stream", failing)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "engine failed" in info.value.message and info.value.type == "engine_error"


def _held_after_the_first_token(runner, release: threading.Event, waits: list[bool]) -> HookedRunner:
    """A runner whose passes, once any token has been decoded, wait for `release`."""

    def hook(batch) -> None:
        if any(out.tokens for out in hooked.outputs):
            waits.append(release.wait(20))

    hooked = HookedRunner(runner, hook)
    return hooked


@pytest.mark.parametrize("mode", ["latent", "cot"])
def test_the_stream_starts_at_the_first_token_not_at_the_end(runner, tiny_model, mode):
    release, waits = threading.Event(), []
    hooked = _held_after_the_first_token(runner, release, waits)
    with live_server(app_over(hooked)) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as c:
        stream = c.chat.completions.create(
            model="tiny", messages=USER, stream=True, max_tokens=5, extra_body={"mode": mode}
        )
        chunks = iter(stream)
        role = next(chunks)  # while the engine holds its next pass: it came from the first token
        release.set()
        rest = list(chunks)
    assert role.choices[0].delta.role == "assistant"
    assert waits and all(waits), "the client saw nothing until the engine went on without it"
    text = "".join(c.choices[0].delta.content or "" for c in [role, *rest] if c.choices)
    assert text == alone(tiny_model, QUESTIONS[0], mode=mode, max_new_tokens=5).text


def test_a_client_leaving_mid_stream_cancels_the_job_and_is_counted(runner):
    release, waits = threading.Event(), []
    hooked = _held_after_the_first_token(runner, release, waits)
    app = app_over(hooked)
    engine = app.state.kava.engine
    body = {**QUESTION_BODY, "stream": True, "max_tokens": 200, "mode": "cot"}

    def cancelled(url: str) -> float:
        samples = metric_samples(httpx.get(f"{url}/metrics").text)["kava_requests"]
        return sample_value(samples, "kava_requests_total", outcome="cancelled")

    with live_server(app) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
            assert next(r.iter_lines()).startswith("data: ")  # the first token's chunk; then hang up
        deadline = time.monotonic() + 10
        while cancelled(url) < 1 and time.monotonic() < deadline:  # noticed while the engine is held
            time.sleep(0.02)
        release.set()
        while not engine.idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.idle() and cancelled(url) == 1
    dropped = [f.result for out in hooked.outputs for f in out.finished]
    assert [d.finish_reason for d in dropped] == ["cancelled"] and dropped[0].generated_tokens < 200


# async client --------------------------------------------------------------------------------
def test_async_client_concurrent_chat_completions_and_streams(base_url, tiny_model):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
            chats = [
                c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}]) for q in QUESTIONS
            ]
            plain = c.completions.create(model="tiny", prompt=QUESTIONS[0], extra_body={"mode": "cot"})
            stream = await c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": QUESTIONS[1]}], stream=True
            )
            replies = await asyncio.gather(*chats, plain)
            streamed = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            models = await c.models.list()
            return replies, streamed, models

    replies, streamed, models = asyncio.run(scenario())
    *chats, plain = replies
    assert [r.choices[0].message.content for r in chats] == [alone(tiny_model, q).text for q in QUESTIONS]
    assert plain.choices[0].text == alone(tiny_model, QUESTIONS[0], mode="cot").text
    assert streamed == alone(tiny_model, QUESTIONS[1]).text
    assert [m.id for m in models.data] == ["tiny"]


def test_openai_requests_are_counted_in_metrics(client, base_url):
    def ok() -> float:
        samples = metric_samples(httpx.get(f"{base_url}/metrics").text)["kava_requests"]
        return sample_value(samples, "kava_requests_total", outcome="ok")

    before = ok()
    client.completions.create(model="tiny", prompt=QUESTIONS[2])
    list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "7 + 8?"}], stream=True))
    assert ok() == before + 2


# errors --------------------------------------------------------------------------------------
USER = [{"role": "user", "content": QUESTIONS[0]}]
REFUSED_CHAT = [
    (dict(n=2), "n", "only n=1"),
    (dict(temperature=0.7), "temperature", "greedy"),
    (dict(stop=["\n"]), "stop", "stop sequences"),
    (dict(logprobs=True), "logprobs", "logprobs"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "tools are not supported"),
    (dict(response_format={"type": "json_object"}), "response_format", "plain text"),
    (dict(extra_body={"mode": "sample"}), "mode", "latent"),
    (dict(extra_body={"num_iterations": True}), "num_iterations", "integer"),
    (dict(extra_body={"beam_width": 4}), "beam_width", "not permitted"),
    (dict(messages=[{"role": "system", "content": "Be brief."}]), "messages", "must include a user message"),
    (dict(messages=[{"role": "user", "content": "  "}]), "messages", "more than whitespace"),
    (dict(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages", "needs content"),
    (dict(messages=[{"role": "user"}]), "messages", "message 0: a user message needs content"),
    (dict(messages=[*USER, {"role": "tool", "content": "4", "tool_call_id": "x"}]), "messages", "message 1: tool"),
    (
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        "messages",
        "only text content",
    ),
    (dict(messages=[{"role": "user", "content": "9" * (QUESTION_LIMIT + 1)}]), "messages", "question"),
    (dict(messages=[{"role": "user", "content": "9" * (QUESTION_LIMIT + 1)}, *USER]), "messages", "message 0"),
    (dict(max_tokens=MAX_TOKENS_LIMIT + 1), "max_tokens", f"limit of {MAX_TOKENS_LIMIT}"),
    (dict(max_completion_tokens=MAX_TOKENS_LIMIT + 1), "max_completion_tokens", f"limit of {MAX_TOKENS_LIMIT}"),
    (dict(extra_body={"num_iterations": 10_000}), "num_iterations", "limit"),
]


@pytest.mark.parametrize(("kwargs", "param", "words"), REFUSED_CHAT, ids=[p for _, p, _ in REFUSED_CHAT])
def test_chat_refusals_are_422_naming_the_field(client, kwargs, param, words):
    kwargs = {"messages": USER, **kwargs}
    for stream in [False, True]:  # a stream refuses before it starts
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.chat.completions.create(model="tiny", stream=stream, **kwargs)
        e = info.value
        assert (e.status_code, e.type, e.param) == (422, "invalid_request_error", param)
        assert words in e.body["message"] and e.body["message"] in e.message  # what the openai package shows


REFUSED_COMPLETIONS = [
    (dict(prompt=["a", "b"]), "prompt", "one prompt per request"),
    (dict(prompt=[1, 2, 3]), "prompt", ""),
    (dict(echo=True), "echo", "echo"),
    (dict(logprobs=0), "logprobs", "logprobs"),
    (dict(best_of=2), "best_of", "best_of=1"),
    (dict(suffix="!"), "suffix", "suffix"),
    (dict(prompt="9" * (QUESTION_LIMIT + 1)), "prompt", f"limit is {QUESTION_LIMIT}"),
]


@pytest.mark.parametrize(("kwargs", "param", "words"), REFUSED_COMPLETIONS, ids=[p for _, p, _ in REFUSED_COMPLETIONS])
def test_completion_refusals_are_422_naming_the_field(client, kwargs, param, words):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.completions.create(model="tiny", **{"prompt": QUESTIONS[0], **kwargs})
    assert info.value.param is not None and info.value.param.startswith(param)
    assert words in info.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_naming_model(client, stream):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER, stream=stream)
    e = info.value
    assert (e.status_code, e.type, e.param) == (404, "not_found_error", "model")
    assert "model 'gpt-4o' is not loaded" in e.message and "tiny" in e.message


def test_api_key_is_required_when_set(runner):
    with live_server(app_over(runner, api_key=API_KEY)) as url:
        for key in ("unused", "sk-wrong"):
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as c:
                with pytest.raises(openai.AuthenticationError) as info:
                    c.chat.completions.create(model="tiny", messages=USER)
                assert "API key" in info.value.message
                with pytest.raises(openai.AuthenticationError):
                    c.models.list()
        with openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0) as c:
            assert c.chat.completions.create(model="tiny", messages=USER).model == "tiny"
