"""Every error row of SERVING.md's table, in the one envelope, with X-Request-Id."""

from __future__ import annotations

import asyncio
import threading

import pytest
from server_harness import (
    QUESTIONS,
    HookedRunner,
    app_over,
    client_for,
    gated,
    metric_samples,
    run,
    sample_value,
    settings,
    wait_until,
)

from server.app import build_engine, create_app


def _envelope(r, status: int, type_: str | None = None, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"]
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param"}
    if type_ is not None:
        assert err["type"] == type_
    assert err["param"] == param
    return err["message"]


@pytest.mark.parametrize(
    ("body", "param", "needles"),
    [
        ({}, "question", ["question", "required"]),
        ({"question": ""}, "question", ["question", "at least 1 character"]),
        ({"question": "   "}, "question", ["question", "whitespace"]),
        (
            {"question": "x" * 101},
            "question",
            ["question", "101 characters", "limit is 100", "KAVA_MAX_QUESTION_CHARS"],
        ),
        ({"question": "q", "mode": "fast"}, "mode", ["mode", "'latent' or 'cot'"]),
        ({"question": "q", "max_new_tokens": 0}, "max_new_tokens", ["max_new_tokens", "greater than or equal to 1"]),
        ({"question": "q", "max_new_tokens": 9999}, "max_new_tokens", ["max_new_tokens=9999", "limit of 1024"]),
        ({"question": "q", "num_iterations": -1}, "num_iterations", ["num_iterations", "greater than or equal to 0"]),
        ({"question": "q", "num_iterations": 99}, "num_iterations", ["num_iterations=99", "limit of 32"]),
        ({"question": "q", "temprature": 1}, "temprature", ["temprature", "not permitted"]),
        ([1, 2], None, ["JSON object"]),
    ],
)
def test_invalid_request_is_422_naming_field_and_limit(runner, body, param, needles):
    async def scenario():
        async with client_for(app_over(runner, max_question_chars=100)) as client:
            return await client.post("/v1/solve", json=body)

    message = _envelope(run(scenario()), 422, "invalid_request_error", param)
    for needle in needles:
        assert needle in message, message


def test_malformed_json_is_422_envelope(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            r = await client.post("/v1/solve", content=b'{"question": ', headers={"content-type": "application/json"})
            metrics = metric_samples((await client.get("/metrics")).text)
        return r, metrics

    r, metrics = run(scenario())
    assert "malformed JSON" in _envelope(r, 422, "invalid_request_error", None)
    assert sample_value(metrics["kava_requests"], "kava_requests_total", outcome="invalid") == 1


def test_unknown_adapter_is_404(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            return await client.post("/v1/solve", json={"question": "q", "adapter": "nope"})

    message = _envelope(run(scenario()), 404, "not_found_error", "adapter")
    assert "'nope'" in message and "tiny" in message


def test_api_key_is_enforced_on_v1_only(runner):
    async def scenario():
        async with client_for(app_over(runner, api_key="s3cret")) as client:
            q = {"question": QUESTIONS[0]}
            missing = await client.post("/v1/solve", json=q)
            wrong = await client.post("/v1/solve", json=q, headers={"Authorization": "Bearer nope"})
            models = await client.get("/v1/models")
            bearer = await client.post("/v1/solve", json=q, headers={"Authorization": "Bearer s3cret"})
            header = await client.get("/v1/models", headers={"X-API-Key": "s3cret"})
            probes = [await client.get(p) for p in ("/health", "/ready", "/metrics")]
        return missing, wrong, models, bearer, header, probes

    missing, wrong, models, bearer, header, probes = run(scenario())
    for r in (missing, wrong, models):
        _envelope(r, 401, "authentication_error", None)
    assert bearer.status_code == 200 and header.status_code == 200
    assert [p.status_code for p in probes] == [200, 200, 200]


def test_queue_full_is_503_with_retry_after(runner):
    slow, gate = gated(runner)

    app = app_over(slow, max_batch_size=1, max_queue_size=1, max_wait_ms=0)
    engine = app.state.kava.engine

    async def scenario():
        async with client_for(app) as client:
            first = asyncio.ensure_future(client.post("/v1/solve", json={"question": QUESTIONS[0]}))
            await wait_until(lambda: engine.snapshot().running == 1)
            second = asyncio.ensure_future(client.post("/v1/solve", json={"question": QUESTIONS[1]}))
            await wait_until(lambda: engine.snapshot().waiting == 1)
            third = await client.post("/v1/solve", json={"question": QUESTIONS[2]})
            gate.set()
            return third, await first, await second

    third, first, second = run(scenario())
    assert "capacity" in _envelope(third, 503, "overloaded_error", None)
    assert third.headers["retry-after"] == "1"
    assert first.status_code == second.status_code == 200


def test_waiting_past_the_deadline_is_504(runner):
    slow, gate = gated(runner)

    async def scenario():
        async with client_for(app_over(slow, max_batch_size=1, request_timeout_s=0.3)) as client:
            r = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            gate.set()
            return r, metric_samples((await client.get("/metrics")).text)

    r, metrics = run(scenario())
    assert "0.3 s" in _envelope(r, 504, "timeout_error", None)
    assert sample_value(metrics["kava_requests"], "kava_requests_total", outcome="timeout", mode="latent") == 1


def test_a_deadline_stops_the_work_not_only_the_wait(runner, monkeypatch):
    """A long CoT answer past KAVA_REQUEST_TIMEOUT_S: the client gets the 504, the engine drops
    the row from the running batch at its next pass by the job's own deadline (the waiter's
    cancel is switched off here, so nothing else could stop it), nothing is left running or
    waiting, and the next small request is answered."""
    release = threading.Event()
    hooked = HookedRunner(runner, lambda batch: release.wait(30) if hooked.outputs else None)  # holds pass 2
    app = app_over(hooked, request_timeout_s=0.3, max_wait_ms=0)
    engine = app.state.kava.engine
    monkeypatch.setattr(engine, "cancel", lambda job: False)

    async def scenario():
        async with client_for(app) as client:
            long = {"question": QUESTIONS[0], "mode": "cot", "max_new_tokens": 200}
            timed_out = await client.post("/v1/solve", json=long)
            assert engine.snapshot().running == 1, "the row is still in the batch while its pass is held"
            release.set()
            await wait_until(engine.idle)
            after = engine.snapshot()
            small = await client.post("/v1/solve", json={"question": QUESTIONS[1]})
            return timed_out, after, small, metric_samples((await client.get("/metrics")).text)

    timed_out, after, small, metrics = run(scenario())
    assert "0.3 s" in _envelope(timed_out, 504, "timeout_error", None)
    assert (after.running, after.waiting) == (0, 0)
    dropped = [f.result for out in hooked.outputs for f in out.finished if f.job.key.mode == "cot"]
    assert [d.finish_reason for d in dropped] == ["cancelled"], "the engine ran the expired row on"
    assert dropped[0].generated_tokens < 200
    assert small.status_code == 200, small.text
    assert sample_value(metrics["kava_requests"], "kava_requests_total", outcome="timeout", mode="cot") == 1


def test_engine_failure_is_500_with_request_id_and_the_engine_recovers(runner):
    def boom(batch):
        if any("BOOM" in q for q in batch.questions):
            raise RuntimeError("simulated device fault")

    async def scenario():
        async with client_for(app_over(HookedRunner(runner, boom))) as client:
            bad = await client.post("/v1/solve", json={"question": "BOOM 1+1"}, headers={"X-Request-Id": "req-42"})
            good = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            health = await client.get("/health")
        return bad, good, health

    bad, good, health = run(scenario())
    message = _envelope(bad, 500, "engine_error", None)
    assert "req-42" in message and "simulated device fault" in message
    assert good.status_code == 200 and health.status_code == 200


class Fatal(BaseException):
    """Escapes the engine's per-batch handler, like a bug in the loop itself."""


def test_dead_engine_makes_health_503(runner):
    def die(batch):
        raise Fatal("engine loop bug")

    async def scenario():
        async with client_for(app_over(HookedRunner(runner, die))) as client:
            first = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            return (
                first,
                await client.get("/health"),
                await client.get("/ready"),
                await client.post("/v1/solve", json={"question": QUESTIONS[0]}),
            )

    first, health, ready, after = run(scenario())
    assert "the engine stopped" in _envelope(first, 500, "engine_error", None)
    _envelope(health, 503, "engine_dead", None)
    _envelope(ready, 503, "unavailable_error", None)
    _envelope(after, 503, "unavailable_error", None)
    assert after.headers["retry-after"]


def test_not_ready_while_warming_up_is_503(runner):
    release = threading.Event()
    warming = HookedRunner(runner, lambda batch: None)
    warming.warmup = lambda: release.wait(30)
    s = settings(warmup=True)
    engine = build_engine(s, warming)

    async def scenario():
        async with client_for(create_app(s, engine)) as client:
            ready = await client.get("/ready")
            solve = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            health = await client.get("/health")
            release.set()
            await wait_until(lambda: engine.ready)
            return ready, solve, health, await client.get("/ready")

    ready, solve, health, ready_after = run(scenario())
    assert "warming" in _envelope(ready, 503, "unavailable_error", None)
    assert "not ready" in _envelope(solve, 503, "unavailable_error", None)
    assert solve.headers["retry-after"] == "1"
    assert health.status_code == 200 and ready_after.status_code == 200


def test_unknown_route_uses_the_envelope(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            return await client.get("/v2/nothing")

    _envelope(run(scenario()), 404, "not_found_error", None)


def test_an_unexpected_error_is_a_500_envelope_with_the_request_id(runner):
    app = app_over(runner)

    def broken(*args):
        raise RuntimeError("bug")

    app.state.kava.metrics.render = broken

    async def scenario():
        async with client_for(app) as client:
            return await client.get("/metrics", headers={"X-Request-Id": "rid-7"})

    r = run(scenario())
    assert r.headers["x-request-id"] == "rid-7"
    assert "rid-7" in _envelope(r, 500, "internal_error", None)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"question": "q", "return_latents": 0}, "return_latents", "valid boolean"),
        ({"question": "q", "return_latents": "true"}, "return_latents", "valid boolean"),
        ({"question": "q", "num_iterations": True}, "num_iterations", "valid integer"),
        ({"question": "q", "max_new_tokens": "3"}, "max_new_tokens", "valid integer"),
        ({"question": "q", "max_new_tokens": 3.5}, "max_new_tokens", "valid integer"),
        ({"question": "q", "num_iterations": None, "max_new_tokens": [3]}, "max_new_tokens", "valid integer"),
        ({"question": 5}, "question", "valid string"),
    ],
)
def test_types_are_strict(runner, body, param, needle):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            return await client.post("/v1/solve", json=body)

    assert needle in _envelope(run(scenario()), 422, "invalid_request_error", param)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_json_is_415_saying_so(runner, content_type):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            r = await client.post("/v1/solve", content=b'{"question": "1+1?"}', headers={"content-type": content_type})
            return r, await client.post("/v1/solve", json={"question": QUESTIONS[0]})

    r, after = run(scenario())
    message = _envelope(r, 415, "unsupported_media_type", None)
    assert "application/json" in message and content_type in message
    assert after.status_code == 200


