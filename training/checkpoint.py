"""Resumable training checkpoints, in safetensors + JSON (no pickles anywhere).

A checkpoint directory holds the trainable parameters by name, the optimizer state
(tensors flattened into one safetensors file, the rest in JSON), the scheduler position,
the RNG states and the step counter, which is also the data position: batches are a
pure function of (seed, step), so resuming at step N replays exactly what an
uninterrupted run would see. Does not own the training loop.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PARAMS = "trainable.safetensors"
OPTIM = "optimizer.safetensors"
STATE = "trainer_state.json"


def _named_trainables(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write atomically: into `path.tmp`, then rename over `path`."""
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
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
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


def load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the trainer state (with `step`)."""
    state = json.loads((path / STATE).read_text())
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
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuplify(state["python_random"]))
    return state
