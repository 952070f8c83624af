"""Teacher KV compression (METHOD.md §3): pick M of the teacher's CoT cache entries per layer and head.

Owns the R-KV style eviction used to build the KV-distillation targets: answer-to-CoT importance,
key redundancy, their mix, top-M selection in chronological order and the gather of keys and values.
Runs online every training step under `no_grad`; every output is detached.

Does not own running the teacher, choosing the key space (callers pass keys as stored in the cache,
post-RoPE, or pre-RoPE keys for `kv_key_space="pre_rope"`), nor the KV loss that consumes `slot_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kava.config import EVICTIONS


@dataclass
class CompressedKV:
    """M teacher cache entries per (layer, KV head), in the order they appear in the teacher sequence.

    Slots at or past min(N_C, M) of a row are invalid: their index is 0 and their keys/values are zero.
    """

    keys: torch.Tensor  # (B, Λ, Hkv, M, d)
    values: torch.Tensor  # (B, Λ, Hkv, M, d)
    indices: torch.Tensor  # (B, Λ, Hkv, M) long, ascending among valid slots, 0 in invalid slots
    slot_mask: torch.Tensor  # (B, M) bool, slot m valid iff m < min(N_C[b], M)


@torch.no_grad()
def answer_attention(attentions: Sequence[torch.Tensor], answer_mask: torch.Tensor) -> torch.Tensor:
    """Mean attention each key column receives from the answer query rows, per layer and query head.

    attentions: per layer (B, Hq, N, N) softmax probabilities (HF `output_attentions=True`);
    answer_mask: (B, N) bool, True on the answer query rows. Returns (B, Λ, Hq, N) float32.
    A row without answer positions gets all zeros.
    """
    if len(attentions) == 0:
        raise ValueError("answer_attention got no layers; run the teacher with output_attentions=True")
    if any(a is None for a in attentions):
        raise ValueError(
            "answer_attention got None attention weights; load the teacher with attn_implementation='eager'"
        )
    first = attentions[0]
    if first.dim() != 4 or answer_mask.shape != (first.shape[0], first.shape[2]):
        raise ValueError(
            f"answer_mask has shape {tuple(answer_mask.shape)}, attentions {tuple(first.shape)}; "
            "expected answer_mask (B, N) for attentions (B, Hq, N, N)"
        )
    weights = answer_mask.to(device=first.device, dtype=torch.float32)  # (B, N)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)  # (B, N) sums to 1 or 0
    per_layer = [torch.einsum("bhqk,bq->bhk", a.float(), weights) for a in attentions]  # Λ × (B, Hq, N)
    return torch.stack(per_layer, dim=1)  # (B, Λ, Hq, N)


def _importance(attention: torch.Tensor, cot: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Group-max answer attention, restricted to CoT columns and renormalised over them."""
    B, L, Hq, N = attention.shape
    grouped = attention.float().view(B, L, num_kv_heads, Hq // num_kv_heads, N)  # (B, Λ, Hkv, G, N)
    imp = grouped.amax(dim=3)  # (B, Λ, Hkv, N)
    imp = imp.masked_fill(~cot[:, None, None, :], 0.0)  # (B, Λ, Hkv, N)
    return imp / imp.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (B, Λ, Hkv, N)


def _redundancy(keys: torch.Tensor, cot: torch.Tensor, n_cot: torch.Tensor) -> torch.Tensor:
    """softmax over CoT i of −mean_j cos(k_i, k_j), diagonal excluded; zero outside the CoT."""
    L, N = keys.shape[1], keys.shape[3]
    pair = cot[:, None, :, None] & cot[:, None, None, :]  # (B, 1, N, N) both ends in the CoT
    pair = pair & ~torch.eye(N, dtype=torch.bool, device=keys.device)  # (B, 1, N, N)
    denom = n_cot.float().clamp_min(1.0)[:, None, None]  # (B, 1, 1)
    neg_fill = torch.finfo(torch.float32).min  # finite, so a row without CoT gives no NaN
    out = []
    for layer in range(L):  # one (N, N) similarity per layer bounds the memory
        k = F.normalize(keys[:, layer].float(), dim=-1)  # (B, H, N, d)
        cos = (k @ k.transpose(-1, -2)).masked_fill(~pair, 0.0)  # (B, H, N, N)
        logits = -cos.sum(-1) / denom  # (B, H, N)
        logits = logits.masked_fill(~cot[:, None, :], neg_fill)  # (B, H, N)
        out.append(torch.softmax(logits, dim=-1).masked_fill(~cot[:, None, :], 0.0))  # (B, H, N)
    return torch.stack(out, dim=1)  # (B, Λ, H, N)


def _check_inputs(
    keys: torch.Tensor,
    values: torch.Tensor,
    cot_mask: torch.Tensor,
    attention: torch.Tensor | None,
    budget: int,
    lam: float,
    variant: str,
) -> None:
    if variant not in EVICTIONS:
        raise ValueError(f"variant={variant!r} is not one of {EVICTIONS}")
    if budget < 1:
        raise ValueError(f"budget={budget} must be >= 1 (it is M, the number of latent slots)")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must lie in [0, 1]")
    if keys.dim() != 5 or values.shape[:4] != keys.shape[:4]:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must both be (B, Λ, Hkv, N, d)")
    B, L, Hkv, N, _ = keys.shape
    if cot_mask.shape != (B, N):
        raise ValueError(f"cot_mask has shape {tuple(cot_mask.shape)}; expected (B, N) = {(B, N)}")
    if variant in ("rkv", "importance"):
        if attention is None:
            raise ValueError(f"variant={variant!r} needs attention from answer_attention(); got None")
        if attention.dim() != 4 or attention.shape[:2] != (B, L) or attention.shape[3] != N:
            raise ValueError(
                f"attention has shape {tuple(attention.shape)}; expected (B, Λ, Hq, N) with (B, Λ, N) = {(B, L, N)}"
            )
        if attention.shape[2] % Hkv != 0:
            raise ValueError(f"attention has Hq={attention.shape[2]} heads, not a multiple of Hkv={Hkv}")


@torch.no_grad()
def compress_teacher_kv(
    keys: torch.Tensor,
    values: torch.Tensor,
    cot_mask: torch.Tensor,
    attention: torch.Tensor | None,
    *,
    budget: int,
    lam: float,
    variant: str,
) -> CompressedKV:
    """Keep `budget` = M CoT entries of the teacher cache per (row, layer, KV head).

    keys/values: (B, Λ, Hkv, N, d) teacher cache over the whole teacher sequence; cot_mask: (B, N) bool,
    the only candidates; attention: (B, Λ, Hq, N) from `answer_attention` (needed by 'rkv' and
    'importance'). Scores are computed in float32; keys/values keep their dtype.
    """
    _check_inputs(keys, values, cot_mask, attention, budget, lam, variant)
    B, L, Hkv, N, _ = keys.shape
    M = budget
    device = keys.device
    cot = cot_mask.to(device=device, dtype=torch.bool)  # (B, N)
    n_cot = cot.sum(-1)  # (B,)

    # 1. Score every position; non-CoT positions score −inf so they rank below any CoT position.
    if variant == "crop":
        score = -torch.arange(N, device=device, dtype=torch.float32).expand(B, L, Hkv, N)  # (B, Λ, Hkv, N)
    else:
        w_imp = {"rkv": lam, "importance": 1.0, "redundancy": 0.0}[variant]
        score = torch.zeros(B, L, Hkv, N, device=device, dtype=torch.float32)  # (B, Λ, Hkv, N)
        if w_imp > 0.0:  # a zero-weighted term is skipped, not computed and multiplied by 0
            assert attention is not None
            score = score + w_imp * _importance(attention.to(device), cot, Hkv)  # (B, Λ, Hkv, N)
        if w_imp < 1.0:
            score = score + (1.0 - w_imp) * _redundancy(keys, cot, n_cot)  # (B, Λ, Hkv, N)
    score = score.masked_fill(~cot[:, None, None, :], float("-inf"))  # (B, Λ, Hkv, N)

    # 2. Top-M, then chronological order with the invalid picks (−inf, non-CoT) pushed to the end.
    k = min(M, N)
    top_val, top_idx = score.topk(k, dim=-1)  # (B, Λ, Hkv, k)
    order_key = torch.where(torch.isfinite(top_val), top_idx, top_idx + N)  # (B, Λ, Hkv, k)
    picked = order_key.sort(dim=-1).values % N  # (B, Λ, Hkv, k)
    if k < M:
        picked = F.pad(picked, (0, M - k))  # (B, Λ, Hkv, M)

    # 3. Valid slots are the first min(N_C, M); every finite pick is a CoT position, so they line up.
    slot_mask = torch.arange(M, device=device)[None, :] < n_cot.clamp(max=M)[:, None]  # (B, M)
    valid = slot_mask[:, None, None, :]  # (B, 1, 1, M)
    indices = picked.masked_fill(~valid, 0)  # (B, Λ, Hkv, M)

    # 4. Gather K and V at the same indices; invalid slots hold zeros.
    idx_k = indices[..., None].expand(-1, -1, -1, -1, keys.shape[-1])  # (B, Λ, Hkv, M, d)
    idx_v = indices[..., None].expand(-1, -1, -1, -1, values.shape[-1])  # (B, Λ, Hkv, M, d)
    kept_k = keys.gather(3, idx_k).masked_fill(~valid[..., None], 0)  # (B, Λ, Hkv, M, d)
    kept_v = values.to(device).gather(3, idx_v).masked_fill(~valid[..., None], 0)  # (B, Λ, Hkv, M, d)
    return CompressedKV(keys=kept_k.detach(), values=kept_v.detach(), indices=indices, slot_mask=slot_mask)
