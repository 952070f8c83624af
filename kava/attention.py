"""`sdpa_fp32`: scaled-dot-product attention that stays in float32 under CPU bf16 autocast.

On a CPU with native bfloat16 (avx512_bf16 / AMX) matmuls run ~2.3x faster in bfloat16,
but PyTorch's CPU SDPA runs ~1.8x slower (forward + backward at the built-in model's
training shapes), and autocast puts SDPA in bfloat16. Training with
`optim.mixed_precision=bf16` on CPU therefore loads the backbone with this attention:
q, k, v are upcast and the kernel runs with autocast off; the output goes back to the
caller's dtype. Elsewhere (no autocast, or CUDA) it is plain `sdpa`. Registered with
transformers' attention and mask interfaces on import.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_fp32"


def sdpa_fp32_forward(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    device = query.device.type
    if device != "cpu" or not torch.is_autocast_enabled(device):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast(device, enabled=False):
        q, k, v = query.float(), key.float(), value.float()
        out, weights = sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register(NAME, sdpa_fp32_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