def test_a_body_over_the_limit_is_413_before_it_is_parsed(runner):
    async def chunks():
        for _ in range(8):
            yield b"x" * 1024

    async def scenario():
        async with client_for(app_over(runner, max_body_bytes=4096)) as client:
            declared = await client.post(
                "/v1/solve", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
            )
            streamed = await client.post("/v1/solve", content=chunks(), headers={"content-type": "application/json"})
            just_fits = await client.post("/v1/solve", json={"question": QUESTIONS[0] + " " * 1900})
            metrics = metric_samples((await client.get("/metrics")).text)
        return declared, streamed, just_fits, metrics

    declared, streamed, just_fits, metrics = run(scenario())
    assert "5002 bytes" in _envelope(declared, 413, "request_too_large", None)
    assert "limit is 4096" in _envelope(streamed, 413, "request_too_large", None)
    assert just_fits.status_code == 200
    assert sample_value(metrics["kava_requests"], "kava_requests_total", outcome="invalid") == 2


def test_the_key_is_checked_before_the_body(runner):
    async def scenario():
        async with client_for(app_over(runner, api_key="k", max_body_bytes=4096)) as client:
            json_type = {"content-type": "application/json"}
            malformed = await client.post("/v1/solve", content=b'{"question": ', headers=json_type)
            huge = await client.post("/v1/solve", content=b"x" * 10_000, headers=json_type)
            plain = await client.post("/v1/solve", content=b"hi", headers={"content-type": "text/plain"})
            keyed = await client.post("/v1/solve", content=b'{"question": ', headers={**json_type, "X-API-Key": "k"})
        return malformed, huge, plain, keyed

    malformed, huge, plain, keyed = run(scenario())
    for r in (malformed, huge, plain):
        _envelope(r, 401, "authentication_error", None)
        assert r.headers["www-authenticate"] == "Bearer"
    assert "malformed JSON" in _envelope(keyed, 422, "invalid_request_error", None)


