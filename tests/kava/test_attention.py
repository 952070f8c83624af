"""`sdpa_fp32`: plain SDPA without autocast; float32 attention under CPU bf16 autocast."""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kava.attention import NAME, sdpa_fp32_forward
from kava.backbone import build_model
from kava.losses import training_step
from kava.prompts import encode_training_batch
from tests.tiny import EXAMPLES, TINY_LORA, tiny_method


class _Attn(torch.nn.Module):  # what sdpa_attention_forward reads from the attention module
    num_key_value_groups = 2
    is_causal = True


def _qkv(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k, v = torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_without_autocast_it_is_plain_sdpa():
    q, k, v = _qkv(torch.float32)
    got, _ = sdpa_fp32_forward(_Attn(), q, k, v, None)
    want, _ = sdpa_attention_forward(_Attn(), q, k, v, None)
    assert torch.equal(got, want)


def test_under_cpu_bf16_autocast_attention_runs_in_float32():
    q, k, v = _qkv(torch.bfloat16)
    want, _ = sdpa_attention_forward(_Attn(), q.float(), k.float(), v.float(), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = sdpa_fp32_forward(_Attn(), q, k, v, None)
        plain, _ = sdpa_attention_forward(_Attn(), q, k, v, None)
    assert got.dtype == torch.bfloat16  # the caller's dtype
    assert torch.equal(got, want.to(torch.bfloat16))
    assert plain.dtype == torch.bfloat16 and not torch.equal(plain, got)  # autocast alone: bf16 kernel


def test_a_backbone_trains_with_it_under_bf16_autocast(tiny_bases):
    """The training step runs end to end and its loss matches the float32 one closely."""
    losses = {}
    for attn in ("sdpa", NAME):
        torch.manual_seed(0)
        model = build_model(tiny_bases["llama"], tiny_method(), TINY_LORA, device="cpu", dtype=torch.float32,
                            attn_implementation=attn)  # fmt: skip
        batch = encode_training_batch(model.tokenizer, EXAMPLES, model.config, model.ids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=attn == NAME):
            out = training_step(model, batch)
        out.total.backward()
        assert all(p.grad is not None for p in model.trainable_parameters())
        losses[attn] = float(out.total.detach())
    assert abs(losses[NAME] - losses["sdpa"]) < 0.05 * abs(losses["sdpa"])
