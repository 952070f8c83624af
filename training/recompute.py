"""Gradient checkpointing that keeps the KV cache: recompute each MLP block in backward.

transformers' own `gradient_checkpointing_enable` drops the KV cache in training mode
(`GradientCheckpointingLayer` sets `cache=None`: a replayed layer would append its keys a
second time), and every KaVa pass runs on a cache: the student continues from the
prefill, the latents from each other, the KV loss reads the teacher's. So this wraps
only the decoder MLPs (`*.mlp`, the largest activations: gate, up and their product
are 3 x intermediate_size per token), which never touch the cache, in non-reentrant
`torch.utils.checkpoint`. Same numbers, less memory; evaluation and no-grad passes run
the plain forward. Does not own the model.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(module: nn.Module, forward, *args, **kwargs):
    if module.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def recompute_mlps(model: nn.Module) -> int:
    """Wrap every `*.mlp` submodule's forward; returns how many were wrapped (idempotent)."""
    count = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "mlp" or getattr(module, "_kava_recompute", False):
            continue
        module.forward = partial(_checkpointed, module, module.forward)
        module._kava_recompute = True
        count += 1
    if count == 0 and not any(getattr(m, "_kava_recompute", False) for m in model.modules()):
        raise ValueError(
            f"optim.gradient_checkpointing=true: no `mlp` blocks found in {type(model).__name__}; "
            "set optim.gradient_checkpointing=false for this model"
        )
    return count
