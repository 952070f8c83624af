"""Pre-RoPE keys for `kv_key_space="pre_rope"` (METHOD.md §3).

The KV cache stores keys after the rotary embedding. To match keys before it, this module
records the output of each layer's key projection during a pass. Families without rotary
embeddings (GPT-2's learned absolute positions) cache un-rotated keys already, so there
the cache keys are returned unchanged. Does not own any loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

# Family quirk table: the name of the key projection in families that rotate keys.
ROTARY_KEY_PROJECTIONS: tuple[str, ...] = ("self_attn.k_proj",)


def _key_projections(model: nn.Module) -> list[nn.Module]:
    # peft's LoRA wrapper keeps the projection's name, so its output includes the adapter
    return [module for name, module in model.named_modules() if name.endswith(ROTARY_KEY_PROJECTIONS)]


class KeyRecorder:
    """Key-projection outputs per layer, in call order: each (B, L, Hkv * d)."""

    def __init__(self, num_modules: int):
        self.calls: list[list[torch.Tensor]] = [[] for _ in range(num_modules)]

    def replace_keys(self, cache: DynamicCache, last: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (pre-RoPE keys, cached values) over the last `last` tokens (all when
        None), both (B, Hkv, N, d). Without recorded projections the cache keys are used."""
        out = []
        for i, layer in enumerate(cache.layers):
            v = layer.values if last is None else layer.values[:, :, -last:]
            if not self.calls or not self.calls[i]:
                out.append((layer.keys if last is None else layer.keys[:, :, -last:], v))
                continue
            k = torch.cat(self.calls[i], dim=1)  # (B, L_all, Hkv * d)
            k = k if last is None else k[:, -last:]
            b, n, _ = k.shape
            k = k.view(b, n, v.shape[1], v.shape[3]).transpose(1, 2)  # (B, Hkv, N, d)
            out.append((k, v))
        return out


@contextlib.contextmanager
def capture_pre_rope_keys(model: nn.Module, *, enabled: bool = True) -> Iterator[KeyRecorder]:
    modules = _key_projections(model) if enabled else []
    rec = KeyRecorder(len(modules))
    handles = [
        m.register_forward_hook(lambda _m, _i, out, i=i: rec.calls[i].append(out)) for i, m in enumerate(modules)
    ]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()
