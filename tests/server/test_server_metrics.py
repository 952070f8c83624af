"""/metrics: parses with prometheus_client's own parser, carries every metric SERVING.md
lists with the listed type and labels, the counters and histograms move on a request, the
time buckets resolve a millisecond request, an unloaded adapter's series go, and every
metric the Grafana dashboard queries is one the server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from server_harness import QUESTIONS, app_over, client_for, run

from server.metrics import TIME_BUCKETS, Metrics
from server.settings import Settings
from server.stats import AdapterInfo, BatchRecord, DeviceMemory, EngineSnapshot, RequestRecord

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "kava.json"

# family name (the parser drops a counter's _total) -> (type, label names of its samples)
EXPECTED = {
    "kava_requests": ("counter", {"outcome", "mode", "adapter"}),
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
    "kava_prompt_tokens": ("counter", {"mode", "adapter"}),
    "kava_generation_tokens": ("counter", {"mode", "adapter"}),
    "kava_latent_tokens": ("counter", {"mode", "adapter"}),
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


def _value(families, name, sample, **labels) -> float:
    return sum(
        s.value
        for s in families[name].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


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
            assert _total(family) > was, f"{name} did not move (does the engine fill its record?)"
        elif name not in INSTANT:
            assert all(s.value > 0 for s in samples), name

    assert _value(after, "kava_requests", "kava_requests_total", outcome="ok", mode="latent") == 1
    for phase in ("prefill", "latent", "decode"):
        assert _value(after, "kava_forward_passes", "kava_forward_passes_total", phase=phase) > 0, phase
    tokens = _value(after, "kava_latent_tokens", "kava_latent_tokens_total", mode="latent", adapter="tiny")
    assert tokens == tiny_model.config.num_latents
    (info,) = after["kava_model_info"].samples
    assert info.value == 1 and info.labels["adapter"] == "tiny" and info.labels["device"] == "cpu"
    assert info.labels["num_latents"] == str(tiny_model.config.num_latents)
    assert after["kava_device_memory_allocated_bytes"].samples[0].labels == {"device": "cpu"}
    # the process, from prometheus_client's own collectors
    assert after["process_resident_memory_bytes"].samples[0].value > 0
    assert "python_info" in after


def test_each_request_reports_its_forward_passes(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            latent = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            cot = await client.post("/v1/solve", json={"question": QUESTIONS[0], "mode": "cot"})
            return latent.json(), cot.json(), (await client.get("/metrics")).text

    latent, cot, text = run(scenario())
    name = "kava_request_forward_passes"
    families = _families(text)
    assert families[name].type == "histogram"
    for body in (latent, cot):
        passes = _value(families, name, f"{name}_sum", mode=body["mode"], adapter="tiny")
        assert passes == body["usage"]["forward_passes"], (
            f"{body['mode']}: {name} holds {passes}, the response says {body['usage']['forward_passes']} "
            "(the engine puts the result's forward_passes on its RequestRecord)"
        )


def test_the_request_counter_names_the_adapter_that_served(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            assert (await client.post("/v1/solve", json={"question": QUESTIONS[0]})).status_code == 200
            unknown = await client.post("/v1/solve", json={"question": QUESTIONS[0], "adapter": "nope"})
            assert unknown.status_code == 404
            return (await client.get("/metrics")).text

    families = _families(run(scenario()))
    served = _value(families, "kava_requests", "kava_requests_total", outcome="ok", mode="latent", adapter="tiny")
    assert served == 1, "the solve handler passes the adapter that served to record_outcome"
    # a name that is not loaded never becomes a label value (label values must stay few)
    assert "nope" not in _adapters_in(families)


def test_time_buckets_start_below_a_millisecond_and_reach_the_longest_deadline():
    assert TIME_BUCKETS[0] < 0.001 and TIME_BUCKETS == sorted(TIME_BUCKETS)
    ratios = {round(b / a, 2) for a, b in zip(TIME_BUCKETS, TIME_BUCKETS[1:])}
    assert ratios <= {1.49, 1.5, 1.51}, ratios  # geometric (rounded to 4 digits)
    assert TIME_BUCKETS[-1] >= Settings.model_fields["request_timeout_s"].default
    # a ~10 ms CPU request is resolved to within a factor of 1.5, not lumped into one bucket
    assert sum(0.001 <= b <= 0.1 for b in TIME_BUCKETS) >= 10


def test_a_served_request_lands_in_a_finite_bucket_above_the_first(runner):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            assert (await client.post("/v1/solve", json={"question": QUESTIONS[1]})).status_code == 200
            return (await client.get("/metrics")).text

    e2e = [
        s
        for s in _families(run(scenario()))["kava_e2e_request_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["mode"] == "latent"
    ]
    first_hit = next(float(s.labels["le"]) for s in e2e if s.value >= 1)
    assert TIME_BUCKETS[0] < first_hit < float("inf"), first_hit


def _record(adapter: str, mode: str = "latent") -> RequestRecord:
    return RequestRecord(adapter, mode, 0.001, 0.004, 0.002, 0.002, 0.003, 20, 4, 3, 5000, forward_passes=7)


def _info(name: str) -> AdapterInfo:
    return AdapterInfo(name, "base", 4, 2, "float32", "cpu")


def _render(metrics: Metrics, *adapters: str) -> dict:
    snapshot = EngineSnapshot("ready", 0, 0, 0)
    text, _ = metrics.render(snapshot, DeviceMemory("cpu", 1, 2), [_info(a) for a in adapters])
    return _families(text.decode())


def _adapters_in(families: dict) -> set[str]:
    return {s.labels["adapter"] for f in families.values() for s in f.samples if "adapter" in s.labels}


def test_series_of_an_unloaded_adapter_are_removed():
    metrics = Metrics()
    metrics.record_batch(BatchRecord(1, {"prefill": 1, "latent": 2, "decode": 3}))
    metrics.record_request(_record("b"))
    metrics.record_outcome("ok", "latent", "b")
    metrics.record_e2e("latent", "b", 0.01)
    metrics.record_outcome("invalid", "latent")  # 404 for an unknown adapter: no adapter resolved
    both = _render(metrics, "a", "b")
    assert _adapters_in(both) == {"a", "b", ""}
    # a loaded adapter has zero series before its first request, so rate() sees the first one
    assert _value(both, "kava_requests", "kava_requests_total", adapter="a", outcome="ok", mode="cot") == 0
    assert {s.labels["mode"] for s in both["kava_prompt_tokens"].samples if s.labels["adapter"] == "a"} == {
        "latent",
        "cot",
    }
    assert _value(both, "kava_time_to_first_token_seconds", "kava_time_to_first_token_seconds_count", adapter="b") == 1

    only_a = _render(metrics, "a")
    assert _adapters_in(only_a) == {"a", ""}  # b's series are gone from every family
    assert _value(only_a, "kava_requests", "kava_requests_total", outcome="invalid") == 1
    # counts that carry no adapter label stay
    assert _value(only_a, "kava_forward_passes", "kava_forward_passes_total", phase="latent") == 2

    metrics.record_request(_record("b"))  # a request that finished while b was being unloaded
    assert _adapters_in(_render(metrics, "a")) == {"a", ""}


def test_unloading_through_the_api_removes_the_adapters_series(runner, other_adapter_dir):
    runner.add_adapter("other", other_adapter_dir)  # before the engine thread exists

    async def scenario():
        # unloading at run time is on only with an adapter root
        async with client_for(app_over(runner, adapter_roots=(other_adapter_dir.parent,))) as client:
            r = await client.post("/v1/solve", json={"question": QUESTIONS[2], "adapter": "other"})
            assert r.status_code == 200, r.text
            loaded = (await client.get("/metrics")).text
            assert (await client.delete("/v1/adapters/other")).status_code == 200
            return loaded, (await client.get("/metrics")).text

    try:
        loaded, unloaded = (_families(t) for t in run(scenario()))
    finally:
        if any(i.name == "other" for i in runner.infos()):
            runner.remove_adapter("other")
    name = "kava_time_to_first_token_seconds"
    assert _value(loaded, name, f"{name}_count", adapter="other") == 1
    assert _adapters_in(loaded) >= {"tiny", "other"}
    assert "other" not in _adapters_in(unloaded) and "tiny" in _adapters_in(unloaded)


def _dashboard_metrics() -> set[str]:
    exprs = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    names = set(re.findall(r"\b((?:kava|process|python)_[a-z0-9_]+)", " ".join(exprs)))
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}


def test_every_metric_the_dashboard_queries_is_exported():
    metrics = Metrics()
    metrics.record_request(_record("a"))
    metrics.record_request(_record("a", "cot"))
    metrics.record_batch(BatchRecord(1, {"prefill": 1}))
    exported = set(_render(metrics, "a"))
    used = _dashboard_metrics()
    assert used, "the dashboard queries no metric"
    assert used <= exported, f"the dashboard queries metrics the server does not export: {sorted(used - exported)}"
