"""Adapter directories on disk: the only module of `kava/` that reads or writes files.

An adapter directory holds
  adapter_config.json + adapter_model.safetensors   peft's LoRA (never a pickle)
  kava_weights.safetensors                          projection + `<bot> <eot> <latent>` rows
  kava_config.json                                  method config, LoRA settings, base model id,
                                                    special token ids, shapes, format version
  tokenizer files                                   the tokenizer with the method tokens
Loading checks everything it can before touching the base model and reports every
problem at once; `.bin`/pickle files are refused, not read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kava.backbone import (
    KavaModel,
    _resize_with_mean_rows,
    load_base_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from kava.config import ConfigError, LoraSettings, MethodConfig
from kava.prompts import SPECIAL_TOKENS, TokenIds

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KAVA_CONFIG = "kava_config.json"
KAVA_WEIGHTS = "kava_weights.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter directory is unusable; `problems` lists every reason."""

    def __init__(self, path: Path, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__(f"adapter {path} is invalid ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))


def _kava_state(model: KavaModel) -> dict[str, torch.Tensor]:
    state = {"special_rows": model.special_rows.detach()}
    for k, v in model.projection.state_dict().items():
        state[f"projection.{k}"] = v.detach()
    return {k: v.contiguous().cpu() for k, v in state.items()}


def save_adapter(model: KavaModel, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter directory (created if needed; files are overwritten)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lora_on = hasattr(model.lm, "peft_config")
    if lora_on:
        model.lm.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)
    save_file(_kava_state(model), str(path / KAVA_WEIGHTS), metadata={"format": "pt"})
    model.tokenizer.save_pretrained(str(path))
    cache_cfg = model.lm.get_base_model().config if lora_on else model.lm.config
    meta = {
        "format_version": FORMAT_VERSION,
        "base_model": model.base_model_id,
        "method": model.config.to_dict(),
        "lora": model.lora.to_dict() if (model.lora is not None and lora_on) else None,
        "special_tokens": dict(zip(SPECIAL_TOKENS, (model.ids.bot, model.ids.eot, model.ids.latent))),
        "eos_token_id": model.ids.eos,
        "vocab_size": model.input_embeddings.weight.shape[0],
        "hidden_size": model.hidden_size,
        "model_type": getattr(cache_cfg, "model_type", None),
        "dtype": str(model.dtype).removeprefix("torch."),
        "extra": extra or {},
    }
    (path / KAVA_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """Parse and validate `kava_config.json` and the file set; raises AdapterError with all problems."""
    path = Path(path)
    problems: list[str] = []
    if not path.is_dir():
        raise AdapterError(path, [f"{path} is not a directory"])
    for name in sorted(p.name for p in path.iterdir()):
        if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")):
            problems.append(f"{name}: pickle-based weights are refused; re-save as safetensors")
    meta: dict[str, Any] = {}
    cfg_file = path / KAVA_CONFIG
    if not cfg_file.is_file():
        problems.append(f"{KAVA_CONFIG} is missing")
    else:
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"{KAVA_CONFIG} is not valid JSON: {e}")
    if meta:
        v = meta.get("format_version")
        if v != FORMAT_VERSION:
            problems.append(f"format_version={v!r}: this kava reads version {FORMAT_VERSION}")
        for key in ("base_model", "method", "special_tokens", "vocab_size", "hidden_size"):
            if key not in meta:
                problems.append(f"{KAVA_CONFIG} lacks field {key!r}")
        try:
            meta["method_config"] = MethodConfig.from_dict(meta.get("method") or {})
        except (ConfigError, TypeError) as e:
            problems.append(f"method: {e}")
        try:
            meta["lora_settings"] = LoraSettings.from_dict(meta["lora"]) if meta.get("lora") else None
        except (ConfigError, TypeError) as e:
            problems.append(f"lora: {e}")
    if meta.get("lora"):
        for name in (PEFT_CONFIG, PEFT_WEIGHTS):
            if not (path / name).is_file():
                problems.append(f"{name} is missing (the LoRA weights)")
    if not (path / KAVA_WEIGHTS).is_file():
        problems.append(f"{KAVA_WEIGHTS} is missing")
    else:
        try:
            meta["kava_state"] = load_file(str(path / KAVA_WEIGHTS))
        except (SafetensorError, OSError) as e:
            problems.append(f"{KAVA_WEIGHTS} is unreadable: {e}")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        problems.append("tokenizer files are missing (tokenizer.json / tokenizer_config.json)")
    if problems:
        raise AdapterError(path, problems)
    return meta


def _check_against_model(meta: dict[str, Any], tokenizer, lm, problems: list[str]) -> None:
    ids = TokenIds.from_tokenizer(tokenizer)
    got = dict(zip(SPECIAL_TOKENS, (ids.bot, ids.eot, ids.latent)))
    if got != meta["special_tokens"]:
        problems.append(f"special token ids {got} differ from the recorded {meta['special_tokens']}")
    if meta.get("eos_token_id") is not None and meta["eos_token_id"] != ids.eos:
        problems.append(f"eos_token_id {ids.eos} differs from the recorded {meta['eos_token_id']}")
    vocab, dim = lm.get_input_embeddings().weight.shape
    if vocab != meta["vocab_size"]:
        problems.append(f"vocab_size: base+tokenizer give {vocab}, adapter was trained with {meta['vocab_size']}")
    if dim != meta["hidden_size"]:
        problems.append(
            f"hidden_size: base model has {dim}, adapter expects {meta['hidden_size']} "
            f"(wrong base model? adapter was trained on {meta['base_model']!r})"
        )
    state = meta["kava_state"]
    rows = state.get("special_rows")
    if rows is None or tuple(rows.shape) != (3, meta["hidden_size"]):
        problems.append(
            f"{KAVA_WEIGHTS}: special_rows should be (3, {meta['hidden_size']}), "
            f"got {None if rows is None else tuple(rows.shape)}"
        )
    has_prj = any(k.startswith("projection.") for k in state)
    if has_prj != meta["method_config"].use_projection:
        problems.append(
            f"{KAVA_WEIGHTS}: projection weights {'present' if has_prj else 'absent'} but "
            f"use_projection={meta['method_config'].use_projection}"
        )


def load_adapter(
    path: str | Path,
    *,
    base_model: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    trainable: bool = False,
) -> KavaModel:
    """Base model + adapter -> KavaModel. `base_model` overrides the recorded id (e.g. a
    local copy of the hub model). Raises AdapterError naming every problem."""
    from peft import PeftModel

    path = Path(path)
    meta = read_adapter_config(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    base = str(base_model or meta["base_model"])
    tok = load_tokenizer(path)
    try:
        lm = load_base_model(base, dtype=dt, device=dev, attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        raise AdapterError(path, [f"base model {base!r} cannot be loaded: {e}"]) from e
    _resize_with_mean_rows(lm, len(tok))
    problems: list[str] = []
    _check_against_model(meta, tok, lm, problems)
    if problems:
        raise AdapterError(path, problems)
    for p in lm.parameters():
        p.requires_grad_(False)
    if meta["lora_settings"] is not None:
        lm = PeftModel.from_pretrained(lm, str(path), is_trainable=trainable)
    model = KavaModel(lm, tok, meta["method_config"], meta["base_model"], meta["lora_settings"])
    _load_kava_state(model, meta, path)
    model.special_rows.requires_grad_(trainable)
    for p in model.projection.parameters():
        p.requires_grad_(trainable)
    model.train(trainable)
    return model


def _load_kava_state(model: KavaModel, meta: dict[str, Any], path: Path) -> None:
    state = {k: v.to(device=model.device, dtype=model.dtype) for k, v in meta["kava_state"].items()}
    with torch.no_grad():
        model.special_rows.copy_(state.pop("special_rows"))
        prj = {k.removeprefix("projection."): v for k, v in state.items()}
        missing, unexpected = model.projection.load_state_dict(prj, strict=False)
        if missing or unexpected:
            raise AdapterError(path, [f"{KAVA_WEIGHTS}: projection keys missing {missing}, unexpected {unexpected}"])


def attach_adapter(model: KavaModel, path: str | Path, name: str) -> KavaModel:
    """Load another adapter onto the base already held by `model` (peft multi-adapter):
    the returned KavaModel shares the base weights and owns its own LoRA weights,
    projection, special rows and method config. Call `.activate()` before using it
    (`solve_batch` does)."""
    path = Path(path)
    meta = read_adapter_config(path)
    problems: list[str] = []
    tok = load_tokenizer(path)
    _check_against_model(meta, tok, model.lm, problems)
    if meta["lora_settings"] is None or not hasattr(model.lm, "load_adapter"):
        problems.append("attaching needs LoRA adapters on both sides (a peft-wrapped base)")
    if name in getattr(model.lm, "peft_config", {}):
        problems.append(f"adapter name {name!r} is already loaded")
    if problems:
        raise AdapterError(path, problems)
    model.lm.load_adapter(str(path), adapter_name=name, is_trainable=False)
    other = KavaModel(model.lm, tok, meta["method_config"], meta["base_model"], meta["lora_settings"])
    other.adapter_name = name
    _load_kava_state(other, meta, path)
    other.eval()
    return other


def detach_adapter(model: KavaModel) -> None:
    """Free an attached adapter's LoRA weights from the shared peft model."""
    if model.adapter_name == "default":
        raise ValueError("the first adapter owns the base; unload the whole model instead")
    if model.lm.active_adapter == model.adapter_name:
        model.lm.set_adapter("default")
    model.lm.delete_adapter(model.adapter_name)
