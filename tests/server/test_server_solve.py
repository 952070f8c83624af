"""POST /v1/solve end to end over a tiny model: the response shape, request ids, both
modes, and 32 concurrent requests batched with answers identical to solving alone."""

from __future__ import annotations

import asyncio

import pytest
from server_harness import QUESTIONS, app_over, client_for, metric_samples, run, sample_value

from kava.generate import solve_batch
from server.runner import ModelRunner

FIELDS = {"id", "answer", "text", "mode", "adapter", "usage", "timings_ms", "kv_cache_bytes"}


def test_solve_round_trip(runner, tiny_model):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            r = await client.post("/v1/solve", json={"question": QUESTIONS[0]}, headers={"X-Request-Id": "abc-123"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == FIELDS
            assert body["id"] == r.headers["x-request-id"] == "abc-123"
            assert body["mode"] == "latent" and body["adapter"] == "tiny"
            assert set(body["usage"]) == {"prompt_tokens", "latent_tokens", "generated_tokens", "forward_passes"}
            assert set(body["timings_ms"]) == {"queue", "prefill", "latent", "decode", "total"}
            m, t = tiny_model.config.num_latents, tiny_model.config.num_iterations
            assert body["usage"]["latent_tokens"] == m
            # prefill (+ init) + T iterations (the last carries <eot> P) + one pass per fed-back token
            assert body["usage"]["forward_passes"] == 1 + t + body["usage"]["generated_tokens"] - 1
            assert body["kv_cache_bytes"] > 0
            alone = solve_batch(tiny_model, [QUESTIONS[0]], max_new_tokens=6).results[0]
            assert (body["text"], body["answer"]) == (alone.text, alone.answer)

            r = await client.post(
                "/v1/solve", json={"question": QUESTIONS[1], "return_latents": True, "mode": "latent"}
            )
            latents = r.json()["latents"]
            assert r.status_code == 200 and len(latents) == m and all(len(slot) == 1 for slot in latents)
            assert len(r.headers["x-request-id"]) >= 16  # created when not given

            r = await client.post("/v1/solve", json={"question": QUESTIONS[1], "mode": "cot", "max_new_tokens": 4})
            body = r.json()
            assert r.status_code == 200 and body["mode"] == "cot"
            assert body["usage"]["latent_tokens"] == 0 and body["usage"]["generated_tokens"] == 4
            want = solve_batch(tiny_model, [QUESTIONS[1]], mode="cot", max_new_tokens=4).results[0].text
            assert body["text"] == want

            r = await client.post("/v1/solve", json={"question": QUESTIONS[2], "num_iterations": 0})
            assert (
                r.status_code == 200 and r.json()["usage"]["forward_passes"] == 1 + 1 + 5
            )  # T = 0: prefill, init + <eot> P

    run(scenario())


@pytest.mark.parametrize("graphs", [False, True])
def test_concurrent_requests_are_batched_and_match_solving_alone(tiny_model, graphs):
    """With `cuda_graphs` the engine's uniform passes run at fixed shapes (no capture on CPU)."""
    runner = ModelRunner({"tiny": tiny_model}, graphs=graphs)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(32)]
    alone = {q: solve_batch(tiny_model, [q], max_new_tokens=6).results[0].text for q in QUESTIONS}

    async def scenario():
        async with client_for(app_over(runner, max_batch_size=32, max_wait_ms=200)) as client:
            replies = await asyncio.gather(*(client.post("/v1/solve", json={"question": q}) for q in questions))
            metrics = (await client.get("/metrics")).text
        assert [r.status_code for r in replies] == [200] * 32
        assert [r.json()["text"] for r in replies] == [alone[q] for q in questions]
        batches = metric_samples(metrics)["kava_batch_size"]
        n = sample_value(batches, "kava_batch_size_count")
        singles = sample_value(batches, "kava_batch_size_bucket", le="1.0")
        assert sample_value(batches, "kava_batch_size_sum") >= 32  # rows per forward pass, summed over passes
        assert singles < n, "some batch must hold more than one request"
        assert not graphs or runner._running.graphs.passes  # some passes ran at fixed shapes

    run(scenario())


def test_adapters_lists_the_loaded_adapters(runner, tiny_model):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            return (await client.get("/v1/adapters")).json()

    body = run(scenario())
    assert body["default_adapter"] == "tiny" and body["base_model"] == tiny_model.base_model_id
    (card,) = body["adapters"]
    assert card == {
        "name": "tiny",
        "base_model": tiny_model.base_model_id,
        "num_latents": tiny_model.config.num_latents,
        "num_iterations": tiny_model.config.num_iterations,
        "dtype": "float32",
        "device": "cpu",
        "default": True,
    }
