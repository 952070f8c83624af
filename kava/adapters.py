"""Adapter directories on disk: writing them, and loading one onto its base model.

`kava.manifest` checks a directory without loading a tensor; loading takes that manifest and
reads each weight file once. Together they are the only modules of `kava/` that read or write
files.
"""

from __future__ import annotations

import json
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
from kava.manifest import (
    KAVA_CONFIG,
    KAVA_WEIGHTS,
    PEFT_WEIGHTS,
    AdapterError,
    AdapterManifest,
    find_adapter_dir,
    read_adapter_config,
    read_manifest,
)
from kava.model_card import render_model_card
from kava.prompts import SPECIAL_TOKENS, TokenIds

__all__ = [
    "KAVA_CONFIG",
    "AdapterError",
    "AdapterManifest",
    "attach_adapter",
    "detach_adapter",
    "find_adapter_dir",
    "init_from_adapter",
    "load_adapter",
    "read_adapter_config",
    "read_manifest",
    "save_adapter",
    "write_model_card",
]


# Writing ------------------------------------------------------------------------------------
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
        for peft_cfg in model.lm.peft_config.values():  # peft holds the resolved local path; keep the id given
            peft_cfg.base_model_name_or_path = model.base_model_id
        model.lm.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)
    save_file(_kava_state(model), str(path / KAVA_WEIGHTS), metadata={"format": "pt"})
    model.tokenizer.save_pretrained(str(path))
    cache_cfg = model.lm.get_base_model().config if lora_on else model.lm.config
    manifest = AdapterManifest(
        path=path,
        base_model=model.base_model_id,
        method=model.config,
        lora=model.lora if (model.lora is not None and lora_on) else None,
        special_tokens=dict(zip(SPECIAL_TOKENS, (model.ids.bot, model.ids.eot, model.ids.latent))),
        vocab_size=model.input_embeddings.weight.shape[0],
        hidden_size=model.hidden_size,
        eos_token_id=model.ids.eos,
        model_type=getattr(cache_cfg, "model_type", None),
        dtype=str(model.dtype).removeprefix("torch."),
        extra=extra or {},
    )
    (path / KAVA_CONFIG).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    write_model_card(path, manifest)
    return path


def write_model_card(path: str | Path, manifest: AdapterManifest | None = None, *, evaluation: dict | None = None):
    """(Re)write the adapter's `README.md` from its manifest, with evaluation numbers if given."""
    (Path(path) / "README.md").write_text(render_model_card(manifest or read_manifest(path), evaluation))


# Loading ------------------------------------------------------------------------------------
def _manifest(source: str | Path | AdapterManifest) -> AdapterManifest:
    return source if isinstance(source, AdapterManifest) else read_manifest(source)


