"""The student's latent reasoning: prefill -> init pass -> T Jacobi iterations (METHOD.md §2).

Owns the step functions shared by training, evaluation, the server and the benchmarks,
and the sequential (Coconut/CODI-style) alternative. Inference fuses passes whose inputs
are already known: the init pass's `<latent>` placeholders ride in the prefill pass
(`prefill(..., init_slots=M)`), and the shared `<eot> P` suffix rides in the last latent
pass (`suffix=`); attention is causal, so both give the same result as separate passes
with two fewer sequential forward passes per question. Training takes the question's K/V
from the teacher's pass, which starts with the same tokens (`prefill_on_question`). Every
pass receives an attention mask over cache + new tokens and position ids that count only
real tokens, so a left-padded row computes exactly what it would alone. Gradients flow through every pass.
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
    init_hidden: torch.Tensor | None = None  # (B, M, D) the init pass, when fused into prefill

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
    suffix_logits: torch.Tensor | None = None  # (B, V) after a fused suffix; it is in the cache


def cache_kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


# 1. Prefill ------------------------------------------------------------------------------
def prefill(model: KavaModel, prefix: PrefixBatch, init_slots: int = 0) -> Prefix:
    """Run the prompt; with `init_slots=M` the Jacobi init pass (M `<latent>` placeholders,
    whose inputs do not depend on the prompt's output) runs in the same forward pass and
    only the prompt's KV is kept."""
    mask = prefix.attention_mask  # (B, Lp)
    x, full = _with_init_slots(model, model.embed(prefix.input_ids), mask, init_slots)  # (B, Lp [+ M], D)
    out = model(x, full, positions(full))
    return _prefix(out, mask, mask.shape[1] - 1, init_slots)


def _with_init_slots(
    model: KavaModel, x: torch.Tensor, mask: torch.Tensor, init_slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, L, D) with M `<latent>` placeholders appended, and the mask over the prompt
    (B, Lp) extended by M ones."""
    if not init_slots:
        return x, mask
    x = torch.cat([x, model.latent_placeholders(x.shape[0], init_slots).to(x.dtype)], dim=1)
    return x, torch.cat([mask, mask.new_ones((mask.shape[0], init_slots))], dim=1)  # (B, Lp + M)


def _prefix(out, mask: torch.Tensor, at: int, init_slots: int) -> Prefix:
    """The prompt's part of a prefill pass: KV of its Lp columns, h and logits of its last
    token (input position `at`), and the init slots' outputs right after it."""
    lp = mask.shape[1]
    return Prefix(
        kv=[(k[:, :, :lp], v[:, :, :lp]) for k, v in cache_kv(out.cache)],
        mask=mask,
        lengths=mask.sum(-1),
        last_hidden=out.hidden[:, at],
        last_logits=out.logits[:, at],
        init_hidden=out.hidden[:, at + 1 :] if init_slots else None,
    )


def prefill_on_question(
    model: KavaModel, prefix: PrefixBatch, question_kv: list[tuple[torch.Tensor, torch.Tensor]], init_slots: int = 0
) -> Prefix:
    """`prefill` for training, given the K/V a teacher pass already computed for the question.

    The teacher's rows start with the same Q tokens at the same positions under the same
    weights, so their first |Q| keys and values are what the student's prefill would compute
    (gradients then reach the weights through one computation instead of two identical ones;
    their sum is the same). With LoRA dropout the student reads the teacher's draw on Q rather
    than one of its own. Only `<bot>` (and the fused init slots) run here. `question_kv`:
    per layer (B, Hkv, Lt, d), each row's Q at columns 0..|Q|-1 (right-padded teacher rows);
    `prefix` is the left-padded `Q <bot>` batch."""
    mask = prefix.attention_mask  # (B, Lp), every row ends with <bot>
    b, lp = mask.shape
    q_len = mask.sum(-1) - 1  # (B,)
    col = torch.arange(lp - 1, device=mask.device)[None] - (lp - 1 - q_len)[:, None]  # (B, Lp-1) teacher column
    k0 = question_kv[0][0]
    index = col.clamp(min=0)[:, None, :, None].expand(b, k0.shape[1], lp - 1, k0.shape[3])  # pads read column 0
    kv = [(k.gather(2, index), v.gather(2, index)) for k, v in question_kv]
    x, full = _with_init_slots(model, model.embed(prefix.input_ids[:, -1:]), mask, init_slots)  # <bot> [+ M]
    pos = q_len[:, None] + torch.arange(x.shape[1], device=mask.device)[None]  # (B, 1 [+ M])
    out = model(x, full, pos, DynamicCache(ddp_cache_data=kv))
    return _prefix(out, mask, 0, init_slots)


# 2. One pass of M slots on top of the prefix --------------------------------------------
def slot_pass(model: KavaModel, prefix: Prefix, inputs: torch.Tensor, suffix: torch.Tensor | None = None):
    """Run slot inputs (B, M, D) in parallel on a fresh copy of the prefix cache; slots
    attend causally to each other and to the prefix, never to older iterations. A
    `suffix` (B, S, D) is appended after the slots in the same pass."""
    b, m, _ = inputs.shape
    if suffix is not None:
        inputs = torch.cat([inputs, suffix.to(inputs.dtype)], dim=1)  # (B, M + S, D)
    n = inputs.shape[1]
    ones = torch.ones((b, n), dtype=prefix.mask.dtype, device=prefix.mask.device)
    mask = torch.cat([prefix.mask, ones], dim=1)  # (B, Lp + M [+ S])
    pos = prefix.lengths[:, None] + torch.arange(n, device=inputs.device)[None]  # (B, M [+ S])
    out = model(inputs, mask, pos, prefix.cache())
    return out, mask


def shift_update(model: KavaModel, h_bot: torch.Tensor, h_slots: torch.Tensor) -> torch.Tensor:
    """Slot 1 <- prj(h(<bot>)), slot j+1 <- prj(h(slot j)): (B, D), (B, M, D) -> (B, M, D)."""
    shifted = torch.cat([h_bot[:, None], h_slots[:, :-1]], dim=1)  # (B, M, D)
    return model.project(shifted)


# 3. Jacobi latents -----------------------------------------------------------------------
def jacobi_latents(
    model: KavaModel, prefix: Prefix, num_latents: int, num_iterations: int, suffix: torch.Tensor | None = None
) -> Latents:
    """Init pass on `<latent>` placeholders, then T parallel update passes. With T >= M
    this equals sequential continuous CoT (each iteration fixes one more slot). The init
    pass is skipped when prefill already ran it; a `suffix` rides in the last pass."""
    b, m = prefix.mask.shape[0], num_latents
    passes = 0
    if prefix.init_hidden is not None and num_iterations > 0:
        assert prefix.init_hidden.shape[1] == m, "prefill ran a different number of init slots"
        hidden = prefix.init_hidden
    else:
        x = model.latent_placeholders(b, m).to(prefix.last_hidden.dtype)  # (B, M, D)
        out, mask = slot_pass(model, prefix, x, suffix if num_iterations == 0 else None)  # init pass
        hidden, passes = out.hidden[:, :m], 1
    for i in range(num_iterations):
        x = shift_update(model, prefix.last_hidden, hidden)  # (B, M, D)
        out, mask = slot_pass(model, prefix, x, suffix if i == num_iterations - 1 else None)
        hidden, passes = out.hidden[:, :m], passes + 1
    return Latents(
        cache=out.cache,
        mask=mask,
        lengths=mask.sum(-1),  # real tokens: prefix + M slots (+ suffix)
        inputs=x,
        hidden=hidden,
        passes=passes,
        suffix_logits=out.logits[:, -1] if suffix is not None else None,
    )


# 4. Sequential latents (CODI / Coconut) --------------------------------------------------
def sequential_latents(
    model: KavaModel, prefix: Prefix, num_latents: int, suffix: torch.Tensor | None = None
) -> Latents:
    """One latent per forward pass: z_1 = prj(h(<bot>)), z_{j+1} = prj(h(z_j)); a `suffix`
    rides in the last pass."""
    cache, mask, lengths = prefix.cache(), prefix.mask, prefix.lengths
    h = prefix.last_hidden  # (B, D)
    inputs, hiddens = [], []
    for j in range(num_latents):
        z = model.project(h)[:, None]  # (B, 1, D)
        x = z if suffix is None or j < num_latents - 1 else torch.cat([z, suffix.to(z.dtype)], dim=1)
        n = x.shape[1]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], n))], dim=1)  # (B, L + n)
        out = model(x, mask, lengths[:, None] + torch.arange(n, device=x.device)[None], cache)
        cache, lengths, h = out.cache, lengths + n, out.hidden[:, 0]
        inputs.append(z)
        hiddens.append(out.hidden[:, :1])
    return Latents(
        cache=cache,
        mask=mask,
        lengths=lengths,
        inputs=torch.cat(inputs, 1),
        hidden=torch.cat(hiddens, 1),
        passes=num_latents,
        suffix_logits=out.logits[:, -1] if suffix is not None else None,
    )


def run_latents(
    model: KavaModel,
    prefix: Prefix,
    *,
    num_latents: int,
    num_iterations: int,
    sequential: bool,
    suffix: torch.Tensor | None = None,
) -> Latents:
    if sequential:
        return sequential_latents(model, prefix, num_latents, suffix)
    return jacobi_latents(model, prefix, num_latents, num_iterations, suffix)
