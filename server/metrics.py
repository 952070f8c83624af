"""Prometheus metrics: the only module that imports prometheus_client.

Turns the engine's plain records (`server.stats`) and the handlers' outcomes into the
metrics SERVING.md lists, on a registry of its own per app (two apps in one process never
share series). Names, suffixes and bucket lists follow vLLM.

Definitions:
- TTFT (`kava_time_to_first_token_seconds`) runs from the request's arrival at the server
  (the first ASGI byte, stamped by `server.middleware`) to the moment the first answer
  token's logits exist: queue wait + prefill (latent mode: with the init pass) and the T Jacobi
  iterations (the last one carries `<eot> P`). In cot mode the first token is the first token of the chain.
  Batch phases are timed by `solve_batch` (device-synchronised on CUDA).
- E2E runs from the same arrival to the response body being ready to send.
- Queue / prefill / latent / decode histograms: each request observes its batch's phase
  times (the phases run for the whole batch at once); latent time only in latent mode.
- `kava_kv_cache_bytes`: the peak KV bytes (padding included) of the most recently finished
  batch while the engine is busy, 0 when it is idle. `solve_batch` reports KV only when a
  batch ends, so this lags the running batch by one.
- Device memory gauges: on CUDA, torch's allocated and peak allocated bytes of the model's
  device; on CPU, the resident set size and peak RSS of the whole server process
  (label device="cpu").
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.stats import AdapterInfo, BatchRecord, DeviceMemory, EngineSnapshot, RequestRecord

OUTCOMES = ("ok", "invalid", "overloaded", "timeout", "cancelled", "error")
MODES = ("latent", "cot")
PHASES = ("prefill", "latent", "decode")

# vLLM's lists: TTFT, and request_latency_buckets for e2e/queue/prefill/decode
TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
LATENCY_BUCKETS = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip


def buckets_1_2_5(low: int, high: int) -> list[float]:
    """vLLM's build_1_2_5_buckets (1, 2, 5 per decade), from `low` up to `high`."""
    out, scale = [], 1
    while scale <= high:
        out += [m * scale for m in (1, 2, 5) if low <= m * scale <= high]
        scale *= 10
    return [float(v) for v in out]


BATCH_BUCKETS = buckets_1_2_5(1, 1000)
KV_BYTES_BUCKETS = buckets_1_2_5(1_000, 100_000_000_000)
INFO_LABELS = ("base_model", "adapter", "num_latents", "num_iterations", "dtype", "device")


class Metrics:
    """One app's metrics; implements the engine's `EngineObserver`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ma = ["mode", "adapter"]
        self.requests = Counter(
            "kava_requests", "Finished /v1/solve requests by outcome", ["outcome", "mode"], registry=r
        )
        for outcome in OUTCOMES:
            for mode in MODES:
                self.requests.labels(outcome, mode)
        self.running = Gauge("kava_num_requests_running", "Requests in the batch running now", registry=r)
        self.waiting = Gauge("kava_num_requests_waiting", "Requests waiting in the queue", registry=r)
        self.ttft = Histogram(
            "kava_time_to_first_token_seconds", "Arrival to first answer token", ma, buckets=TTFT_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "kava_e2e_request_latency_seconds", "Arrival to response", ma, buckets=LATENCY_BUCKETS, registry=r
        )
        self.phase_time = {
            phase: Histogram(
                f"kava_request_{phase}_time_seconds", f"Seconds in {phase}", ma, buckets=LATENCY_BUCKETS, registry=r
            )
            for phase in ("queue", *PHASES)
        }
        self.batch_size = Histogram("kava_batch_size", "Requests per batch", buckets=BATCH_BUCKETS, registry=r)
        self.forward_passes = Counter("kava_forward_passes", "Batched forward passes", ["phase"], registry=r)
        for phase in PHASES:
            self.forward_passes.labels(phase)
        self.tokens = {
            kind: Counter(
                f"kava_{kind}_tokens", f"{kind.capitalize()} tokens of finished requests", ["mode"], registry=r
            )
            for kind in ("prompt", "generation", "latent")
        }
        for counter in self.tokens.values():
            for mode in MODES:
                counter.labels(mode)
        self.request_kv = Histogram(
            "kava_request_kv_cache_bytes", "KV bytes a request held at its peak", ["mode"], buckets=KV_BYTES_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.kv_now = Gauge("kava_kv_cache_bytes", "KV bytes held by the running batch", registry=r)
        self.mem_allocated = Gauge("kava_device_memory_allocated_bytes", "Device memory in use", ["device"], registry=r)
        self.mem_peak = Gauge("kava_device_memory_peak_bytes", "Peak device memory", ["device"], registry=r)
        self.info = Gauge("kava_model_info", "Loaded adapters (value is always 1)", INFO_LABELS, registry=r)

    # From the handlers ---------------------------------------------------------------------
    def record_outcome(self, outcome: str, mode: str) -> None:
        assert outcome in OUTCOMES, outcome
        self.requests.labels(outcome, mode).inc()

    def record_e2e(self, mode: str, adapter: str, seconds: float) -> None:
        self.e2e.labels(mode, adapter).observe(seconds)

    # From the engine thread (prometheus_client is thread-safe) -----------------------------
    def record_batch(self, record: BatchRecord) -> None:
        self.batch_size.observe(record.size)
        for phase, n in record.passes.items():
            self.forward_passes.labels(phase).inc(n)

    def record_request(self, record: RequestRecord) -> None:
        labels = (record.mode, record.adapter)
        self.ttft.labels(*labels).observe(record.ttft_s)
        self.phase_time["queue"].labels(*labels).observe(record.queue_s)
        self.phase_time["prefill"].labels(*labels).observe(record.prefill_s)
        if record.mode == "latent":
            self.phase_time["latent"].labels(*labels).observe(record.latent_s)
        self.phase_time["decode"].labels(*labels).observe(record.decode_s)
        self.tokens["prompt"].labels(record.mode).inc(record.prompt_tokens)
        self.tokens["generation"].labels(record.mode).inc(record.generated_tokens)
        self.tokens["latent"].labels(record.mode).inc(record.latent_tokens)
        self.request_kv.labels(record.mode).observe(record.kv_cache_bytes)

    # At scrape time ------------------------------------------------------------------------
    def render(
        self, snapshot: EngineSnapshot, memory: DeviceMemory | None, adapters: Sequence[AdapterInfo]
    ) -> tuple[bytes, str]:
        """Set the point-in-time gauges, then the exposition text and its content type."""
        self.running.set(snapshot.running)
        self.waiting.set(snapshot.waiting)
        self.kv_now.set(snapshot.kv_cache_bytes)
        if memory is not None:
            self.mem_allocated.labels(memory.device).set(memory.allocated_bytes)
            self.mem_peak.labels(memory.device).set(memory.peak_bytes)
        self.info.clear()  # unloaded adapters disappear
        for a in adapters:
            self.info.labels(a.base_model, a.name, str(a.num_latents), str(a.num_iterations), a.dtype, a.device).set(1)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