def _read_kava_state(manifest: AdapterManifest) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(manifest.path / KAVA_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(manifest.path, [f"{KAVA_WEIGHTS} is unreadable: {e}"]) from e


def _read_tokenizer(manifest: AdapterManifest):
    try:
        return load_tokenizer(manifest.path)
    except Exception as e:  # the tokenizer loaders raise many types on a bad file
        raise AdapterError(manifest.path, [f"tokenizer files cannot be loaded: {type(e).__name__}: {e}"]) from e


def _check_against_model(
    manifest: AdapterManifest, state: dict[str, torch.Tensor], tokenizer, lm, problems: list[str]
) -> None:
    try:
        ids = TokenIds.from_tokenizer(tokenizer)
    except ValueError as e:
        problems.append(f"tokenizer files: {e}")
        return
    got = dict(zip(SPECIAL_TOKENS, (ids.bot, ids.eot, ids.latent)))
    if got != manifest.special_tokens:
        problems.append(f"special token ids {got} differ from the recorded {manifest.special_tokens}")
    if manifest.eos_token_id is not None and manifest.eos_token_id != ids.eos:
        problems.append(f"eos_token_id {ids.eos} differs from the recorded {manifest.eos_token_id}")
    vocab, dim = lm.get_input_embeddings().weight.shape
    if vocab != manifest.vocab_size:
        problems.append(f"vocab_size: base+tokenizer give {vocab}, adapter was trained with {manifest.vocab_size}")
    if dim != manifest.hidden_size:
        problems.append(
            f"hidden_size: base model has {dim}, adapter expects {manifest.hidden_size} "
            f"(wrong base model? adapter was trained on {manifest.base_model!r})"
        )
    rows = state.get("special_rows")
    if rows is None or tuple(rows.shape) != (3, manifest.hidden_size):
        problems.append(
            f"{KAVA_WEIGHTS}: special_rows should be (3, {manifest.hidden_size}), "
            f"got {None if rows is None else tuple(rows.shape)}"
        )
    has_prj = any(k.startswith("projection.") for k in state)
    if has_prj != manifest.method.use_projection:
        problems.append(
            f"{KAVA_WEIGHTS}: projection weights {'present' if has_prj else 'absent'} but "
            f"use_projection={manifest.method.use_projection}"
        )


def load_adapter(
    path: str | Path | AdapterManifest,
    *,
    base_model: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    trainable: bool = False,
) -> KavaModel:
    """Base model + adapter -> KavaModel. `path` is the adapter directory or its manifest;
    `base_model` overrides the recorded id (e.g. a local copy of the hub model). Raises
    AdapterError naming every problem."""
    from peft import PeftModel

    manifest = _manifest(path)
    path = manifest.path
    state = _read_kava_state(manifest)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    base = str(base_model or manifest.base_model)
    tok = _read_tokenizer(manifest)
    try:
        lm = load_base_model(base, dtype=dt, device=dev, attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        raise AdapterError(path, [f"base model {base!r} cannot be loaded: {e}"]) from e
    _resize_with_mean_rows(lm, len(tok))
    problems: list[str] = []
    _check_against_model(manifest, state, tok, lm, problems)
    if problems:
        raise AdapterError(path, problems)
    for p in lm.parameters():
        p.requires_grad_(False)
    if manifest.lora is not None:
        try:
            lm = PeftModel.from_pretrained(lm, str(path), is_trainable=trainable)
        except Exception as e:  # peft raises many types on a bad file
            raise AdapterError(path, [f"{PEFT_WEIGHTS} cannot be loaded by peft: {type(e).__name__}: {e}"]) from e
    model = KavaModel(lm, tok, manifest.method, manifest.base_model, manifest.lora)
    _load_kava_state(model, state, path)
    model.special_rows.requires_grad_(trainable)
    for p in model.projection.parameters():
        p.requires_grad_(trainable)
    model.train(trainable)
    return model


def init_from_adapter(model: KavaModel, path: str | Path | AdapterManifest) -> None:
    """Start a freshly built model (`build_model`, same base and LoRA shape) from a saved
    adapter's weights — LoRA, projection, special rows — to train on (`init_adapter=` in a
    training config). Raises AdapterError naming every mismatch; the model is untouched then."""
    from peft import set_peft_model_state_dict

    manifest = _manifest(path)
    path = manifest.path
    state = _read_kava_state(manifest)
    problems: list[str] = []
    _check_against_model(manifest, state, model.tokenizer, model.lm, problems)
    if manifest.lora is None or not hasattr(model.lm, "peft_config") or model.lora is None:
        problems.append("starting from an adapter needs LoRA on both sides")
    elif (manifest.lora.r, manifest.lora.alpha) != (model.lora.r, model.lora.alpha):
        problems.append(
            f"LoRA r={manifest.lora.r} alpha={manifest.lora.alpha} in the adapter, "
            f"r={model.lora.r} alpha={model.lora.alpha} in this run's lora settings"
        )
    if problems:
        raise AdapterError(path, problems)
    try:
        lora = load_file(str(path / PEFT_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(path, [f"{PEFT_WEIGHTS} is unreadable: {e}"]) from e
    result = set_peft_model_state_dict(model.lm, lora, adapter_name=model.adapter_name)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise AdapterError(
            path, [f"{PEFT_WEIGHTS}: {len(result.unexpected_keys)} unexpected and {len(missing)} missing LoRA tensors"]
        )
    _load_kava_state(model, state, path)


def _load_kava_state(model: KavaModel, state: dict[str, torch.Tensor], path: Path) -> None:
    state = {k: v.to(device=model.device, dtype=model.dtype) for k, v in state.items()}
    with torch.no_grad():
        model.special_rows.copy_(state.pop("special_rows"))
        prj = {k.removeprefix("projection."): v for k, v in state.items()}
        missing, unexpected = model.projection.load_state_dict(prj, strict=False)
        if missing or unexpected:
            raise AdapterError(path, [f"{KAVA_WEIGHTS}: projection keys missing {missing}, unexpected {unexpected}"])


def attach_adapter(model: KavaModel, path: str | Path | AdapterManifest, name: str) -> KavaModel:
    """Load another adapter onto the base already held by `model` (peft multi-adapter):
    the returned KavaModel shares the base weights and owns its own LoRA weights,
    projection, special rows and method config. Call `.activate()` before using it
    (`solve_batch` does). A failure leaves `model` as it was."""
    manifest = _manifest(path)
    path = manifest.path
    state = _read_kava_state(manifest)
    tok = _read_tokenizer(manifest)
    problems: list[str] = []
    _check_against_model(manifest, state, tok, model.lm, problems)
    if manifest.lora is None or not hasattr(model.lm, "load_adapter"):
        problems.append("attaching needs LoRA adapters on both sides (a peft-wrapped base)")
    if name in getattr(model.lm, "peft_config", {}):
        problems.append(f"adapter name {name!r} is already loaded")
    if problems:
        raise AdapterError(path, problems)
    try:
        model.lm.load_adapter(str(path), adapter_name=name, is_trainable=False)
        other = KavaModel(model.lm, tok, manifest.method, manifest.base_model, manifest.lora)
        other.adapter_name = name
        _load_kava_state(other, state, path)
    except Exception as e:  # peft and torch raise many types on a bad file; undo the half-load
        if name in getattr(model.lm, "peft_config", {}):
            if model.lm.active_adapter == name:
                model.lm.set_adapter(model.adapter_name)
            model.lm.delete_adapter(name)
        if isinstance(e, AdapterError):
            raise
        raise AdapterError(path, [f"{PEFT_WEIGHTS} cannot be loaded by peft: {type(e).__name__}: {e}"]) from e
    other.eval()
    return other


def detach_adapter(model: KavaModel) -> None:
    """Free an attached adapter's LoRA weights from the shared peft model."""
    if model.adapter_name == "default":
        raise ValueError("the first adapter owns the base; unload the whole model instead")
    if model.lm.active_adapter == model.adapter_name:
        model.lm.set_adapter("default")
    model.lm.delete_adapter(model.adapter_name)