def test_prompt_latents_and_answer_must_fit_the_context_in_tokens(runner, tiny_model):
    positions = tiny_model.lm.config.max_position_embeddings  # 256
    emoji = "\U0001f600" * 300  # 300 characters, far more tokens (bytes) than positions

    async def scenario():
        async with client_for(app_over(runner, max_new_tokens_cot=400, max_new_tokens_limit=400)) as client:
            q = lambda **b: client.post("/v1/solve", json={"question": emoji, **b})  # noqa: E731
            latent, cot = await q(), await q(mode="cot")
            answer = await client.post("/v1/solve", json={"question": QUESTIONS[0], "max_new_tokens": 300})
            shrunk = await client.post("/v1/solve", json={"question": QUESTIONS[0], "mode": "cot"})
            fits = await client.post("/v1/solve", json={"question": QUESTIONS[1]})
        return latent, cot, answer, shrunk, fits

    latent, cot, answer, shrunk, fits = run(scenario())
    message = _envelope(latent, 422, "invalid_request_error", "question")
    assert "latents 3" in message and f"{positions} positions" in message and "at most" in message
    assert "question " in message and "tokens" in message
    assert f"{positions} positions" in _envelope(cot, 422, "invalid_request_error", "question")
    message = _envelope(answer, 422, "invalid_request_error", "max_new_tokens")
    assert "max_new_tokens=300" in message and "answer tokens fit" in message
    # an omitted max_new_tokens is cut to the room that is left, not refused
    usage = shrunk.json()["usage"]
    assert shrunk.status_code == 200 and usage["prompt_tokens"] + usage["generated_tokens"] <= positions
    assert fits.status_code == 200


