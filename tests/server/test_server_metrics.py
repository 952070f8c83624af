"""/metrics: parses with prometheus_client's own parser, carries every metric SERVING.md
lists with the listed type and labels, and the counters and histograms move on a request."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from server_harness import QUESTIONS, app_over, client_for, run

# family name (the parser drops a counter's _total) -> (type, label names of its samples)
EXPECTED = {
    "kava_requests": ("counter", {"outcome", "mode"}),
    "kava_num_requests_running": ("gauge", set()),
    "kava_num_requests_waiting": ("gauge", set()),
    "kava_time_to_first_token_seconds": ("histogram", {"mode", "adapter"}),
    "kava_e2e_request_latency_seconds": ("histogram", {"mode", "adapter"}),
    "kava_request_queue_time_seconds": ("histogram", {"mode", "adapter"}),
    "kava_request_prefill_time_seconds": ("histogram", {"mode", "adapter"}),
    "kava_request_latent_time_seconds": ("histogram", {"mode", "adapter"}),
    "kava_request_decode_time_seconds": ("histogram", {"mode", "adapter"}),
    "kava_batch_size": ("histogram", set()),
    "kava_forward_passes": ("counter", {"phase"}),
    "kava_prompt_tokens": ("counter", {"mode"}),
    "kava_generation_tokens": ("counter", {"mode"}),
    "kava_latent_tokens": ("counter", {"mode"}),
    "kava_request_kv_cache_bytes": ("histogram", {"mode"}),
    "kava_kv_cache_bytes": ("gauge", set()),
    "kava_device_memory_allocated_bytes": ("gauge", {"device"}),
    "kava_device_memory_peak_bytes": ("gauge", {"device"}),
    "kava_model_info": ("gauge", {"base_model", "adapter", "num_latents", "num_iterations", "dtype", "device"}),
}
# point-in-time gauges: 0 again once the request is done, so only their presence is checked
INSTANT = {"kava_num_requests_running", "kava_num_requests_waiting", "kava_kv_cache_bytes"}


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _total(family) -> float:
    """What moves: a counter's _total samples, a histogram's _count samples."""
    suffix = {"counter": "_total", "histogram": "_count"}[family.type]
    return sum(s.value for s in family.samples if s.name.endswith(suffix))


def test_every_metric_is_present_and_moves_after_a_request(runner, tiny_model):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            before = (await client.get("/metrics")).text
            r = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            assert r.status_code == 200
            response = await client.get("/metrics")
        return before, response

    before_text, response = run(scenario())
    assert response.headers["content-type"].startswith("text/plain")
    before, after = _families(before_text), _families(response.text)
    for name, (kind, labels) in EXPECTED.items():
        assert name in after, f"{name} missing"
        family = after[name]
        assert family.type == kind, (name, family.type)
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        for s in samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
        if kind in ("counter", "histogram"):
            was = _total(before[name]) if name in before else 0.0
            assert _total(family) > was, f"{name} did not move"
        elif name not in INSTANT:
            assert all(s.value > 0 for s in samples), name

    def value(name, sample, **labels):
        return sum(
            s.value
            for s in after[name].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("kava_requests", "kava_requests_total", outcome="ok", mode="latent") == 1
    for phase in ("prefill", "latent", "decode"):
        assert value("kava_forward_passes", "kava_forward_passes_total", phase=phase) > 0, phase
    assert value("kava_latent_tokens", "kava_latent_tokens_total", mode="latent") == tiny_model.config.num_latents
    (info,) = after["kava_model_info"].samples
    assert info.value == 1 and info.labels["adapter"] == "tiny" and info.labels["device"] == "cpu"
    assert info.labels["num_latents"] == str(tiny_model.config.num_latents)
    assert after["kava_device_memory_allocated_bytes"].samples[0].labels == {"device": "cpu"}
