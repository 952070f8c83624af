"""What inference hands back: one result per question, one stats record per batch.

Owns the records both inference paths fill (`kava.running` — the fast path — and
`kava.reference`) and the latent-inspection helper. `kava.generate` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kava.backbone import KavaModel

PHASES: tuple[str, ...] = ("prefill", "latent", "decode")


@dataclass
class SolveResult:
    text: str
    answer: str | None
    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int
    latent_tokens: int
    generated_tokens: int
    forward_passes: int
    kv_cache_bytes: int  # KV bytes this request held at its peak (its own rows, no padding)
    latent_nearest_tokens: list[str] | None = None


@dataclass
class BatchStats:
    batch_size: int
    mode: str
    prefill_s: float = 0.0
    latent_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0  # from batch start to the first answer token
    total_s: float = 0.0
    passes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    peak_kv_bytes: int = 0  # whole batch: the fast path's preallocated cache, the reference's padded one


@dataclass
class BatchOutput:
    results: list[SolveResult]
    stats: BatchStats


def nearest_tokens(model: KavaModel, latents: torch.Tensor) -> list[list[str]]:
    """For inspection: the vocabulary token whose input embedding is closest (cosine) to
    each latent vector (B, M, D)."""
    emb = torch.nn.functional.normalize(model.input_embeddings.weight.float(), dim=-1)  # (V, D)
    z = torch.nn.functional.normalize(latents.float(), dim=-1)  # (B, M, D)
    ids = (z @ emb.T).argmax(-1)  # (B, M)
    return [model.tokenizer.convert_ids_to_tokens(r) for r in ids.tolist()]