def test_the_server_keeps_serving_after_every_probe(runner):
    probes = [
        dict(content=b"\xff\xfe garbage", headers={"content-type": "application/json"}),
        dict(
            content=b'{"question": "' + "\U0001f600".encode() * 1000 + b'"}',
            headers={"content-type": "application/json"},
        ),
        dict(content=b"[" * 5000, headers={"content-type": "application/json"}),
        dict(content=b'{"question": "1+1", "mode": {"a": []}}', headers={"content-type": "application/json"}),
        dict(content=b'"just a string"', headers={"content-type": "application/json"}),
        dict(content=b"null", headers={"content-type": "application/json"}),
        dict(content=b"", headers={"content-type": "application/json"}),
        dict(content=b"question=1", headers={"content-type": "text/plain; charset=utf-8"}),
        dict(content=b"{}" + b" " * 300_000, headers={"content-type": "application/json"}),
    ]

    async def scenario():
        async with client_for(app_over(runner, max_body_bytes=100_000)) as client:
            out = []
            for probe in probes:
                out.append(await client.post("/v1/solve", **probe))
                out.append(await client.post("/v1/solve", json={"question": QUESTIONS[0]}))
            out.append(await client.get("/health"))
            return out

    replies = run(scenario())
    for probe, bad in zip(probes, replies[:-1:2]):
        assert bad.status_code in (413, 415, 422), (probe["content"][:40], bad.status_code, bad.text[:200])
        assert set(bad.json()["error"]) == {"type", "message", "param"}
    assert [r.status_code for r in replies[1:-1:2]] == [200] * len(probes)
    assert replies[-1].status_code == 200


def test_a_wrong_method_is_405_naming_every_allowed_one(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            return await client.request("OPTIONS", "/v1/adapters"), await client.put("/v1/solve", json={})

    options, put = run(scenario())
    assert options.headers["allow"] == "GET, POST"
    assert "allowed: GET, POST" in _envelope(options, 405, "method_not_allowed", None)
    assert put.headers["allow"] == "POST"


def test_the_question_schema_pattern_agrees_with_the_blank_check_on_every_character():
    import re

    from server.schemas import NOT_BLANK

    pattern = re.compile(NOT_BLANK)
    assert all(bool(pattern.search(chr(c))) != chr(c).isspace() for c in range(0x110000))
