"""The student's latent reasoning: prefill -> init pass -> T Jacobi iterations (METHOD.md §2).

Owns the step functions shared by training, evaluation, the server and the benchmarks,
and the sequential (Coconut/CODI-style) alternative. Every pass receives an attention
mask over cache + new tokens and position ids that count only real tokens, so a
left-padded row computes exactly what it would alone. Gradients flow through every pass.
Does not own answer decoding (`kava.generate`) or losses (`kava.losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from kava.backbone import KavaModel
from kava.prompts import PrefixBatch, positions


@dataclass
class Prefix:
    """The prompt after prefill: its KV (kept immutable), mask, and last hidden state."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (B, Hkv, Lp, d)
    mask: torch.Tensor  # (B, Lp)
    lengths: torch.Tensor  # (B,) real tokens
    last_hidden: torch.Tensor  # (B, D) h of the last prompt token (`<bot>` in student mode)
    last_logits: torch.Tensor  # (B, V)

    def cache(self) -> DynamicCache:
        """A fresh cache over the prefix. Cache updates concatenate into new tensors, so
        the prefix tensors themselves are never modified and can seed every iteration."""
        return DynamicCache(ddp_cache_data=list(self.kv))


@dataclass
class Latents:
    """Result of the latent phase: the cache now holds prefix + M slots of the last pass."""

    cache: DynamicCache
    mask: torch.Tensor  # (B, Lp + M)
    lengths: torch.Tensor  # (B,) real tokens in the cache
    inputs: torch.Tensor  # (B, M, D) slot inputs z of the last pass (whose KV stays)
    hidden: torch.Tensor  # (B, M, D) last-layer outputs of that pass
    passes: int  # forward passes spent in the latent phase


def cache_kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


# 1. Prefill ------------------------------------------------------------------------------
def prefill(model: KavaModel, prefix: PrefixBatch) -> Prefix:
    mask = prefix.attention_mask  # (B, Lp)
    out = model(model.embed(prefix.input_ids), mask, positions(mask))
    return Prefix(
        kv=cache_kv(out.cache),
        mask=mask,
        lengths=mask.sum(-1),
        last_hidden=out.hidden[:, -1],
        last_logits=out.logits[:, -1],
    )


# 2. One pass of M slots on top of the prefix --------------------------------------------
def slot_pass(model: KavaModel, prefix: Prefix, inputs: torch.Tensor):
    """Run slot inputs (B, M, D) in parallel on a fresh copy of the prefix cache; slots
    attend causally to each other and to the prefix, never to older iterations."""
    b, m, _ = inputs.shape
    ones = torch.ones((b, m), dtype=prefix.mask.dtype, device=prefix.mask.device)
    mask = torch.cat([prefix.mask, ones], dim=1)  # (B, Lp + M)
    pos = prefix.lengths[:, None] + torch.arange(m, device=inputs.device)[None]  # (B, M)
    out = model(inputs, mask, pos, prefix.cache())
    return out, mask


def shift_update(model: KavaModel, h_bot: torch.Tensor, h_slots: torch.Tensor) -> torch.Tensor:
    """Slot 1 <- prj(h(<bot>)), slot j+1 <- prj(h(slot j)): (B, D), (B, M, D) -> (B, M, D)."""
    shifted = torch.cat([h_bot[:, None], h_slots[:, :-1]], dim=1)  # (B, M, D)
    return model.project(shifted)


# 3. Jacobi latents -----------------------------------------------------------------------
def jacobi_latents(model: KavaModel, prefix: Prefix, num_latents: int, num_iterations: int) -> Latents:
    """Init pass on `<latent>` placeholders, then T parallel update passes. With T >= M
    this equals sequential continuous CoT (each iteration fixes one more slot)."""
    b = prefix.mask.shape[0]
    x = model.latent_placeholders(b, num_latents).to(prefix.last_hidden.dtype)  # (B, M, D)
    out, mask = slot_pass(model, prefix, x)  # init pass
    for _ in range(num_iterations):
        x = shift_update(model, prefix.last_hidden, out.hidden)  # (B, M, D)
        out, mask = slot_pass(model, prefix, x)
    return Latents(
        cache=out.cache,
        mask=mask,
        lengths=prefix.lengths + num_latents,
        inputs=x,
        hidden=out.hidden,
        passes=1 + num_iterations,
    )


# 4. Sequential latents (CODI / Coconut) --------------------------------------------------
def sequential_latents(model: KavaModel, prefix: Prefix, num_latents: int) -> Latents:
    """One latent per forward pass: z_1 = prj(h(<bot>)), z_{j+1} = prj(h(z_j))."""
    cache, mask, lengths = prefix.cache(), prefix.mask, prefix.lengths
    h = prefix.last_hidden  # (B, D)
    inputs, hiddens = [], []
    for _ in range(num_latents):
        z = model.project(h)[:, None]  # (B, 1, D)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, L + 1)
        out = model(z, mask, lengths[:, None], cache)
        cache, lengths, h = out.cache, lengths + 1, out.hidden[:, -1]
        inputs.append(z)
        hiddens.append(out.hidden)
    return Latents(
        cache=cache,
        mask=mask,
        lengths=lengths,
        inputs=torch.cat(inputs, 1),
        hidden=torch.cat(hiddens, 1),
        passes=num_latents,
    )


def run_latents(
    model: KavaModel, prefix: Prefix, *, num_latents: int, num_iterations: int, sequential: bool
) -> Latents:
    if sequential:
        return sequential_latents(model, prefix, num_latents)
    return jacobi_latents(model, prefix, num_latents, num_iterations)
