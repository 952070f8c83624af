"""Prometheus metrics: the only module that imports prometheus_client.

Turns the engine's plain records (`server.stats`) and the handlers' outcomes into the
metrics SERVING.md lists, on a registry of its own per app (two apps in one process never
share series). Names and suffixes follow vLLM; the time buckets follow TGI (geometric from
0.15 ms), because vLLM's 0.3 s floor would put every CPU request (~10 ms) in one bucket.

Definitions:
- TTFT (`kava_time_to_first_token_seconds`) runs from the request's arrival at the server
  (the first ASGI byte, stamped by `server.middleware`) to the moment the first answer
  token's logits exist: queue wait + prefill (latent mode: with the init pass) and the T Jacobi
  iterations (the last one carries `<eot> P`). In cot mode the first token is the first token of the chain.
  Passes are timed by the engine's running batch (device-synchronised on CUDA); a request's
  phase time is the sum of the passes it spent in that phase.
- `kava_batch_size` and `kava_forward_passes`: one observation per forward pass of the
  running batch (iteration-level batching): its rows, and each phase the pass carried.
- E2E runs from the same arrival to the response body being ready to send.
- Queue / prefill / latent / decode histograms: each request observes the phase times of
  the passes it took part in; latent time only in latent mode.
- `kava_request_forward_passes`: forward passes a request took part in (prefill, latent and
  its own decode passes) — the method's cost, latent against CoT on the same adapter.
- `kava_kv_cache_bytes`: KV bytes held by the running batch as the engine last reported it,
  0 when it is idle.
- Device memory gauges: what the engine reports for the model's device (on CUDA, torch's
  allocated and peak allocated bytes). The process itself (resident memory, CPU seconds,
  open fds, GC) comes from prometheus_client's own collectors as `process_*` / `python_*`.
- The `adapter` label names a loaded adapter, or is empty for a request that never resolved
  one (e.g. a 404 for an unknown name). Series of an adapter that is no longer loaded are
  removed at the next scrape, so an unload leaves nothing behind.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

from kava.config import MODES
from server.stats import AdapterInfo, BatchRecord, DeviceMemory, EngineSnapshot, RequestRecord

OUTCOMES = ("ok", "invalid", "overloaded", "timeout", "cancelled", "error")
PHASES = ("prefill", "latent", "decode")
NO_ADAPTER = ""  # the adapter label of a request that named no loaded adapter


def geometric_buckets(start: float, factor: float, count: int) -> list[float]:
    """TGI's duration buckets: start * factor**k for k = 1..count (4 significant digits)."""
    return [float(f"{start * factor**k:.4g}") for k in range(1, count + 1)]


def buckets_1_2_5(low: int, high: int) -> list[float]:
    """vLLM's build_1_2_5_buckets (1, 2, 5 per decade), from `low` up to `high`."""
    out, scale = [], 1
    while scale <= high:
        out += [m * scale for m in (1, 2, 5) if low <= m * scale <= high]
        scale *= 10
    return [float(v) for v in out]


# 0.15 ms ... 738 s: TGI's start (1e-4 * 1.5) and factor, four more steps so a request near
# the longest deadline (KAVA_REQUEST_TIMEOUT_S, default 120 s) still lands in a finite bucket
TIME_BUCKETS = geometric_buckets(1e-4, 1.5, 39)
BATCH_BUCKETS = buckets_1_2_5(1, 1000)
PASSES_BUCKETS = buckets_1_2_5(1, 100_000)
KV_BYTES_BUCKETS = buckets_1_2_5(1_000, 100_000_000_000)
INFO_LABELS = ("base_model", "adapter", "num_latents", "num_iterations", "dtype", "device")


