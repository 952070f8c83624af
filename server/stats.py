"""Plain stats objects the engine emits; `server.metrics` is the only reader that exports them.

Owns the records (one per batch, one per finished request, a point-in-time snapshot) and
the facts about the loaded models and device memory. Does not import prometheus_client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AdapterInfo:
    """What `/v1/models` and `kava_model_info` say about one loaded adapter."""

    name: str
    base_model: str
    num_latents: int  # M
    num_iterations: int  # T
    dtype: str
    device: str


@dataclass(frozen=True)
class DeviceMemory:
    """CUDA: torch's allocated / peak allocated bytes. CPU: the process RSS / peak RSS."""

    device: str
    allocated_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class BatchRecord:
    """One forward pass over the running batch."""

    size: int  # rows in the pass
    passes: dict[str, int]  # phase -> forward passes: 1 for each phase the pass carried


@dataclass(frozen=True)
class RequestRecord:
    """One request that finished in a batch (cancelled rows are not recorded here)."""

    adapter: str
    mode: str
    queue_s: float  # arrival -> batch start
    ttft_s: float  # arrival -> first answer token
    prefill_s: float
    latent_s: float
    decode_s: float
    prompt_tokens: int
    latent_tokens: int
    generated_tokens: int
    kv_cache_bytes: int
    forward_passes: int  # passes this request took part in (its solve result's forward_passes)


@dataclass(frozen=True)
class EngineSnapshot:
    state: str  # created | loading | warming | ready | stopped | dead
    waiting: int
    running: int
    kv_cache_bytes: int  # held by the running batch (see Engine.snapshot)


class EngineObserver(Protocol):
    def record_batch(self, record: BatchRecord) -> None: ...

    def record_request(self, record: RequestRecord) -> None: ...
