"""The training loop: AdamW + cosine warmup, accumulation, clipping, bf16 autocast on GPU,
progress bar, JSONL log, periodic evaluation and exactly-resumable checkpoints.

Generic over what is trained: it takes the module (its `requires_grad` parameters are
optimised), a loss function returning the total and its components, and a batch function
that is a pure function of (micro-batch index, rank) so resuming replays the data exactly.
Multi-GPU runs under `torchrun`: each rank takes its share of every global batch and
gradients are all-reduced before the optimizer step. An optional `Schedule` (a curriculum)
tags each step's log record, may change its state between steps, and is saved with every
checkpoint. Does not own models or data formats.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from training.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LossFn = Callable[[Any], dict[str, Any]]  # batch -> {"total": tensor, component: float | tensor, ...}
BatchFn = Callable[[int, int, int], Any]  # (micro-batch index, rank, world size) -> batch on device


class Schedule(Protocol):
    """Training state beyond the optimizer that moves between steps (a curriculum's stage).
    Its state travels in every checkpoint, so a resumed run continues exactly."""

    def fields(self, step: int) -> dict[str, Any]: ...  # tags optimizer step `step` (0-based) in the log

    def after_step(self, step: int) -> dict[str, Any] | None: ...  # after `step` steps; a record to log

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 8e-4
    weight_decay: float = 0.1
    warmup_ratio: float = 0.03
    max_steps: int = 1000
    batch_size: int = 16  # global, per optimizer step (before accumulation split)
    grad_accum: int = 1
    grad_clip: float = 2.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 100

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if self.lr <= 0:
            problems.append(f"lr={self.lr!r}: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio!r}: must be in [0, 1)")
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float):
    warmup = max(1, round(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


class Trainer:
    def __init__(
        self,
        module: nn.Module,
        loss_fn: LossFn,
        batch_fn: BatchFn,
        settings: OptimSettings,
        out_dir: str | Path,
        *,
        eval_fn: Callable[[int], dict[str, Any]] | None = None,
        save_fn: Callable[[Path], None] | None = None,
        device: torch.device | None = None,
        schedule: Schedule | None = None,
    ):
        self.module, self.loss_fn, self.batch_fn, self.s = module, loss_fn, batch_fn, settings
        self.out = Path(out_dir)
        self.eval_fn, self.save_fn, self.schedule = eval_fn, save_fn, schedule
        self.device = device or next(module.parameters()).device
        self.params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.lr,
            betas=(0.9, 0.999),
        )
        self.scheduler = cosine_with_warmup(self.optimizer, settings.max_steps, settings.warmup_ratio)
        self.step = 0
        self.rank, self.world = _world()

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def resume(self) -> bool:
        if not (self.checkpoint_dir / "trainer_state.json").is_file():
            return False
        state = load_checkpoint(self.checkpoint_dir, self.module, self.optimizer, self.scheduler)
        self.step = state["step"]
        if self.schedule is not None:
            self.schedule.load_state_dict(state["extra"].get("schedule", {}))
        log.info("resumed from %s at step %d", self.checkpoint_dir, self.step)
        return True

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _optimizer_step(self) -> dict[str, float]:
        parts: dict[str, float] = {}
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(self.s.grad_accum):
            batch = self.batch_fn(self.step * self.s.grad_accum + micro, self.rank, self.world)
            with self._autocast():
                out = self.loss_fn(batch)
            (out["total"] / self.s.grad_accum).backward()
            for k, v in out.items():
                parts[k] = (
                    parts.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / self.s.grad_accum
                )
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.s.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return parts

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with (self.out / "log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _save(self) -> None:
        if self.rank == 0:
            save_checkpoint(
                self.checkpoint_dir,
                self.module,
                self.optimizer,
                self.scheduler,
                self.step,
                extra={"settings": asdict(self.s)}
                | ({"schedule": self.schedule.state_dict()} if self.schedule is not None else {}),
            )

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to `max_steps` (or stop early after `stop_after` total steps, checkpointed),
        resuming from the checkpoint in `out_dir` when there is one."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.resume():
            torch.manual_seed(self.s.seed)
        end = min(self.s.max_steps, stop_after) if stop_after is not None else self.s.max_steps
        bar = tqdm(total=self.s.max_steps, initial=self.step, desc="train", disable=self.rank != 0, dynamic_ncols=True)
        last: dict[str, Any] = {}
        t0, seen = time.perf_counter(), 0
        while self.step < end:
            tags = self.schedule.fields(self.step) if self.schedule is not None else {}
            parts = self._optimizer_step()
            seen += self.s.batch_size
            rate = seen / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items() if k != "grad_norm"} | {"ex/s": f"{rate:.1f}"})
            if self.step % self.s.log_every == 0 or self.step == end:
                lr = self.scheduler.get_last_lr()[0]
                last = {"step": self.step, "lr": lr, **tags, **parts, "examples_per_s": rate}
                self._log(last)
            event = self.schedule.after_step(self.step) if self.schedule is not None else None
            if event:  # before the save below, so the checkpoint holds the decision
                self._log({"step": self.step, **event})
            if self.eval_fn and self.s.eval_every and self.step % self.s.eval_every == 0 and self.step < end:
                self._log({"step": self.step, "eval": self.eval_fn(self.step)})
            if self.step % self.s.save_every == 0 or self.step == end:
                self._save()
        bar.close()
        if self.step >= self.s.max_steps:
            if self.eval_fn:
                last["eval"] = self.eval_fn(self.step)
                self._log({"step": self.step, "eval": last["eval"]})
            if self.save_fn and self.rank == 0:
                self.save_fn(self.out / "adapter")
        return last
