"""Adapter directories on disk, checked without loading a tensor.

An adapter directory holds
  adapter_config.json + adapter_model.safetensors   peft's LoRA (never a pickle)
  kava_weights.safetensors                          projection + `<bot> <eot> <latent>` rows
  kava_config.json                                  method config, LoRA settings, base model id,
                                                    special token ids, shapes, format version
  tokenizer files                                   the tokenizer with the method tokens
`read_manifest` checks all of it (JSON shapes and types, every safetensors header against its
file size, the file set) and returns one typed `AdapterManifest`, or raises `AdapterError`
listing every problem at once, each naming its file. `.bin`/pickle files are refused, not read.
`find_adapter_dir` confines a path to configured root directories (symlinks resolved) for
callers that take paths from untrusted input. Writing and loading are `kava.adapters`'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from kava.config import ConfigError, LoraSettings, MethodConfig
from kava.prompts import SPECIAL_TOKENS

FORMAT_VERSION = 1
KAVA_CONFIG = "kava_config.json"
KAVA_WEIGHTS = "kava_weights.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_JSON_BYTES = 4 << 20  # a config file larger than this is not one
MAX_DIR_ENTRIES = 1000  # find_adapter_dir inspects at most this many entries


class AdapterError(ValueError):
    """An adapter directory is unusable; `problems` lists every reason, each naming its file."""

    def __init__(self, path: Path, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__(f"adapter {path} is invalid ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class AdapterManifest:
    """What `kava_config.json` records, typed and checked, plus where the directory is."""

    path: Path
    base_model: str
    method: MethodConfig
    lora: LoraSettings | None
    special_tokens: dict[str, int]  # "<bot>" / "<eot>" / "<latent>" -> token id
    vocab_size: int
    hidden_size: int
    eos_token_id: int | None = None
    model_type: str | None = None
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The `kava_config.json` form."""
        return {
            "format_version": self.format_version,
            "base_model": self.base_model,
            "method": self.method.to_dict(),
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "special_tokens": dict(self.special_tokens),
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "model_type": self.model_type,
            "dtype": self.dtype,
            "extra": dict(self.extra),
        }


# Reading and checking -----------------------------------------------------------------------
def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


UNREADABLE = object()  # what _read_json returns when it appended a problem


def _read_json(file: Path, problems: list[str]) -> Any:
    """The parsed JSON of `file`, or UNREADABLE with the reason appended (named by file name only)."""
    name = file.name
    try:
        size = file.stat().st_size
        if size > MAX_JSON_BYTES:
            problems.append(f"{name} is {size} bytes; a config file is at most {MAX_JSON_BYTES} bytes")
            return UNREADABLE
        raw = file.read_bytes()
    except OSError as e:
        problems.append(f"{name} cannot be read: {e.strerror or type(e).__name__}")
        return UNREADABLE
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{name} is not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}")
        return UNREADABLE
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(f"{name} is not valid JSON: {e}")
        return UNREADABLE


def _safetensors_problem(file: Path) -> str | None:
    """Whether the header parses and covers the file exactly (a truncated file does not); no tensor is read."""
    try:
        with safe_open(str(file), framework="pt"):
            return None
    except (SafetensorError, OSError) as e:
        return f"{file.name} is unreadable (truncated or not a safetensors file): {e}"


