"""KaVa: latent reasoning via compressed KV-cache distillation into Jacobi-refined latents.

The library: method config, backbone + LoRA, the latent phases, batched solving, teacher
KV compression, the objective and adapter files. Torch, transformers and peft only.
"""

from kava.adapters import AdapterError, attach_adapter, detach_adapter, load_adapter, save_adapter
from kava.backbone import KavaModel, build_model
from kava.config import ConfigError, LoraSettings, MethodConfig
from kava.generate import BatchOutput, BatchStats, SolveResult, solve_batch
from kava.prompts import Example

__all__ = [
    "AdapterError",
    "BatchOutput",
    "BatchStats",
    "ConfigError",
    "Example",
    "KavaModel",
    "LoraSettings",
    "MethodConfig",
    "SolveResult",
    "attach_adapter",
    "build_model",
    "detach_adapter",
    "load_adapter",
    "save_adapter",
    "solve_batch",
]
