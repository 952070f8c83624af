"""Gradient checkpointing (MLP recompute) gives the same loss and gradients as the plain
step, on the KV-cache-heavy KaVa objective, and really recomputes in backward."""

from __future__ import annotations

import torch
from tiny import EXAMPLES

from kava.backbone import build_model
from kava.config import LoraSettings, MethodConfig
from kava.losses import training_step
from kava.prompts import encode_training_batch
from training.recompute import recompute_mlps


def _loss_and_grads(model, batch):
    torch.manual_seed(1)  # the same dropout masks (GPT-2's MLP has one; the recompute replays its RNG)
    model.zero_grad(set_to_none=True)
    loss = training_step(model, batch).total
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_recomputed_mlps_give_the_plain_loss_and_gradients(tiny_bases, family):
    torch.manual_seed(0)
    cfg = MethodConfig(num_latents=3, num_iterations=2, codi_weight=1.0, kv_weight=1.0)
    model = build_model(tiny_bases[family], cfg, LoraSettings(r=4, alpha=8, dropout=0.0))
    model.train()
    batch = encode_training_batch(model.tokenizer, list(EXAMPLES), model.config, model.ids)
    plain_loss, plain = _loss_and_grads(model, batch)

    mlp = next(m for n, m in model.named_modules() if n.endswith(".mlp"))
    calls, inner = [], mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or inner(*a, **k)
    assert recompute_mlps(model) == 2  # one per decoder layer
    assert recompute_mlps(model) == 0  # idempotent
    loss, grads = _loss_and_grads(model, batch)
    forwards = len(calls)
    torch.testing.assert_close(loss, plain_loss, atol=0, rtol=0)
    assert grads.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(grads[k], plain[k], atol=1e-7, rtol=1e-5, msg=k)
    calls.clear()
    with torch.no_grad():
        training_step(model, batch)
    assert forwards == 2 * len(calls) > 0  # every MLP pass ran again in backward