def _int(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _manifest_fields(meta: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Typed fields of a parsed `kava_config.json` object; every problem is appended."""
    out: dict[str, Any] = {}

    def bad(message: str) -> None:
        problems.append(f"{KAVA_CONFIG}: {message}")

    for key in ("base_model", "method", "special_tokens", "vocab_size", "hidden_size"):
        if key not in meta:
            problems.append(f"{KAVA_CONFIG} lacks field {key!r}")
    v = meta.get("format_version")
    if v != FORMAT_VERSION or isinstance(v, bool):
        bad(f"format_version={v!r}: this kava reads version {FORMAT_VERSION}")
    if "base_model" in meta:
        base = meta["base_model"]
        if isinstance(base, str) and base.strip():
            out["base_model"] = base
        else:
            bad(f"base_model must be a non-empty string (a hub id or a directory), got {_kind(base)}")
    if "method" in meta:
        method = meta["method"]
        if not isinstance(method, dict):
            bad(f"method must be an object of MethodConfig fields, got {_kind(method)}")
        else:
            try:
                out["method"] = MethodConfig.from_dict(method)
            except (ConfigError, TypeError) as e:
                bad(f"method: {e}")
    lora = meta.get("lora")
    if lora is None:
        out["lora"] = None
    elif not isinstance(lora, dict):
        bad(f"lora must be an object of LoraSettings fields or null, got {_kind(lora)}")
    else:
        try:
            out["lora"] = LoraSettings.from_dict(lora)
        except (ConfigError, TypeError) as e:
            bad(f"lora: {e}")
    if "special_tokens" in meta:
        special = meta["special_tokens"]
        if (
            isinstance(special, dict)
            and set(special) == set(SPECIAL_TOKENS)
            and all(_int(special[t]) for t in SPECIAL_TOKENS)
        ):
            out["special_tokens"] = {t: special[t] for t in SPECIAL_TOKENS}
        else:
            bad(f"special_tokens must map each of {list(SPECIAL_TOKENS)} to a token id, got {_kind(special)}")
    for key in ("vocab_size", "hidden_size"):
        if key in meta:
            if _int(meta[key], 1):
                out[key] = meta[key]
            else:
                bad(f"{key} must be an integer >= 1, got {meta[key]!r}"[:200])
    eos = meta.get("eos_token_id")
    if eos is None or _int(eos):
        out["eos_token_id"] = eos
    else:
        bad(f"eos_token_id must be a token id or null, got {_kind(eos)}")
    for key in ("model_type", "dtype"):
        value = meta.get(key)
        if value is None or isinstance(value, str):
            out[key] = value
        else:
            bad(f"{key} must be a string or null, got {_kind(value)}")
    extra = meta.get("extra", {})
    if isinstance(extra, dict):
        out["extra"] = extra
    else:
        bad(f"extra must be an object, got {_kind(extra)}")
    return out


def _check_peft_config(path: Path, problems: list[str]) -> None:
    file = path / PEFT_CONFIG
    if not file.is_file():
        problems.append(f"{PEFT_CONFIG} is missing (the LoRA settings)")
        return
    cfg = _read_json(file, problems)
    if cfg is UNREADABLE:
        return
    if not isinstance(cfg, dict):
        problems.append(f"{PEFT_CONFIG} must hold a JSON object, got {_kind(cfg)}")
    elif cfg.get("peft_type") != "LORA" or not _int(cfg.get("r"), 1):
        problems.append(f"{PEFT_CONFIG} is not a peft LoRA config (needs peft_type 'LORA' and an integer r >= 1)")


def read_manifest(path: str | Path) -> AdapterManifest:
    """Check the adapter directory `path` without loading a tensor; raises AdapterError with
    every problem, each naming its file (by name, never by full path)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(path, [f"{path} is not a directory"])
    problems: list[str] = []
    for name in sorted(p.name for p in path.iterdir()):
        if name.endswith(PICKLE_SUFFIXES):
            problems.append(f"{name}: pickle-based weights are refused; re-save as safetensors")
    fields: dict[str, Any] = {}
    cfg_file = path / KAVA_CONFIG
    if not cfg_file.is_file():
        problems.append(f"{KAVA_CONFIG} is missing")
    else:
        meta = _read_json(cfg_file, problems)
        if isinstance(meta, dict):
            fields = _manifest_fields(meta, problems)
        elif meta is not UNREADABLE:
            problems.append(f"{KAVA_CONFIG} must hold a JSON object, got {_kind(meta)}")
    if fields.get("lora") is not None:
        _check_peft_config(path, problems)
        if not (path / PEFT_WEIGHTS).is_file():
            problems.append(f"{PEFT_WEIGHTS} is missing (the LoRA weights)")
        elif problem := _safetensors_problem(path / PEFT_WEIGHTS):
            problems.append(problem)
    if not (path / KAVA_WEIGHTS).is_file():
        problems.append(f"{KAVA_WEIGHTS} is missing")
    elif problem := _safetensors_problem(path / KAVA_WEIGHTS):
        problems.append(problem)
    if not any((path / n).is_file() for n in TOKENIZER_FILES):
        problems.append("tokenizer files are missing (tokenizer.json / tokenizer_config.json)")
    if problems:
        raise AdapterError(path, problems)
    return AdapterManifest(path=path, **fields)


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The checked `kava_config.json` of `path` as a plain dict (`read_manifest(path).to_dict()`)."""
    return read_manifest(path).to_dict()


def find_adapter_dir(path: str | Path, roots: Sequence[str | Path]) -> Path | None:
    """The directory `path` names, resolved, if it lies inside one of `roots` and so does
    everything in it (symlinks followed, `..` resolved; a relative `path` is taken relative
    to each root in turn). None for any reason — missing, outside, not a directory,
    unreadable — so a caller can give one answer that tells nothing about the file system."""
    for root in roots:
        try:
            base = Path(root).resolve(strict=True)
            target = (base / path).resolve(strict=True)
            if target.is_dir() and target.is_relative_to(base) and _all_inside(target, base):
                return target
        except (OSError, ValueError, RuntimeError):  # missing, NUL byte, symlink loop, permissions
            continue
    return None


def _all_inside(directory: Path, base: Path) -> bool:
    seen = 0
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in dirnames + filenames:
            seen += 1
            if seen > MAX_DIR_ENTRIES or not Path(dirpath, name).resolve(strict=True).is_relative_to(base):
                return False
    return True
