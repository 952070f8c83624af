"""Resumable training checkpoints, in safetensors + JSON (no pickles anywhere).

A run's checkpoints are `<out>/checkpoint-<step>/`, the newest `keep_last` kept. Each holds
the trainable parameters by name, the optimizer state (tensors flattened into one
safetensors file, the rest in JSON), the scheduler position, every process's RNG state
(one row per rank) and the step counter, which is also the data position: batches are a
pure function of (seed, step), so resuming at step N replays exactly what an
uninterrupted run would see. Does not own the training loop or the resume rules
(`training.resume`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

PARAMS = "trainable.safetensors"
OPTIM = "optimizer.safetensors"
STATE = "trainer_state.json"
LEGACY_DIR = "checkpoint"  # before checkpoint-<step>/: one folder, overwritten
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / f"checkpoint-{step}"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in `out`, oldest first (a `.tmp` left by a crash is not one)."""
    out = Path(out)
    found = []
    for p in out.glob("checkpoint-*"):
        m = _NAME.fullmatch(p.name)
        if m and (p / STATE).is_file():
            found.append((int(m.group(1)), p))
    legacy = out / LEGACY_DIR
    if not found and (legacy / STATE).is_file():
        return [legacy]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE).read_text())


def prune_checkpoints(out: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (0 keeps every one); returns the deleted."""
    found = [p for p in list_checkpoints(out) if p.name != LEGACY_DIR]
    doomed = found[:-keep_last] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def _named_trainables(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def local_rng_state() -> dict[str, torch.Tensor]:
    """This process's generator states, as uint8 rows `(1, N)` ready to be gathered over ranks."""
    rows = {"rng.torch": torch.get_rng_state()[None]}
    if torch.cuda.is_available():
        rows["rng.cuda"] = torch.cuda.get_rng_state()[None]
    return rows


def save_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    step: int,
    extra: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write atomically: into `path.tmp`, then rename over `path`. `rng` holds one row per
    rank (`local_rng_state` gathered); without it, this process's state is saved."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous().cpu() for n, p in _named_trainables(module).items()}, str(tmp / PARAMS))
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    for k, v in (rng or local_rng_state()).items():
        tensors[k] = v.detach().contiguous().cpu()
    save_file(tensors, str(tmp / OPTIM))
    state = {
        "step": step,
        "param_groups": sd["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "python_random": _jsonable(random.getstate()),
        "extra": extra or {},
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _rng_row(tensors: dict[str, torch.Tensor], key: str, rank: int) -> torch.Tensor | None:
    if key not in tensors:
        return None
    rows = tensors[key] if tensors[key].dim() == 2 else tensors[key][None]  # (ranks, N); 1-D before per-rank
    if rank >= rows.shape[0]:
        log.warning("checkpoint has RNG states for %d process(es); rank %d takes rank 0's", rows.shape[0], rank)
        rank = 0
    return rows[rank].clone()  # a row of its own: set_rng_state reads the storage from its start


def load_checkpoint(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler, rank: int = 0
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote (RNG: rank `rank`'s row); returns the trainer
    state (with `step`)."""
    state = read_state(path)
    params = load_file(str(path / PARAMS))
    named = _named_trainables(module)
    missing, unexpected = sorted(set(named) - set(params)), sorted(set(params) - set(named))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(params[n].to(p.device, p.dtype))
    tensors = load_file(str(path / OPTIM))
    device = next(iter(named.values())).device
    opt_state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("rng."):
            continue
        idx, k = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[k] = v if k == "step" else v.to(device)
    for key, v in state["optimizer_scalars"].items():
        idx, k = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(_rng_row(tensors, "rng.torch", rank))
    cuda = _rng_row(tensors, "rng.cuda", rank)
    legacy = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if torch.cuda.is_available() and cuda is not None:
        torch.cuda.set_rng_state(cuda)
    elif torch.cuda.is_available() and legacy:  # before per-rank rows: every visible device's state
        torch.cuda.set_rng_state_all([tensors[k] for k in legacy])
    random.setstate(_tuplify(state["python_random"]))
    return state
