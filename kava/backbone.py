"""The KaVa model: one HF causal LM + LoRA (peft) + projection + trainable special rows.

Owns loading a backbone (local directory or hub id, through the Auto classes), adding the
`<bot> <eot> <latent>` tokens, wrapping with LoRA, and the single `forward` every phase of
the method goes through. Does not own the method's phases (`kava.latent`,
`kava.generate`) nor adapter files on disk (`kava.adapters`).

Family quirks stay out of the code path: LoRA targets default to peft's "all-linear"
(which finds Llama/Qwen2 projections and GPT-2's Conv1D alike), and the per-family facts
the method needs (layers, KV heads) are read from the KV cache itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache

from kava.builtin import resolve_base
from kava.config import LoraSettings, MethodConfig
from kava.prompts import SPECIAL_TOKENS, TokenIds

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on CUDA, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Tokenizer with the three method tokens added and a pad token (eos when absent)."""
    tok = AutoTokenizer.from_pretrained(resolve_base(name_or_path))
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_base_model(
    name_or_path: str | Path, *, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(
        resolve_base(name_or_path), dtype=dtype, attn_implementation=attn_implementation
    )
    return model.to(device)


def _resize_with_mean_rows(model: PreTrainedModel, vocab_size: int) -> None:
    """Grow the vocabulary; new input/output rows = mean of the old rows (deterministic, so
    an adapter loaded on a fresh base reproduces logits exactly)."""
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (V, D)
        emb[old:] = emb[:old].mean(0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[old:] = head.weight[:old].mean(0, keepdim=True)


class Projection(nn.Module):
    """prj: Linear(D,D) -> GELU -> Linear(D,D) -> LayerNorm(D) (METHOD.md §2)."""

    def __init__(self, dim: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        if enabled:
            self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))

    def match_scale(self, rms: float) -> None:
        """Start the output at the token embeddings' scale: a unit-variance LayerNorm
        output is often 10-50x larger than an embedding row, and a latent that big drowns
        the residual stream it is added to."""
        if self.enabled:
            with torch.no_grad():
                self.net[-1].weight.fill_(rms)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, *, D) -> (B, *, D)
        return self.net(h) if self.enabled else h


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, L, V)
    cache: DynamicCache
    hidden: torch.Tensor  # (B, L, D) last layer, after the final norm
    hidden_states: tuple[torch.Tensor, ...] | None  # per layer (B, L, D), embeddings excluded
    attentions: tuple[torch.Tensor, ...] | None  # per layer (B, Hq, L, L_total)


class KavaModel(nn.Module):
    """Backbone (optionally peft-wrapped) + projection + special-token input rows."""

    def __init__(
        self,
        lm: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: MethodConfig,
        base_model_id: str,
        lora: LoraSettings | None,
    ):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self.base_model_id = base_model_id
        self.lora = lora
        self.adapter_name = "default"  # peft's name for this adapter's LoRA weights in `lm`
        self.ids = TokenIds.from_tokenizer(tokenizer)
        emb = self.input_embeddings.weight
        dim = emb.shape[1]
        special = torch.tensor([self.ids.bot, self.ids.eot, self.ids.latent], device=emb.device)
        self.register_buffer("special_ids", special, persistent=False)
        self.special_rows = nn.Parameter(emb.detach()[special].clone())  # (3, D)
        self.projection = Projection(dim, config.use_projection).to(device=emb.device, dtype=emb.dtype)
        self.projection.match_scale(float(emb.detach().float().std()))

    # Facts ----------------------------------------------------------------------------
    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.special_rows.device

    @property
    def dtype(self) -> torch.dtype:
        return self.special_rows.dtype

    @property
    def hidden_size(self) -> int:
        return self.special_rows.shape[1]

    def activate(self) -> None:
        """Select this adapter's LoRA weights when several adapters share one peft model."""
        if hasattr(self.lm, "set_adapter") and self.lm.active_adapter != self.adapter_name:
            self.lm.set_adapter(self.adapter_name)

    # The one forward ------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        e = self.input_embeddings(input_ids)  # (B, L, D)
        for k in range(3):
            hit = (input_ids == self.special_ids[k]).unsqueeze(-1)  # (B, L, 1)
            e = torch.where(hit, self.special_rows[k].to(e.dtype), e)
        return e

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | None = None,
        *,
        all_hidden: bool = False,
        attentions: bool = False,
    ) -> StepOutput:
        """One pass of `inputs_embeds` (B, L, D) on top of `cache`; `attention_mask` covers
        cache + new tokens (B, L_cache + L); `position_ids` (B, L) count real tokens."""
        cache = cache if cache is not None else DynamicCache()
        with self._eager_attention(attentions):
            out = self.lm(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                output_hidden_states=True,
                output_attentions=attentions,
            )
        hs = out.hidden_states  # embeddings + one per layer
        return StepOutput(
            logits=out.logits,
            cache=out.cache,
            hidden=hs[-1],
            hidden_states=tuple(hs[1:]) if all_hidden else None,
            attentions=tuple(out.attentions) if attentions else None,
        )

    @contextlib.contextmanager
    def _eager_attention(self, needed: bool) -> Iterator[None]:
        """Fused attention kernels return no weights; R-KV's importance needs them in the
        teacher pass only, so switch to eager for that pass and back."""
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        previous = base.config._attn_implementation
        if not needed or previous == "eager":
            yield
            return
        base.set_attn_implementation("eager")
        try:
            yield
        finally:
            base.set_attn_implementation(previous)

    def project(self, h: torch.Tensor) -> torch.Tensor:  # (B, *, D) -> (B, *, D)
        return self.projection(h)

    def latent_placeholders(self, batch: int, m: int) -> torch.Tensor:  # (B, M, D)
        return self.special_rows[2].view(1, 1, -1).expand(batch, m, -1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_model(
    base_model: str | Path,
    config: MethodConfig,
    lora: LoraSettings | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> KavaModel:
    """Fresh KaVa model on a base: tokens added, rows resized, LoRA attached (untrained).
    `lora=None` means the METHOD.md defaults; pass `LoraSettings(enabled=False)` for none."""
    from peft import LoraConfig, get_peft_model

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tok = load_tokenizer(base_model)
    lm = load_base_model(base_model, dtype=dt, device=dev, attn_implementation=attn_implementation)
    _resize_with_mean_rows(lm, len(tok))
    for p in lm.parameters():
        p.requires_grad_(False)
    lora = lora if lora is not None else LoraSettings()
    if lora.enabled:
        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        peft_cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=target,
            task_type="CAUSAL_LM",
            **lora.extra,
        )
        lm = get_peft_model(lm, peft_cfg)
    return KavaModel(lm, tok, config, str(base_model), lora)