class Metrics:
    """One app's metrics; implements the engine's `EngineObserver`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        ma = ["mode", "adapter"]
        self.requests = Counter("kava_requests", "Finished /v1/solve requests by outcome", ["outcome", *ma], registry=r)
        self.running = Gauge("kava_num_requests_running", "Requests in the batch running now", registry=r)
        self.waiting = Gauge("kava_num_requests_waiting", "Requests waiting in the queue", registry=r)
        self.ttft = Histogram(
            "kava_time_to_first_token_seconds", "Arrival to first answer token", ma, buckets=TIME_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "kava_e2e_request_latency_seconds", "Arrival to response", ma, buckets=TIME_BUCKETS, registry=r
        )
        self.phase_time = {
            phase: Histogram(
                f"kava_request_{phase}_time_seconds", f"Seconds in {phase}", ma, buckets=TIME_BUCKETS, registry=r
            )
            for phase in ("queue", *PHASES)
        }
        self.batch_size = Histogram("kava_batch_size", "Requests per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.forward_passes = Counter("kava_forward_passes", "Batched forward passes", ["phase"], registry=r)
        for phase in PHASES:
            self.forward_passes.labels(phase)
        self.request_passes = Histogram(
            "kava_request_forward_passes", "Forward passes a request took part in", ma, buckets=PASSES_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.tokens = {
            kind: Counter(f"kava_{kind}_tokens", f"{kind.capitalize()} tokens of finished requests", ma, registry=r)
            for kind in ("prompt", "generation", "latent")
        }
        self.request_kv = Histogram(
            "kava_request_kv_cache_bytes", "KV bytes a request held at its peak", ["mode"], buckets=KV_BYTES_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.kv_now = Gauge("kava_kv_cache_bytes", "KV bytes held by the running batch", registry=r)
        self.mem_allocated = Gauge("kava_device_memory_allocated_bytes", "Device memory in use", ["device"], registry=r)
        self.mem_peak = Gauge("kava_device_memory_peak_bytes", "Peak device memory", ["device"], registry=r)
        self.info = Gauge("kava_model_info", "Loaded adapters (value is always 1)", INFO_LABELS, registry=r)
        # adapter -> the (metric, label values) pairs it created, so an unload can remove them;
        # the lock makes "create and remember" atomic against the scrape that prunes
        self._lock = threading.Lock()
        self._series: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}

    def _child(self, metric: MetricWrapperBase, *values: str, adapter: str):
        """`metric.labels(*values, adapter)`, remembered under `adapter`."""
        with self._lock:
            self._series.setdefault(adapter, set()).add((metric, (*values, adapter)))
            return metric.labels(*values, adapter)

    # From the handlers ---------------------------------------------------------------------
    def record_outcome(self, outcome: str, mode: str, adapter: str = NO_ADAPTER) -> None:
        """One finished /v1/solve request. `adapter` is the resolved, loaded adapter's name
        (never the raw request field: label values must stay few)."""
        assert outcome in OUTCOMES, outcome
        self._child(self.requests, outcome, mode, adapter=adapter).inc()

    def record_e2e(self, mode: str, adapter: str, seconds: float) -> None:
        self._child(self.e2e, mode, adapter=adapter).observe(seconds)

    # From the engine thread (prometheus_client is thread-safe) -----------------------------
    def record_batch(self, record: BatchRecord) -> None:
        self.batch_size.observe(record.size)
        for phase, n in record.passes.items():
            self.forward_passes.labels(phase).inc(n)

    def record_request(self, record: RequestRecord) -> None:
        mode, adapter = record.mode, record.adapter
        self._child(self.ttft, mode, adapter=adapter).observe(record.ttft_s)
        self._child(self.phase_time["queue"], mode, adapter=adapter).observe(record.queue_s)
        self._child(self.phase_time["prefill"], mode, adapter=adapter).observe(record.prefill_s)
        if mode == "latent":
            self._child(self.phase_time["latent"], mode, adapter=adapter).observe(record.latent_s)
        self._child(self.phase_time["decode"], mode, adapter=adapter).observe(record.decode_s)
        self._child(self.request_passes, mode, adapter=adapter).observe(record.forward_passes)
        self._child(self.tokens["prompt"], mode, adapter=adapter).inc(record.prompt_tokens)
        self._child(self.tokens["generation"], mode, adapter=adapter).inc(record.generated_tokens)
        self._child(self.tokens["latent"], mode, adapter=adapter).inc(record.latent_tokens)
        self.request_kv.labels(mode).observe(record.kv_cache_bytes)

    # At scrape time ------------------------------------------------------------------------
    def sync_adapters(self, loaded: Sequence[str]) -> None:
        """Zero series for every loaded adapter (so rate() sees the first request) and none
        for an adapter that is gone."""
        with self._lock:
            for name in set(self._series) - set(loaded) - {NO_ADAPTER}:
                for metric, values in self._series.pop(name):
                    metric.remove(*values)
        for name in loaded:
            for mode in MODES:
                for outcome in OUTCOMES:
                    self._child(self.requests, outcome, mode, adapter=name)
                for counter in self.tokens.values():
                    self._child(counter, mode, adapter=name)

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
        self.sync_adapters([a.name for a in adapters])
        self.info.clear()  # unloaded adapters disappear
        for a in adapters:
            self.info.labels(a.base_model, a.name, str(a.num_latents), str(a.num_iterations), a.dtype, a.device).set(1)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
